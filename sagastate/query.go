package sagastate

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/sagabox/sagabox/wire"
)

// Get returns saga id with its steps and its execution log, or ErrNotFound.
func (o *Orchestrator) Get(ctx context.Context, id uuid.UUID) (*Instance, error) {
	s, err := o.q.load(ctx, o.pool, id, false)
	if err != nil {
		return nil, err
	}
	if s.Events, err = o.q.events(ctx, o.pool, id); err != nil {
		return nil, err
	}
	return &s, nil
}

// Events returns saga id's execution log, oldest first (empty for an unknown id).
func (o *Orchestrator) Events(ctx context.Context, id uuid.UUID) ([]Event, error) {
	return o.q.events(ctx, o.pool, id)
}

// Filter selects sagas for List. Zero fields select everything.
type Filter struct {
	// Type selects one saga type. Defaults to every type.
	Type string
	// Statuses selects sagas in any of these statuses. Defaults to every status.
	Statuses []SagaStatus
	// StuckFor selects unfinished sagas (running, compensating, timeout or failed) that
	// have not changed for at least this long. Defaults to 0 (no age condition).
	StuckFor time.Duration
	// CreatedBefore selects sagas created before this time. Defaults to no limit.
	CreatedBefore time.Time
	// Limit caps the result, newest first. Defaults to 100.
	Limit int
}

// List returns the sagas matching f, most recently created first, without steps or log.
func (o *Orchestrator) List(ctx context.Context, f Filter) ([]Instance, error) {
	if f.Limit <= 0 {
		f.Limit = 100
	}
	var where []string
	var args []any
	arg := func(v any) string { args = append(args, v); return fmt.Sprintf("$%d", len(args)) }
	if f.Type != "" {
		where = append(where, `"type" = `+arg(f.Type))
	}
	if len(f.Statuses) > 0 {
		st := make([]string, len(f.Statuses))
		for i, s := range f.Statuses {
			st[i] = string(s)
		}
		where = append(where, `"status" = ANY(`+arg(st)+`::text[])`)
	}
	if f.StuckFor > 0 {
		where = append(where, `"finished_at" IS NULL AND "updated_at" <= `+arg(o.now().Add(-f.StuckFor)))
	}
	if !f.CreatedBefore.IsZero() {
		where = append(where, `"created_at" < `+arg(f.CreatedBefore))
	}
	sql := `SELECT ` + instanceCols + ` FROM ` + o.q.instances
	if len(where) > 0 {
		sql += ` WHERE ` + strings.Join(where, " AND ")
	}
	sql += ` ORDER BY "created_at" DESC, "id" LIMIT ` + arg(f.Limit)
	rows, err := o.pool.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("sagastate: list sagas: %w", err)
	}
	list, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Instance, error) { return scanInstance(row) })
	if err != nil {
		return nil, fmt.Errorf("sagastate: list sagas: %w", err)
	}
	return list, nil
}

// Stats summarises sagas.
type Stats struct {
	Total  int
	Counts map[SagaStatus]int
	// CompensationRate is compensated / (completed + compensated): the share of finished
	// sagas that were undone. 0 when none finished.
	CompensationRate float64
	// TimeToConsistency is finished_at - created_at over completed and compensated sagas:
	// how long the system was inconsistent.
	TimeToConsistencyP50, TimeToConsistencyP99, TimeToConsistencyMax time.Duration
}

// Stats summarises the sagas of sagaType ("" for every type) created at or after since
// (zero for all time).
func (o *Orchestrator) Stats(ctx context.Context, sagaType string, since time.Time) (Stats, error) {
	st := Stats{Counts: map[SagaStatus]int{}}
	cond := `($1 = '' OR "type" = $1) AND ($2::timestamptz IS NULL OR "created_at" >= $2)`
	rows, err := o.pool.Query(ctx, `SELECT "status", count(*) FROM `+o.q.instances+` WHERE `+cond+` GROUP BY "status"`, sagaType, ts(since))
	if err != nil {
		return st, fmt.Errorf("sagastate: stats: %w", err)
	}
	var status string
	var n int
	if _, err := pgx.ForEachRow(rows, []any{&status, &n}, func() error {
		st.Counts[SagaStatus(status)] = n
		st.Total += n
		return nil
	}); err != nil {
		return st, fmt.Errorf("sagastate: stats: %w", err)
	}
	if fin := st.Counts[SagaCompleted] + st.Counts[SagaCompensated]; fin > 0 {
		st.CompensationRate = float64(st.Counts[SagaCompensated]) / float64(fin)
	}
	var p50, p99, pmax pgtype.Float8
	err = o.pool.QueryRow(ctx, `SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY d), percentile_cont(0.99) WITHIN GROUP (ORDER BY d), max(d)
FROM (SELECT extract(epoch FROM "finished_at" - "created_at") AS d FROM `+o.q.instances+`
      WHERE `+cond+` AND "status" IN ('completed', 'compensated') AND "finished_at" IS NOT NULL) t`, sagaType, ts(since)).Scan(&p50, &p99, &pmax)
	if err != nil {
		return st, fmt.Errorf("sagastate: stats: %w", err)
	}
	sec := func(f pgtype.Float8) time.Duration { return time.Duration(f.Float64 * float64(time.Second)) }
	st.TimeToConsistencyP50, st.TimeToConsistencyP99, st.TimeToConsistencyMax = sec(p50), sec(p99), sec(pmax)
	return st, nil
}

// feedLoop hands committed events to the listeners, reading saga_events like the relay
// reads the outbox: only rows below the oldest running transaction, in (txid, id) order,
// so an event committed late is never skipped. It starts at the events committed after Run
// began.
func (o *Orchestrator) feedLoop(ctx context.Context) error {
	var txid string
	var lastID int64
	if err := o.pool.QueryRow(ctx, `SELECT pg_snapshot_xmin(pg_current_snapshot())::text`).Scan(&txid); err != nil {
		return fmt.Errorf("read snapshot: %w", err)
	}
	sql := `SELECT "txid"::text, "id", "saga_id", "type", "at", "step", "op", "attempt", "detail" FROM ` + o.q.eventsTable + `
WHERE ("txid", "id") > ($1::text::xid8, $2) AND "txid" < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY "txid", "id" LIMIT 1000`
	t := time.NewTicker(o.cfg.FeedInterval)
	defer t.Stop()
	for {
		for {
			rows, err := o.pool.Query(ctx, sql, txid, lastID)
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				o.log.Error("sagastate: event feed", "err", err)
				break
			}
			var batch []Event
			var typ, op string
			var e Event
			_, err = pgx.ForEachRow(rows, []any{&txid, &lastID, &e.SagaID, &typ, &e.At, &e.Step, &op, &e.Attempt, &e.Detail}, func() error {
				e.ID, e.Type, e.Op = lastID, EventType(typ), wire.Op(op)
				batch = append(batch, e)
				return nil
			})
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				o.log.Error("sagastate: event feed", "err", err)
				break
			}
			for _, ev := range batch {
				for _, l := range o.cfg.Listeners {
					l(ev)
				}
			}
			if len(batch) < 1000 {
				break
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
