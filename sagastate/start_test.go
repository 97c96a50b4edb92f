package sagastate_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/sagabox/sagabox/internal/testenv"
	"github.com/sagabox/sagabox/sagastate"
)

// Start writes the instance row once when the first transition is the usual one (its
// wake-up at the start plus the shortest step timeout, at or before the first deadline),
// and writes the transition's outcome when it is not (the first step's input failed).
func TestStartWritesTheInstanceRowOnceUnlessTheFirstTransitionDiffers(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.NewDB(t)
	clk := newClock(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC))
	def := sagastate.Define[script]("first",
		sagastate.Step("a", topic).Do("a.do").Undo("a.undo").Timeout(5*time.Second),
		sagastate.Step("b", topic).Do("b.do").Undo("b.undo").Timeout(2*time.Second))
	bad := sagastate.Define[script]("bad", sagastate.Step("a", topic).Do("a.do").Undo("a.undo")).
		Input("a", func(script, sagastate.Results) (any, error) { return nil, errors.New("no input") })
	o, err := sagastate.New(db.Pool, sagastate.Config{Sagas: []sagastate.Definition{def, bad}, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	good, failed := uuid.New(), uuid.New()
	err = pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		if err := def.Start(ctx, tx, o, good, script{}); err != nil {
			return err
		}
		return bad.Start(ctx, tx, o, failed, script{})
	})
	if err != nil {
		t.Fatal(err)
	}
	s, err := o.Get(ctx, good)
	if err != nil {
		t.Fatal(err)
	}
	if s.Status != sagastate.SagaRunning || s.Version != 1 || !s.WakeAt.Equal(clk.Now().Add(2*time.Second)) || !s.WakeAt.Before(s.Steps[0].Deadline) {
		t.Fatalf("started saga: status %s version %d wake %v (first deadline %v)", s.Status, s.Version, s.WakeAt, s.Steps[0].Deadline)
	}
	f, err := o.Get(ctx, failed)
	if err != nil {
		t.Fatal(err)
	}
	if f.Status != sagastate.SagaCompensated || f.FinishedAt.IsZero() || !f.WakeAt.IsZero() || f.LastError == "" {
		t.Fatalf("saga whose first input failed: status %s finished %v wake %v error %q", f.Status, f.FinishedAt, f.WakeAt, f.LastError)
	}
}
