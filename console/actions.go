package console

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/sagabox/sagabox/inbox"
	"github.com/sagabox/sagabox/inbox/consumer"
	"github.com/sagabox/sagabox/internal/textfmt"
	"github.com/sagabox/sagabox/outbox"
	"github.com/sagabox/sagabox/sagastate"
)

// action is an operator action: a GET on its path shows what it will do and asks for a
// reason; a POST (with the CSRF token and the reason) does it.
type action struct {
	path   string
	title  string // the confirmation page's title and button
	effect string // what happens, shown before confirming
	// targets reads what the action applies to from the request, checking it.
	targets func(r *http.Request) ([]string, error)
	// do performs the action and returns the confirmation shown after it and where to go.
	do   func(ctx context.Context, r *http.Request, targets []string, reason, operator string) (done, back string, err error)
	back func(r *http.Request) string // where Cancel leads
	// about describes the targets' current state on the confirmation page. Optional.
	about func(ctx context.Context, targets []string) string
}

type confirmData struct {
	Title, Effect, Action, Back, Reason, About string
	Targets                                    []string
}

func (c *console) actions() []action {
	sagaTarget := func(r *http.Request) ([]string, error) {
		id, err := uuid.Parse(r.PathValue("id"))
		if err != nil {
			return nil, fmt.Errorf("%q is not a saga id (a UUID)", r.PathValue("id"))
		}
		return []string{id.String()}, nil
	}
	sagaBack := func(r *http.Request) string { return c.cfg.Prefix + "/sagas/" + r.PathValue("id") }
	byOperator := func(reason, operator string) string { return reason + " (by " + operator + ")" }
	return []action{{
		path: "/sagas/{id}/retry", title: "Retry saga",
		effect: "Pushes the saga's compensation on: a failed saga resumes compensating; a compensating or timed-out one sends its " +
			"stuck compensation again now instead of after its backoff. Either way the compensation gets a fresh retry allowance. " +
			"Fix what made it fail first.",
		targets: sagaTarget, back: sagaBack, about: c.aboutSaga,
		do: func(ctx context.Context, r *http.Request, t []string, reason, operator string) (string, string, error) {
			id := uuid.MustParse(t[0])
			if err := c.orch.Retry(ctx, id, byOperator(reason, operator)); err != nil {
				return "", "", err
			}
			return "compensation resumed", sagaBack(r), nil
		},
	}, {
		path: "/sagas/{id}/abort", title: "Abort saga",
		effect: "A running saga stops going forward and compensates the steps it did (once the commands in flight are answered or " +
			"time out). A compensating, timed-out or failed saga gives up: it is marked failed and aborted, its pending compensation " +
			"is not sent again, and whatever it had not undone must be settled by hand.",
		targets: sagaTarget, back: sagaBack, about: c.aboutSaga,
		do: func(ctx context.Context, r *http.Request, t []string, reason, operator string) (string, string, error) {
			if err := c.orch.Abort(ctx, uuid.MustParse(t[0]), byOperator(reason, operator)); err != nil {
				return "", "", err
			}
			return "abort recorded", sagaBack(r), nil
		},
	}, {
		path: "/outbox/retry", title: "Retry outbox dead letters",
		effect: "Makes these dead-lettered messages pending again with a fresh attempt count, so the relay publishes them once more. " +
			"Each arrives after the later messages of its key, which were already published.",
		targets: func(r *http.Request) ([]string, error) {
			return formIDs(r, func(s string) error { _, err := uuid.Parse(s); return err })
		},
		back: func(*http.Request) string { return c.cfg.Prefix + "/outbox" },
		do: func(ctx context.Context, r *http.Request, t []string, reason, operator string) (string, string, error) {
			ids := make([]uuid.UUID, len(t))
			for i, s := range t {
				ids[i] = uuid.MustParse(s)
			}
			n, err := outbox.RetryDead(ctx, c.pool, c.cfg.Schema, ids...)
			if err != nil {
				return "", "", err
			}
			return fmt.Sprintf("%d of %d dead letters made pending again", n, len(ids)), c.cfg.Prefix + "/outbox", nil
		},
	}, {
		path: "/inbox/replay", title: "Replay inbox dead letters",
		effect: "Puts each message back on its topic through the outbox, under its message id, and forgets that its consumer saw it, " +
			"so the consumer handles it as new. Other consumer groups that handled it skip it. Fix the cause first.",
		targets: func(r *http.Request) ([]string, error) {
			return formIDs(r, func(s string) error { _, err := strconv.ParseInt(s, 10, 64); return err })
		},
		back: func(r *http.Request) string { return c.cfg.Prefix + "/inbox" },
		do: func(ctx context.Context, r *http.Request, t []string, reason, operator string) (string, string, error) {
			err := pgx.BeginFunc(ctx, c.pool, func(tx pgx.Tx) error {
				for _, s := range t {
					id, _ := strconv.ParseInt(s, 10, 64)
					if _, err := consumer.Replay(ctx, tx, c.cfg.Schema, id); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				return "", "", err
			}
			return fmt.Sprintf("%d dead letters replayed", len(t)), c.cfg.Prefix + "/inbox", nil
		},
	}}
}

// aboutSaga says what the saga is and where it stands, so the operator confirms knowing it.
func (c *console) aboutSaga(ctx context.Context, t []string) string {
	s, err := c.orch.Get(ctx, uuid.MustParse(t[0]))
	if err != nil {
		return err.Error()
	}
	about := fmt.Sprintf("%s saga, %s since %s UTC", s.Type, s.Status, textfmt.Time(s.UpdatedAt, "–"))
	if !s.AbortedAt.IsZero() {
		about += ", aborted"
	}
	if s.LastError != "" {
		about += ": " + s.LastError
	}
	return about
}

// formIDs reads the selected ids ("id", repeated) of a list action.
func formIDs(r *http.Request, check func(string) error) ([]string, error) {
	if err := r.ParseForm(); err != nil {
		return nil, fmt.Errorf("cannot read the form: %w", err)
	}
	ids := r.Form["id"]
	if len(ids) == 0 {
		return nil, errors.New("nothing selected: tick at least one row")
	}
	if len(ids) > 1000 {
		return nil, fmt.Errorf("%d rows selected; act on at most 1000 at a time", len(ids))
	}
	for _, s := range ids {
		if err := check(s); err != nil {
			return nil, fmt.Errorf("%q is not a row id", s)
		}
	}
	return ids, nil
}

// confirm shows what the action will do and asks for a reason.
func (c *console) confirm(a action) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if c.cfg.ReadOnly {
			c.fail(w, r, http.StatusForbidden, errors.New("this console is read-only: actions are turned off"))
			return
		}
		t, err := a.targets(r)
		if err != nil {
			c.fail(w, r, http.StatusBadRequest, err)
			return
		}
		d := confirmData{Title: a.title, Effect: a.effect, Action: c.cfg.Prefix + r.URL.Path, Back: a.back(r), Targets: t}
		if a.about != nil {
			d.About = a.about(r.Context(), t)
		}
		c.render(w, r, "confirm", a.title, d)
	}
}

// perform does the action after checking the request came from the console's own form.
func (c *console) perform(a action) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if c.cfg.ReadOnly {
			c.fail(w, r, http.StatusForbidden, errors.New("this console is read-only: actions are turned off"))
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, 1<<20)
		if !validCSRF(r) {
			c.fail(w, r, http.StatusForbidden, errors.New("the form's security token is missing or stale (was it sent from another site?); reload the page and try again"))
			return
		}
		t, err := a.targets(r)
		if err != nil {
			c.fail(w, r, http.StatusBadRequest, err)
			return
		}
		reason := strings.TrimSpace(r.PostFormValue("reason"))
		data := confirmData{Title: a.title, Effect: a.effect, Action: c.cfg.Prefix + r.URL.Path, Back: a.back(r), Targets: t, Reason: reason}
		if reason == "" {
			c.renderError(w, r, http.StatusBadRequest, data, "give a reason: it is recorded with the action")
			return
		}
		operator := c.operator(r)
		done, back, err := a.do(r.Context(), r, t, reason, operator)
		if err != nil {
			status := http.StatusInternalServerError
			if errors.Is(err, sagastate.ErrNotFailed) || errors.Is(err, sagastate.ErrNotFound) || errors.Is(err, inbox.ErrNotFound) {
				status = http.StatusConflict
			}
			c.cfg.Logger.Warn("console: action failed", "action", a.title, "targets", t, "operator", operator, "reason", reason, "err", err)
			c.renderError(w, r, status, data, err.Error())
			return
		}
		c.cfg.Logger.Info("console: action", "action", a.title, "targets", t, "operator", operator, "reason", reason, "result", done)
		http.Redirect(w, r, back+"?done="+url.QueryEscape(done), http.StatusSeeOther)
	}
}

func (c *console) renderError(w http.ResponseWriter, r *http.Request, status int, d confirmData, msg string) {
	p := page{Base: c.cfg.Prefix, Title: d.Title, Nav: "confirm", CSRF: c.csrfToken(w, r), Error: msg, Data: d}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	if err := c.pages["confirm"].ExecuteTemplate(w, "layout", p); err != nil {
		fmt.Fprintf(w, "console: %s", msg)
	}
}
