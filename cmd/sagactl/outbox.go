package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"strconv"
	"strings"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/sagabox/sagabox/internal/textfmt"
	"github.com/sagabox/sagabox/outbox"
)

func init() {
	register(&command{
		name: "outbox status", summary: "Show the outbox backlog (pending rows, oldest age) and its dead letters.",
		run: outboxStatus,
		flags: func(fs *flag.FlagSet, o *opts) {
			fs.IntVar(&o.limit, "limit", 20, "how many dead letters to list; 0 lists none (counts only)")
		},
	})
	register(&command{
		name: "outbox retry", args: "[ID...]", npos: -1,
		summary: "Make dead-lettered messages pending again so the relay publishes them (give ids, or --all, which asks first).",
		run:     outboxRetry,
		flags: func(fs *flag.FlagSet, o *opts) {
			fs.BoolVar(&o.all, "all", false, "retry every dead-lettered message (asks first unless --yes)")
			destructive(fs, o)
		},
	})
}

type deadJSON struct {
	ID        string            `json:"id"`
	Topic     string            `json:"topic"`
	Key       string            `json:"key"`
	Headers   map[string]string `json:"headers,omitempty"`
	Bytes     int               `json:"payload_bytes"`
	Attempts  int               `json:"attempts"`
	LastError string            `json:"last_error"`
	CreatedAt string            `json:"created_at"`
	DeadAt    string            `json:"dead_at"`
}

func outboxStatus(ctx context.Context, a *app, o *opts, _ []string) error {
	if o.limit < 0 {
		return fmt.Errorf("outbox status: --limit is %d; give 0 (counts only) or how many dead letters to list", o.limit)
	}
	pool, err := connect(ctx, o)
	if err != nil {
		return err
	}
	defer pool.Close()
	st, err := outbox.Stats(ctx, pool, o.schema)
	if err != nil {
		return explainMissing(err, o.schema)
	}
	var dead []outbox.DeadMessage
	if o.limit > 0 { // ListDead reads 0 as its own default
		if dead, err = outbox.ListDead(ctx, pool, o.schema, o.limit); err != nil {
			return explainMissing(err, o.schema)
		}
	}
	if o.json {
		out := make([]deadJSON, 0, len(dead))
		for _, d := range dead {
			out = append(out, deadJSON{
				ID: d.ID.String(), Topic: d.Topic, Key: d.Key, Headers: d.Headers, Bytes: len(d.Payload),
				Attempts: d.Attempts, LastError: d.LastError,
				CreatedAt: d.CreatedAt.UTC().Format(jsonTime), DeadAt: d.DeadAt.UTC().Format(jsonTime),
			})
		}
		return a.printJSON(map[string]any{
			"schema": o.schema, "pending": st.Pending, "waiting_retry": st.Waiting,
			"oldest_pending_age_ms": st.OldestPendingAge.Milliseconds(), "dead": st.Dead, "dead_letters": out,
		})
	}
	a.table([]string{"PENDING", "WAITING RETRY", "OLDEST PENDING", "DEAD LETTERS"}, [][]string{{
		strconv.FormatInt(st.Pending, 10), strconv.FormatInt(st.Waiting, 10), textfmt.Duration(st.OldestPendingAge), strconv.FormatInt(st.Dead, 10),
	}})
	if len(dead) == 0 {
		if st.Dead > 0 {
			fmt.Fprintf(a.stdout, "(%d dead letter(s), none listed with --limit 0)\n", st.Dead)
		}
		return nil
	}
	fmt.Fprintln(a.stdout)
	rows := make([][]string, 0, len(dead))
	for _, d := range dead {
		rows = append(rows, []string{d.ID.String(), d.Topic, d.Key, strconv.Itoa(d.Attempts), textfmt.Time(d.DeadAt, "-"), oneLine(d.LastError, 80)})
	}
	a.table([]string{"DEAD LETTER ID", "TOPIC", "KEY", "ATTEMPTS", "DEAD AT", "LAST ERROR"}, rows)
	if int64(len(dead)) < st.Dead {
		fmt.Fprintf(a.stdout, "(%d of %d shown; --limit for more)\n", len(dead), st.Dead)
	}
	fmt.Fprintln(a.stdout, "Fix the cause, then: sagactl outbox retry ID... (or --all)")
	return nil
}

func outboxRetry(ctx context.Context, a *app, o *opts, pos []string) error {
	if len(pos) == 0 && !o.all {
		return fmt.Errorf("outbox retry: name the dead letters to retry (ids from 'sagactl outbox status') or pass --all")
	}
	if len(pos) > 0 && o.all {
		return fmt.Errorf("outbox retry: give ids or --all, not both")
	}
	ids := make([]uuid.UUID, 0, len(pos))
	for _, p := range pos {
		id, err := uuid.Parse(p)
		if err != nil {
			return fmt.Errorf("outbox retry: %q is not a message id (want a UUID as listed by 'sagactl outbox status')", p)
		}
		ids = append(ids, id)
	}
	pool, err := connect(ctx, o)
	if err != nil {
		return err
	}
	defer pool.Close()
	if o.all && !o.dryRun {
		st, err := outbox.Stats(ctx, pool, o.schema)
		if err != nil {
			return explainMissing(err, o.schema)
		}
		if st.Dead == 0 {
			return a.retried(o, 0)
		}
		if err := a.confirm(o, fmt.Sprintf("make all %d dead letter(s) of schema %s pending again, so the relay publishes them", st.Dead, o.schema)); err != nil {
			return fmt.Errorf("outbox retry: %w", err)
		}
	}
	var n int64
	// All or nothing: an id that is not a dead letter aborts the whole retry; a dry run
	// does the same work and rolls it back, so it counts exactly what would be retried.
	errDryRun := errors.New("dry run")
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if len(ids) > 0 {
			if err := checkDead(ctx, tx, o.schema, ids); err != nil {
				return err
			}
		}
		var err error
		if n, err = outbox.RetryDead(ctx, tx, o.schema, ids...); err == nil && o.dryRun {
			err = errDryRun
		}
		return err
	})
	if err != nil && !errors.Is(err, errDryRun) {
		return explainMissing(err, o.schema)
	}
	return a.retried(o, n)
}

// retried reports how many dead letters were (or, with --dry-run, would be) retried.
func (a *app) retried(o *opts, n int64) error {
	if o.json {
		if o.dryRun {
			return a.printJSON(map[string]any{"schema": o.schema, "dry_run": true, "would_retry": n})
		}
		return a.printJSON(map[string]any{"schema": o.schema, "retried": n})
	}
	if o.dryRun {
		fmt.Fprintf(a.stdout, "dry run: would make %d dead letter(s) pending again; nothing changed\n", n)
		return nil
	}
	fmt.Fprintf(a.stdout, "%d dead letter(s) made pending again; the relay will publish them\n", n)
	return nil
}

// checkDead returns an error naming every id that is unknown or not dead-lettered.
func checkDead(ctx context.Context, tx pgx.Tx, schema string, ids []uuid.UUID) error {
	dead, err := outbox.LockDead(ctx, tx, schema, ids)
	if err != nil {
		return err
	}
	var problems []string
	for _, id := range ids {
		isDead, known := dead[id]
		switch {
		case !known:
			problems = append(problems, fmt.Sprintf("no outbox message %s (already published, or a wrong id?)", id))
		case !isDead:
			problems = append(problems, fmt.Sprintf("message %s is not dead-lettered (it is still pending)", id))
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("outbox retry: nothing retried: %s", strings.Join(problems, "; "))
	}
	return nil
}

// explainMissing turns "relation does not exist" into advice to migrate.
func explainMissing(err error, schema string) error {
	if err != nil && strings.Contains(err.Error(), "SQLSTATE 42P01") {
		return fmt.Errorf("%w\nschema %q has no sagabox tables: run 'sagactl migrate up --schema %s' first", err, schema, schema)
	}
	return err
}

const jsonTime = "2006-01-02T15:04:05.000Z07:00"

func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > n {
		return s[:n-1] + "…"
	}
	return s
}
