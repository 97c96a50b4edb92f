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
	"github.com/sagabox/sagabox/wire"
)

// Start writes the instance row once, with the first transition's outcome: a running
// saga wakes at its first deadline, and a saga whose first step's input failed is
// written compensated.
func TestStartWritesTheFirstTransitionsOutcome(t *testing.T) {
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
	if s.Status != sagastate.SagaRunning || s.Version != 1 || !s.WakeAt.Equal(clk.Now().Add(5*time.Second)) || !s.WakeAt.Equal(s.Steps[0].Deadline) {
		t.Fatalf("started saga: status %s version %d wake %v (first deadline %v)", s.Status, s.Version, s.WakeAt, s.Steps[0].Deadline)
	}
	f, err := o.Get(ctx, failed)
	if err != nil {
		t.Fatal(err)
	}
	if f.Status != sagastate.SagaCompensated || f.Version != 1 || f.FinishedAt.IsZero() || !f.WakeAt.IsZero() || f.LastError == "" {
		t.Fatalf("saga whose first input failed: status %s version %d finished %v wake %v error %q", f.Status, f.Version, f.FinishedAt, f.WakeAt, f.LastError)
	}
}

// On the database's clock (no Config.Now), the first transition is computed before the
// start time is known: the instance, its steps, its log and what the orchestrator
// remembers of the steps all carry the start time, and so does what the next
// transition writes of them.
func TestStartOnTheDatabaseClockDatesEverythingAtTheStart(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.NewDB(t)
	def := sagastate.Define[script]("dated",
		sagastate.Step("a", topic).Do("a.do").Undo("a.undo").Timeout(time.Hour),
		sagastate.Step("b", topic).Do("b.do").Undo("b.undo").Timeout(time.Hour))
	o, err := sagastate.New(db.Pool, sagastate.Config{Sagas: []sagastate.Definition{def}})
	if err != nil {
		t.Fatal(err)
	}
	id := uuid.New()
	var before, after time.Time
	err = pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		if err := tx.QueryRow(ctx, `SELECT clock_timestamp()`).Scan(&before); err != nil {
			return err
		}
		if err := def.Start(ctx, tx, o, id, script{}); err != nil {
			return err
		}
		return tx.QueryRow(ctx, `SELECT clock_timestamp()`).Scan(&after)
	})
	if err != nil {
		t.Fatal(err)
	}
	s, err := o.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	start := s.CreatedAt
	if start.Before(before) || start.After(after) || !s.UpdatedAt.Equal(start) {
		t.Fatalf("created %v, updated %v; want the database's clock between %v and %v", start, s.UpdatedAt, before, after)
	}
	a := s.Steps[0]
	if !a.StartedAt.Equal(start) || !a.Deadline.Equal(start.Add(time.Hour)) || !s.WakeAt.Equal(a.Deadline) {
		t.Fatalf("step a started %v, deadline %v, saga wakes %v; want %v, %v, the deadline", a.StartedAt, a.Deadline, s.WakeAt, start, start.Add(time.Hour))
	}
	for _, e := range s.Events {
		if !e.At.Equal(start) {
			t.Fatalf("event %s at %v, want %v", e.Type, e.At, start)
		}
	}
	// The next transition writes step a from what the orchestrator remembers of it.
	err = pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		return o.HandleReply(ctx, tx, wire.Reply{SagaID: id, Step: "a", Op: wire.OpForward, Attempt: 1, Outcome: wire.OutcomeSuccess})
	})
	if err != nil {
		t.Fatal(err)
	}
	if s, err = o.Get(ctx, id); err != nil {
		t.Fatal(err)
	}
	if a = s.Steps[0]; a.Status != sagastate.StepCompleted || !a.StartedAt.Equal(start) || s.Steps[1].Status != sagastate.StepExecuting {
		t.Fatalf("after a's reply: a %s started %v (want %v), b %s", a.Status, a.StartedAt, start, s.Steps[1].Status)
	}
}

// A transition in the caller's transaction (HandleReply) turns sequential scans off
// and generic plans on for its own statements only: the transaction's settings are
// as they were once it returns.
func TestTransitionPutsTheCallersPlannerSettingsBack(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.NewDB(t)
	def := sagastate.Define[script]("settings", sagastate.Step("a", topic).Do("a.do").Undo("a.undo"),
		sagastate.Step("b", topic).Do("b.do").Undo("b.undo"))
	o, err := sagastate.New(db.Pool, sagastate.Config{Sagas: []sagastate.Definition{def}})
	if err != nil {
		t.Fatal(err)
	}
	id := uuid.New()
	err = pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error { return def.Start(ctx, tx, o, id, script{}) })
	if err != nil {
		t.Fatal(err)
	}
	err = pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SET LOCAL plan_cache_mode = force_custom_plan; SET LOCAL enable_seqscan = on`); err != nil {
			return err
		}
		if err := o.HandleReply(ctx, tx, wire.Reply{SagaID: id, Step: "a", Op: wire.OpForward, Attempt: 1, Outcome: wire.OutcomeSuccess}); err != nil {
			return err
		}
		var mode, seq string
		if err := tx.QueryRow(ctx, `SELECT current_setting('plan_cache_mode'), current_setting('enable_seqscan')`).Scan(&mode, &seq); err != nil {
			return err
		}
		if mode != "force_custom_plan" || seq != "on" {
			t.Errorf("after HandleReply: plan_cache_mode %s, enable_seqscan %s; want force_custom_plan, on", mode, seq)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
