package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagabox/sagabox/internal/textfmt"
	"github.com/sagabox/sagabox/internal/timeline"
	"github.com/sagabox/sagabox/sagastate"
)

func init() {
	register(&command{
		name: "saga list", summary: "List sagas, newest first (filter by type, status and age).", run: sagaList,
		flags: func(fs *flag.FlagSet, o *opts) {
			fs.StringVar(&o.sagaType, "type", "", "only sagas of this type")
			fs.StringVar(&o.status, "status", "", "only sagas in these statuses, comma-separated: "+strings.Join(sagaStatuses(), ", "))
			fs.DurationVar(&o.olderThan, "older-than", 0, "only sagas created at least this long ago (e.g. 10m)")
			fs.DurationVar(&o.stuckFor, "stuck-for", 0, "only unfinished sagas that have not changed for this long (e.g. 5m)")
			fs.IntVar(&o.limit, "limit", 50, "at most this many sagas")
		},
	})
	register(&command{
		name: "saga show", args: "ID", npos: 1, run: sagaShow,
		summary: "Show one saga: its steps, attempts, errors and event timeline (--svg / --html draw it).",
		flags: func(fs *flag.FlagSet, o *opts) {
			fs.StringVar(&o.svg, "svg", "", "also draw the timeline into this SVG file")
			fs.StringVar(&o.html, "html", "", "also write an HTML page with the timeline and the event log to this file")
		},
	})
	register(&command{
		name: "saga retry", args: "ID", npos: 1, run: sagaRetry,
		summary: "Resume the compensation of a failed saga, or resend a compensating or timed-out saga's stuck compensation now.",
		flags: func(fs *flag.FlagSet, o *opts) {
			fs.StringVar(&o.replyTopic, "reply-topic", sagastate.DefaultReplyTopic, "the orchestrators' reply topic, where the participant must answer")
		},
	})
	register(&command{
		name: "saga abort", args: "ID", npos: 1, run: sagaAbort,
		summary: "Abort a saga: a running one compensates; a compensating, timed-out or failed one gives up (failed, aborted; settle by hand).",
		flags: func(fs *flag.FlagSet, o *opts) {
			fs.StringVar(&o.reason, "reason", "", "why, recorded in the saga's log (required)")
		},
	})
	register(&command{
		name: "stats", run: sagaStats,
		summary: "Saga counts by status, compensation rate and time to consistency.",
		flags: func(fs *flag.FlagSet, o *opts) {
			fs.StringVar(&o.sagaType, "type", "", "only sagas of this type")
			fs.DurationVar(&o.since, "since", 0, "only sagas created in this last period (e.g. 1h); default all")
		},
	})
}

var allStatuses = []sagastate.SagaStatus{
	sagastate.SagaRunning, sagastate.SagaCompleted, sagastate.SagaFailed,
	sagastate.SagaCompensating, sagastate.SagaCompensated, sagastate.SagaTimeout,
}

func sagaStatuses() []string {
	out := make([]string, len(allStatuses))
	for i, s := range allStatuses {
		out[i] = string(s)
	}
	return out
}

// orchestrator opens the database and a query-only orchestrator on it.
func orchestrator(ctx context.Context, o *opts) (*pgxpool.Pool, *sagastate.Orchestrator, error) {
	pool, err := connect(ctx, o)
	if err != nil {
		return nil, nil, err
	}
	cfg := sagastate.Config{Schema: o.schema, ReplyTopic: o.replyTopic}
	orch, err := sagastate.New(pool, cfg)
	if err != nil {
		pool.Close()
		return nil, nil, err
	}
	return pool, orch, nil
}

func parseID(s string) (uuid.UUID, error) {
	id, err := uuid.Parse(s)
	if err != nil {
		return id, fmt.Errorf("%q is not a saga id (want a UUID, as listed by 'sagactl saga list')", s)
	}
	return id, nil
}

// explainSaga turns the orchestrator's sentinel errors into advice.
func explainSaga(err error, id uuid.UUID, o *opts) error {
	switch {
	case errors.Is(err, sagastate.ErrNotFound):
		return fmt.Errorf("no saga %s in schema %s (check the id with 'sagactl saga list', and --database-url / --schema)", id, o.schema)
	case errors.Is(err, sagastate.ErrNotFailed):
		return fmt.Errorf("%w\nabort is for unfinished sagas, retry for failed, compensating or timed-out ones; see 'sagactl saga show %s'", err, id)
	}
	return explainMissing(err, o.schema)
}

type sagaJSON struct {
	ID         string      `json:"id"`
	Type       string      `json:"type"`
	Status     string      `json:"status"`
	Aborted    bool        `json:"aborted,omitempty"`
	LastError  string      `json:"last_error,omitempty"`
	CreatedAt  string      `json:"created_at"`
	UpdatedAt  string      `json:"updated_at"`
	FinishedAt string      `json:"finished_at,omitempty"`
	DurationMS float64     `json:"duration_ms,omitempty"`
	Payload    any         `json:"payload,omitempty"`
	Steps      []stepJSON  `json:"steps,omitempty"`
	Events     []eventJSON `json:"events,omitempty"`
}

type stepJSON struct {
	Name       string `json:"name"`
	Stage      int    `json:"stage"`
	Status     string `json:"status"`
	Op         string `json:"op"`
	Attempt    int    `json:"attempt"`
	LastError  string `json:"last_error,omitempty"`
	StartedAt  string `json:"started_at,omitempty"`
	FinishedAt string `json:"finished_at,omitempty"`
}

type eventJSON struct {
	At      string `json:"at"`
	Type    string `json:"type"`
	Step    string `json:"step,omitempty"`
	Op      string `json:"op,omitempty"`
	Attempt int    `json:"attempt,omitempty"`
	Detail  string `json:"detail,omitempty"`
}

func jsonTimeOrEmpty(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(jsonTime)
}

func toSagaJSON(s *sagastate.Instance, full bool) sagaJSON {
	j := sagaJSON{
		ID: s.ID.String(), Type: s.Type, Status: string(s.Status), Aborted: !s.AbortedAt.IsZero(), LastError: s.LastError,
		CreatedAt: jsonTimeOrEmpty(s.CreatedAt), UpdatedAt: jsonTimeOrEmpty(s.UpdatedAt), FinishedAt: jsonTimeOrEmpty(s.FinishedAt),
	}
	if !s.FinishedAt.IsZero() {
		j.DurationMS = float64(s.FinishedAt.Sub(s.CreatedAt).Microseconds()) / 1000
	}
	if !full {
		return j
	}
	j.Payload = s.Payload
	for _, st := range s.Steps {
		j.Steps = append(j.Steps, stepJSON{Name: st.Name, Stage: st.Stage, Status: string(st.Status), Op: string(st.Op), Attempt: st.Attempt,
			LastError: st.LastError, StartedAt: jsonTimeOrEmpty(st.StartedAt), FinishedAt: jsonTimeOrEmpty(st.FinishedAt)})
	}
	for _, e := range s.Events {
		j.Events = append(j.Events, eventJSON{At: jsonTimeOrEmpty(e.At), Type: string(e.Type), Step: e.Step, Op: string(e.Op), Attempt: e.Attempt, Detail: e.Detail})
	}
	return j
}

func sagaList(ctx context.Context, a *app, o *opts, _ []string) error {
	f := sagastate.Filter{Type: o.sagaType, StuckFor: o.stuckFor, Limit: o.limit}
	if o.status != "" {
		for _, s := range strings.Split(o.status, ",") {
			st := sagastate.SagaStatus(strings.TrimSpace(s))
			if !slices.Contains(allStatuses, st) {
				return fmt.Errorf("saga list: unknown status %q; use %s", s, strings.Join(sagaStatuses(), ", "))
			}
			f.Statuses = append(f.Statuses, st)
		}
	}
	if o.olderThan < 0 || o.stuckFor < 0 || o.limit < 1 {
		return errors.New("saga list: --older-than and --stuck-for must not be negative, --limit must be at least 1")
	}
	if o.olderThan > 0 {
		f.CreatedBefore = time.Now().Add(-o.olderThan)
	}
	pool, orch, err := orchestrator(ctx, o)
	if err != nil {
		return err
	}
	defer pool.Close()
	list, err := orch.List(ctx, f)
	if err != nil {
		return explainMissing(err, o.schema)
	}
	if o.json {
		out := make([]sagaJSON, 0, len(list))
		for i := range list {
			out = append(out, toSagaJSON(&list[i], false))
		}
		return a.printJSON(map[string]any{"sagas": out})
	}
	if len(list) == 0 {
		fmt.Fprintln(a.stdout, "no sagas match")
		return nil
	}
	now := time.Now()
	rows := make([][]string, 0, len(list))
	for _, s := range list {
		status := string(s.Status)
		if !s.AbortedAt.IsZero() {
			status += " (aborted)"
		}
		took := "-"
		if !s.FinishedAt.IsZero() {
			took = textfmt.Duration(s.FinishedAt.Sub(s.CreatedAt))
		}
		rows = append(rows, []string{s.ID.String(), s.Type, status, textfmt.Duration(now.Sub(s.CreatedAt).Round(time.Second)) + " ago", took, oneLine(s.LastError, 90)})
	}
	a.table([]string{"ID", "TYPE", "STATUS", "CREATED", "TOOK", "LAST ERROR"}, rows)
	if len(list) == o.limit {
		fmt.Fprintf(a.stdout, "(first %d; --limit for more)\n", o.limit)
	}
	return nil
}

func sagaShow(ctx context.Context, a *app, o *opts, pos []string) error {
	var s *sagastate.Instance
	if err := withSaga(ctx, o, pos[0], func(orch *sagastate.Orchestrator, id uuid.UUID) (err error) {
		s, err = orch.Get(ctx, id)
		return err
	}); err != nil {
		return err
	}
	tl := timeline.FromSaga(s)
	if o.svg != "" {
		if err := writeFile(o.svg, func(f *os.File) error { return tl.SVG(f) }); err != nil {
			return err
		}
	}
	if o.html != "" {
		rows := make([]timeline.EventRow, 0, len(s.Events))
		for _, e := range s.Events {
			rows = append(rows, timeline.EventRow{At: e.At, Type: string(e.Type), Step: e.Step, Op: string(e.Op), Attempt: e.Attempt, Detail: e.Detail})
		}
		if err := writeFile(o.html, func(f *os.File) error { return tl.HTML(f, rows) }); err != nil {
			return err
		}
	}
	if o.json {
		return a.printJSON(toSagaJSON(s, true))
	}
	w := a.stdout
	fmt.Fprintf(w, "saga     %s\ntype     %s\nstatus   %s", s.ID, s.Type, s.Status)
	if !s.AbortedAt.IsZero() {
		fmt.Fprintf(w, " (aborted %s)", textfmt.Time(s.AbortedAt, "-"))
	}
	fmt.Fprintf(w, "\ncreated  %s\n", textfmt.Time(s.CreatedAt, "-"))
	if !s.FinishedAt.IsZero() {
		fmt.Fprintf(w, "finished %s (took %s)\n", textfmt.Time(s.FinishedAt, "-"), textfmt.Duration(s.FinishedAt.Sub(s.CreatedAt)))
	}
	if s.LastError != "" {
		fmt.Fprintf(w, "error    %s\n", s.LastError)
	}
	fmt.Fprintf(w, "payload  %s\n\n", oneLine(string(s.Payload), 200))
	rows := make([][]string, 0, len(s.Steps))
	for _, st := range s.Steps {
		rows = append(rows, []string{st.Name, strconv.Itoa(st.Stage + 1), string(st.Status), string(st.Op), strconv.Itoa(st.Attempt),
			textfmt.Time(st.StartedAt, "-"), textfmt.Time(st.FinishedAt, "-"), oneLine(st.LastError, 60)})
	}
	a.table([]string{"STEP", "STAGE", "STATUS", "OP", "ATTEMPT", "STARTED", "FINISHED", "ERROR"}, rows)
	fmt.Fprintln(w)
	erows := make([][]string, 0, len(s.Events))
	for _, e := range s.Events {
		attempt := ""
		if e.Attempt > 0 {
			attempt = strconv.Itoa(e.Attempt)
		}
		erows = append(erows, []string{"+" + textfmt.Duration(e.At.Sub(s.CreatedAt)), string(e.Type), e.Step, string(e.Op), attempt, oneLine(e.Detail, 80)})
	}
	a.table([]string{"AT", "EVENT", "STEP", "OP", "ATTEMPT", "DETAIL"}, erows)
	fmt.Fprintln(w)
	if err := tl.Text(w, 60); err != nil {
		return err
	}
	for _, f := range []string{o.svg, o.html} {
		if f != "" {
			fmt.Fprintf(w, "timeline written to %s\n", f)
		}
	}
	return nil
}

func writeFile(path string, fn func(*os.File) error) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("cannot write the timeline: %w", err)
	}
	if err := fn(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func sagaRetry(ctx context.Context, a *app, o *opts, pos []string) error {
	return sagaAction(ctx, a, o, pos[0], func(orch *sagastate.Orchestrator, id uuid.UUID) error { return orch.Retry(ctx, id) },
		"retried", "saga %[1]s: compensation resumed; follow it with 'sagactl saga show %[1]s'\n")
}

func sagaAbort(ctx context.Context, a *app, o *opts, pos []string) error {
	if strings.TrimSpace(o.reason) == "" {
		return errors.New("saga abort: --reason is required; it is recorded in the saga's log for whoever settles its effects")
	}
	return sagaAction(ctx, a, o, pos[0], func(orch *sagastate.Orchestrator, id uuid.UUID) error { return orch.Abort(ctx, id, o.reason) },
		"aborted", "saga %s aborted: it stays failed; settle what its compensation did not undo by hand\n")
}

// withSaga runs fn on saga rawID with an orchestrator, explaining its errors.
func withSaga(ctx context.Context, o *opts, rawID string, fn func(*sagastate.Orchestrator, uuid.UUID) error) error {
	id, err := parseID(rawID)
	if err != nil {
		return err
	}
	pool, orch, err := orchestrator(ctx, o)
	if err != nil {
		return err
	}
	defer pool.Close()
	if err := fn(orch, id); err != nil {
		return explainSaga(err, id, o)
	}
	return nil
}

// sagaAction runs an operator action on saga rawID and reports it as done.
func sagaAction(ctx context.Context, a *app, o *opts, rawID string, act func(*sagastate.Orchestrator, uuid.UUID) error, done, human string) error {
	if err := withSaga(ctx, o, rawID, act); err != nil {
		return err
	}
	id, _ := uuid.Parse(rawID)
	if o.json {
		return a.printJSON(map[string]any{"id": id, done: true})
	}
	fmt.Fprintf(a.stdout, human, id)
	return nil
}

func sagaStats(ctx context.Context, a *app, o *opts, _ []string) error {
	if o.since < 0 {
		return errors.New("stats: --since must not be negative")
	}
	var since time.Time
	if o.since > 0 {
		since = time.Now().Add(-o.since)
	}
	pool, orch, err := orchestrator(ctx, o)
	if err != nil {
		return err
	}
	defer pool.Close()
	st, err := orch.Stats(ctx, o.sagaType, since)
	if err != nil {
		return explainMissing(err, o.schema)
	}
	msf := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	// The rate and the percentiles are over completed and compensated sagas; with none of
	// those they do not exist yet (0s would read as "instant").
	finished := st.Counts[sagastate.SagaCompleted] + st.Counts[sagastate.SagaCompensated]
	if o.json {
		counts := map[string]int{}
		for _, s := range allStatuses {
			counts[string(s)] = st.Counts[s]
		}
		out := map[string]any{"type": o.sagaType, "total": st.Total, "finished": finished, "counts": counts,
			"compensation_rate": nil, "time_to_consistency_ms": nil}
		if finished > 0 {
			out["compensation_rate"] = st.CompensationRate
			out["time_to_consistency_ms"] = map[string]float64{"p50": msf(st.TimeToConsistencyP50), "p99": msf(st.TimeToConsistencyP99), "max": msf(st.TimeToConsistencyMax)}
		}
		return a.printJSON(out)
	}
	rows := [][]string{}
	for _, s := range allStatuses {
		rows = append(rows, []string{string(s), strconv.Itoa(st.Counts[s])})
	}
	rows = append(rows, []string{"total", strconv.Itoa(st.Total)})
	a.table([]string{"STATUS", "SAGAS"}, rows)
	if finished == 0 {
		fmt.Fprintln(a.stdout, "\ncompensation rate    none yet (no saga has completed or compensated)")
		fmt.Fprintln(a.stdout, "time to consistency  none yet")
		return nil
	}
	fmt.Fprintf(a.stdout, "\ncompensation rate    %.1f%% of %d finished sagas\n", 100*st.CompensationRate, finished)
	fmt.Fprintf(a.stdout, "time to consistency  p50 %s  p99 %s  max %s\n", textfmt.Duration(st.TimeToConsistencyP50), textfmt.Duration(st.TimeToConsistencyP99), textfmt.Duration(st.TimeToConsistencyMax))
	return nil
}
