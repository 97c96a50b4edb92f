package sagastate_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/sagabox/sagabox/internal/pguuid"
	"github.com/sagabox/sagabox/internal/testenv"
	"github.com/sagabox/sagabox/sagastate"
	"github.com/sagabox/sagabox/wire"
)

// clock is a settable time source for Config.Now.
type clock struct{ ns atomic.Int64 }

func (c *clock) Now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *clock) Advance(d time.Duration) { c.ns.Add(int64(d)) }
func newClock(t time.Time) *clock        { c := &clock{}; c.ns.Store(t.UnixNano()); return c }
func scalar[T any](t *testing.T, db *testenv.DB, sql string, args ...any) T {
	t.Helper()
	var v T
	if err := db.Pool.QueryRow(context.Background(), sql, args...).Scan(&v); err != nil {
		t.Fatal(err)
	}
	return v
}

func TestSweep(t *testing.T) {
	t.Parallel()
	const sagas = 200
	ctx := context.Background()
	db := testenv.NewDB(t)
	clk := newClock(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC))
	def := sagastate.Define[script]("sweepy",
		sagastate.Step("a", topic).Do("a.do").Undo("a.undo").Timeout(time.Second).Retry(sagastate.RetryPolicy{MaxAttempts: 1}))
	cfg := sagastate.Config{Sagas: []sagastate.Definition{def}, Now: clk.Now, SweepBatch: 7}
	o1, err := sagastate.New(db.Pool, cfg)
	if err != nil {
		t.Fatal(err)
	}
	o2, err := sagastate.New(db.Pool, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ids := make([]uuid.UUID, sagas)
	err = pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		for i := range ids {
			ids[i] = uuid.New()
			if err := o1.Start(ctx, tx, "sweepy", ids[i], script{}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	t.Run("NothingDueBeforeTheDeadline", func(t *testing.T) {
		clk.Advance(999 * time.Millisecond)
		if n, err := o1.Sweep(ctx); err != nil || n != 0 {
			t.Fatalf("swept %d (%v) before any deadline", n, err)
		}
	})

	t.Run("TwoSweepersShareTheWorkWithoutDoingItTwice", func(t *testing.T) {
		clk.Advance(time.Millisecond)
		var wg sync.WaitGroup
		var handled atomic.Int64
		for _, o := range []*sagastate.Orchestrator{o1, o2, o1, o2} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				n, err := o.Sweep(ctx)
				if err != nil {
					t.Error(err)
				}
				handled.Add(int64(n))
			}()
		}
		wg.Wait()
		if handled.Load() != sagas {
			t.Fatalf("sweepers handled %d sagas, want %d", handled.Load(), sagas)
		}
		if n := scalar[int](t, db, `SELECT count(*) FROM sagabox.saga_events WHERE type = 'step_failed' AND detail LIKE 'timeout%'`); n != sagas {
			t.Fatalf("%d timeouts logged for %d sagas", n, sagas)
		}
		if n := scalar[int](t, db, `SELECT count(*) FROM sagabox.outbox_messages WHERE headers->>'saga-op' = 'compensate'`); n != sagas {
			t.Fatalf("%d compensations enqueued for %d sagas", n, sagas)
		}
		if n := scalar[int](t, db, `SELECT count(*) FROM sagabox.saga_instances WHERE status = 'timeout' AND version = 2`); n != sagas {
			t.Fatalf("%d sagas in status timeout at version 2", n)
		}
	})

	t.Run("ListFiltersByTypeStatusAndAge", func(t *testing.T) {
		got, err := o1.List(ctx, sagastate.Filter{Type: "sweepy", Statuses: []sagastate.SagaStatus{sagastate.SagaTimeout}, Limit: 1000})
		if err != nil || len(got) != sagas {
			t.Fatalf("List = %d sagas, %v", len(got), err)
		}
		if got, _ := o1.List(ctx, sagastate.Filter{Type: "other"}); len(got) != 0 {
			t.Fatalf("List(type other) = %d", len(got))
		}
		if got, _ := o1.List(ctx, sagastate.Filter{StuckFor: time.Minute}); len(got) != 0 {
			t.Fatalf("List(stuck 1m) right after a change = %d", len(got))
		}
		clk.Advance(time.Hour) // compensations now overdue too: the sagas are stuck
		if got, _ := o1.List(ctx, sagastate.Filter{StuckFor: 30 * time.Minute, Limit: 5}); len(got) != 5 {
			t.Fatalf("List(stuck 30m, limit 5) = %d", len(got))
		}
	})

	t.Run("RepliesAfterTheTimeout", func(t *testing.T) {
		id := ids[0]
		reply := func(op wire.Op, attempt int, o wire.Outcome) {
			t.Helper()
			err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
				return o1.HandleReply(ctx, tx, wire.Reply{SagaID: id, Step: "a", Op: op, Attempt: attempt, Outcome: o})
			})
			if err != nil {
				t.Fatal(err)
			}
		}
		before, _ := o1.Get(ctx, id)
		reply(wire.OpForward, 1, wire.OutcomeSuccess) // late success: stale, nothing written
		after, _ := o1.Get(ctx, id)
		if after.Version != before.Version || len(after.Events) != len(before.Events) {
			t.Fatalf("a stale reply changed the saga: version %d → %d", before.Version, after.Version)
		}
		reply(wire.OpCompensate, 1, wire.OutcomeSuccess)
		s, _ := o1.Get(ctx, id)
		if s.Status != sagastate.SagaCompensated || s.Steps[0].Status != sagastate.StepCompensated || s.WakeAt != (time.Time{}) {
			t.Fatalf("after the compensation: %+v", s)
		}
	})
}

// Sagas the sweeper fails to handle used to count toward a full batch, so Sweep ran the
// same failing batch again at once, forever (they stayed first by wake_at), and the
// sagas due after them were never handled.
func TestSweeperBacksOffSagasThatFailToApply(t *testing.T) {
	t.Parallel()
	r := newBrittleSweep(t, 3)
	n, err := r.o.Sweep(r.ctx)
	if err != nil || n != 0 {
		t.Fatalf("first sweep: handled %d, %v; want 0 (the first batch is all broken) and no error", n, err)
	}
	n, err = r.o.Sweep(r.ctx)
	if err != nil || n != len(r.good) {
		t.Fatalf("second sweep handled %d, %v; want the %d good sagas", n, err, len(r.good))
	}
	r.checkPostponed(t)
}

// The sweeper handles a batch in one transition of all its sagas; when that fails, one
// saga at a time, so the broken ones do not hold back the others of their batch.
func TestSweepBatchWithBrokenSagasHandlesTheOthers(t *testing.T) {
	t.Parallel()
	r := newBrittleSweep(t, 10)
	n, err := r.o.Sweep(r.ctx)
	if err != nil || n != len(r.good) {
		t.Fatalf("sweep handled %d, %v; want the %d good sagas of the batch", n, err, len(r.good))
	}
	r.checkPostponed(t)
	if got := scalar[int](t, r.db, `SELECT count(*) FROM sagabox.saga_instances WHERE id = ANY($1) AND version = 2 AND status = 'timeout'`, pguuid.Array(r.good)); got != len(r.good) {
		t.Fatalf("%d of %d good sagas timed out", got, len(r.good))
	}
}

// brittleSweep is three sagas whose steps cannot be read back, due before five good
// ones, all past their step's deadline, for an orchestrator sweeping batch sagas at a time.
type brittleSweep struct {
	ctx          context.Context
	db           *testenv.DB
	clk          *clock
	o            *sagastate.Orchestrator
	broken, good []uuid.UUID
}

func newBrittleSweep(t *testing.T, batch int) *brittleSweep {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	r := &brittleSweep{ctx: ctx, db: testenv.NewDB(t), clk: newClock(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC))}
	def := sagastate.Define[script]("brittle",
		sagastate.Step("a", topic).Do("a.do").Undo("a.undo").Timeout(time.Second).Retry(sagastate.RetryPolicy{MaxAttempts: 1}))
	var err error
	r.o, err = sagastate.New(r.db.Pool, sagastate.Config{Sagas: []sagastate.Definition{def}, Now: r.clk.Now, SweepBatch: batch})
	if err != nil {
		t.Fatal(err)
	}
	start := func(n int) []uuid.UUID {
		ids := make([]uuid.UUID, n)
		for i := range ids {
			ids[i] = uuid.New()
			if err := pgx.BeginFunc(ctx, r.db.Pool, func(tx pgx.Tx) error { return r.o.Start(ctx, tx, "brittle", ids[i], script{}) }); err != nil {
				t.Fatal(err)
			}
		}
		return ids
	}
	r.broken = start(3)
	r.clk.Advance(time.Millisecond) // the good sagas are due after the broken ones
	r.good = start(5)
	// The broken sagas' steps cannot be read back: every attempt to handle them fails.
	// (A hand edit of steps goes with one of the instance row, as sagastate's doc says:
	// the orchestrator reads the steps again only when the row changed.)
	if _, err := r.db.Pool.Exec(ctx, `UPDATE sagabox.saga_steps SET retry = '"not a policy"' WHERE saga_id = ANY($1)`, pguuid.Array(r.broken)); err != nil {
		t.Fatal(err)
	}
	if _, err := r.db.Pool.Exec(ctx, `UPDATE sagabox.saga_instances SET version = version WHERE id = ANY($1)`, pguuid.Array(r.broken)); err != nil {
		t.Fatal(err)
	}
	r.clk.Advance(time.Second)
	return r
}

// checkPostponed checks that the broken sagas are looked at again SweepRetryDelay later.
func (r *brittleSweep) checkPostponed(t *testing.T) {
	t.Helper()
	if got := scalar[int](t, r.db, `SELECT count(*) FROM sagabox.saga_instances WHERE id = ANY($1) AND wake_at >= $2`, pguuid.Array(r.broken), r.clk.Now().Add(sagastate.SweepRetryDelay)); got != len(r.broken) {
		t.Fatalf("%d of %d broken sagas postponed by SweepRetryDelay", got, len(r.broken))
	}
}
