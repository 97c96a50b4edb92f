package demo_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/sagabox/sagabox/internal/demo"
	"github.com/sagabox/sagabox/sagastate"
)

// The order service's insert goes with the commit, so whatever orders.qty (integer)
// cannot store must be refused by Validate in the handler. A qty beyond int4 used to
// pass it: the commit failed on every run, the command was dead-lettered unanswered,
// and the saga waited out the step's timeout and resent it to the same fate (seen by
// review). Now Start refuses such a payload, and a participant given one refuses the
// command on its first attempt.
func TestOrderWithQtyBeyondInt4IsRefusedNotLeftUnanswered(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db, _, env := startOrderSagas(t, "", map[string]int{"widget": 10}, 1)
	id := uuid.New()
	o := demo.Order{ID: id, Customer: "c", SKU: "widget", Qty: 1 << 31, Amount: 10, Address: "x"}
	err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error { return env.Orchestrator.Start(ctx, tx, demo.SagaType, id, o) })
	if errors.Is(err, demo.ErrBadPayload) {
		return // refused before it started (the saga definition validates the payload): nothing waits for an answer
	}
	if err != nil {
		t.Fatal(err)
	}
	s := env.Await(t, id, 2*time.Minute)
	if s.Status == sagastate.SagaCompleted {
		t.Fatalf("saga %s completed with qty %d", id, o.Qty)
	}
	for _, st := range s.Steps {
		if st.Attempt > 1 {
			t.Errorf("step %s took %d attempts (last error %q); want the command refused on its first", st.Name, st.Attempt, st.LastError)
		}
	}
}
