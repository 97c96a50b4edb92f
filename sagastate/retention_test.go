package sagastate_test

import (
	"context"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/sagabox/sagabox/internal/pguuid"
	"github.com/sagabox/sagabox/internal/testenv"
	"github.com/sagabox/sagabox/sagastate"
	"github.com/sagabox/sagabox/wire"
)

func TestRetentionDeletesFinishedSagasPastTheWindowOnly(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.NewDB(t)
	clk := newClock(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC))
	def := sagastate.Define[script]("kept", sagastate.Step("a", topic).Do("a.do").Undo("a.undo"))
	o, err := sagastate.New(db.Pool, sagastate.Config{Sagas: []sagastate.Definition{def}, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	start := func() uuid.UUID {
		id := uuid.New()
		if err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error { return def.Start(ctx, tx, o, id, script{}) }); err != nil {
			t.Fatal(err)
		}
		return id
	}
	reply := func(id uuid.UUID, outcome wire.Outcome) {
		err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
			return o.HandleReply(ctx, tx, wire.Reply{SagaID: id, Step: "a", Op: wire.OpForward, Attempt: 1, Outcome: outcome})
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	oldCompleted, oldCompensated, oldRunning, oldFailed := start(), start(), start(), start()
	reply(oldCompleted, wire.OutcomeSuccess)
	reply(oldCompensated, wire.OutcomeFailure)
	reply(oldFailed, wire.OutcomeSuccess)
	// oldFailed: completed, then forced into failed awaiting an operator (finished_at NULL).
	if _, err := db.Pool.Exec(ctx, `UPDATE sagabox.saga_instances SET status = 'failed', finished_at = NULL WHERE id = $1`, oldFailed); err != nil {
		t.Fatal(err)
	}
	clk.Advance(sagastate.DefaultRetention + time.Hour)
	recent := start()
	reply(recent, wire.OutcomeSuccess)

	n, err := o.DeleteFinished(ctx)
	if err != nil || n != 2 {
		t.Fatalf("DeleteFinished = %d, %v; want the 2 old finished sagas", n, err)
	}
	for id, want := range map[uuid.UUID]bool{oldCompleted: false, oldCompensated: false, oldRunning: true, oldFailed: true, recent: true} {
		_, err := o.Get(ctx, id)
		if kept := err == nil; kept != want {
			t.Fatalf("saga %s kept = %v, want %v (%v)", id, kept, want, err)
		}
	}
	gone := []uuid.UUID{oldCompleted, oldCompensated}
	if n := scalar[int](t, db, `SELECT (SELECT count(*) FROM sagabox.saga_steps WHERE saga_id = ANY($1)) + (SELECT count(*) FROM sagabox.saga_events WHERE saga_id = ANY($1))`, pguuid.Array(gone)); n != 0 {
		t.Fatalf("%d steps and events of deleted sagas left", n)
	}
	if n, err := o.DeleteFinished(ctx); err != nil || n != 0 {
		t.Fatalf("second DeleteFinished = %d, %v", n, err)
	}
}
