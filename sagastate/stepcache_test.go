package sagastate_test

import (
	"context"
	"errors"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/sagabox/sagabox/internal/testenv"
	"github.com/sagabox/sagabox/sagastate"
	"github.com/sagabox/sagabox/wire"
)

// An orchestrator remembers the steps it wrote, and must not use them once the saga's
// row was written by anyone else: here another process, after a transition of the first
// one rolled back with a different outcome at the same version.
func TestRememberedStepsAreNotUsedAfterARollbackAndAnotherWriter(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.NewDB(t)
	def := sagastate.Define[script]("three",
		sagastate.Step("a", topic).Do("a.do").Undo("a.undo"),
		sagastate.Step("b", topic).Do("b.do").Undo("b.undo"),
		sagastate.Step("c", topic).Do("c.do").Undo("c.undo"))
	cfg := sagastate.Config{Sagas: []sagastate.Definition{def}}
	o1, err := sagastate.New(db.Pool, cfg)
	if err != nil {
		t.Fatal(err)
	}
	o2, err := sagastate.New(db.Pool, cfg)
	if err != nil {
		t.Fatal(err)
	}
	id := uuid.New()
	if err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error { return o1.Start(ctx, tx, "three", id, script{}) }); err != nil {
		t.Fatal(err)
	}
	reply := func(o *sagastate.Orchestrator, step string, outcome wire.Outcome, commit bool) {
		t.Helper()
		rollback := errors.New("rolled back")
		err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
			if err := o.HandleReply(ctx, tx, wire.Reply{SagaID: id, Step: step, Op: wire.OpForward, Attempt: 1, Outcome: outcome, Reason: "no"}); err != nil {
				return err
			}
			if !commit {
				return rollback
			}
			return nil
		})
		if err != nil && (commit || !errors.Is(err, rollback)) {
			t.Fatal(err)
		}
	}
	reply(o1, "a", wire.OutcomeSuccess, true)
	reply(o1, "b", wire.OutcomeFailure, false) // o1 remembers a compensating saga that never committed
	reply(o2, "b", wire.OutcomeSuccess, true)  // the same version, written by another process
	reply(o1, "c", wire.OutcomeSuccess, true)
	s, err := o1.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if s.Status != sagastate.SagaCompleted || s.Version != 4 {
		t.Fatalf("saga %s at version %d, want completed at 4; steps %+v", s.Status, s.Version, s.Steps)
	}
}
