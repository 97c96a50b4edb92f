package sagastate

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/sagabox/sagabox/wire"
)

// Get returns saga id with its steps and its execution log, or ErrNotFound.
func (o *Orchestrator) Get(ctx context.Context, id uuid.UUID) (*Instance, error) {
	sagas, _, err := o.q.load(ctx, o.pool, []uuid.UUID{id}, false, o.clock(), nil)
	if err != nil {
		return nil, err
	}
	s := sagas[id]
	if s.Events, err = o.q.events(ctx, o.pool, id); err != nil {
		return nil, err
	}
	return s, nil
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
	statuses := make([]string, len(f.Statuses))
	for i, st := range f.Statuses {
		statuses[i] = string(st)
	}
	var stuck pgtype.Interval // NULL: no age condition
	if f.StuckFor > 0 {
		stuck = pgtype.Interval{Microseconds: f.StuckFor.Microseconds(), Valid: true}
	}
	rows, err := o.pool.Query(ctx, o.q.sql("list_instances"), f.Type, statuses, stuck, ts(f.CreatedBefore), f.Limit, ts(o.clock()))
	if err != nil {
		return nil, fmt.Errorf("sagastate: list sagas: %w", err)
	}
	list, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Instance, error) {
		s, _, err := scanInstance(row)
		return s, err
	})
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
	rows, err := o.pool.Query(ctx, o.q.sql("count_by_status"), sagaType, ts(since))
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
	err = o.pool.QueryRow(ctx, o.q.sql("time_to_consistency"), sagaType, ts(since)).Scan(&p50, &p99, &pmax)
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
	db := o.feedDB
	if db == nil {
		db = o.pool
	}
	var c feedCursor
	if err := db.QueryRow(ctx, o.q.sql("feed_start")).Scan(&c.txid); err != nil {
		return fmt.Errorf("read snapshot: %w", err)
	}
	t := time.NewTicker(o.cfg.FeedInterval)
	defer t.Stop()
	for {
		for {
			batch, next, err := o.readFeed(ctx, db, c)
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				o.log.Error("sagastate: event feed; reading again from the same point", "err", err)
				break
			}
			for _, ev := range batch {
				for _, l := range o.cfg.Listeners {
					l(ev)
				}
			}
			c = next
			if len(batch) < feedBatch {
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

const feedBatch = 1000

// feedCursor is the position of the event feed: the last event handed out.
type feedCursor struct {
	txid string
	id   int64
}

// readFeed reads the events after c. The cursor it returns moves only when every row
// was read: an error mid-result leaves it where it was, so no event is skipped.
func (o *Orchestrator) readFeed(ctx context.Context, db DB, c feedCursor) ([]Event, feedCursor, error) {
	rows, err := db.Query(ctx, o.q.sql("feed_events"), c.txid, c.id, feedBatch)
	if err != nil {
		return nil, c, err
	}
	var batch []Event
	next := c
	var typ, op string
	var e Event
	var txid string
	_, err = pgx.ForEachRow(rows, []any{&txid, &e.ID, &e.SagaID, &typ, &e.At, &e.Step, &op, &e.Attempt, &e.Detail}, func() error {
		e.Type, e.Op = EventType(typ), wire.Op(op)
		batch = append(batch, e)
		next = feedCursor{txid, e.ID}
		return nil
	})
	if err != nil {
		return nil, c, err
	}
	return batch, next, nil
}
