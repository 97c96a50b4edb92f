package participants

import (
	"context"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/sagabox/sagabox/internal/testenv"
	"github.com/sagabox/sagabox/wire"
)

// TestEveryTraceSpanEnds: the span a consumer's Trace hook opens for a command ended
// only when its handler ran, so the spans of duplicates (answered from the barrier
// row), of null compensations and of compensations of a step that never succeeded
// stayed open and were never exported.
func TestEveryTraceSpanEnds(t *testing.T) {
	t.Parallel()
	db := testenv.NewDB(t)
	p, err := New(db.Pool, Config{})
	if err != nil {
		t.Fatal(err)
	}
	noop := func(context.Context, pgx.Tx, wire.Command) ([]byte, error) { return nil, nil }
	p.Step("s.do", noop, "s.undo", noop)
	cmd := func(saga uuid.UUID, op wire.Op) wire.Command {
		name := "s.do"
		if op == wire.OpCompensate {
			name = "s.undo"
		}
		return wire.Command{SagaID: saga, SagaType: "t", Step: "s", Op: op, Attempt: 1, Name: name, ReplyTo: "replies", Payload: []byte(`{}`)}
	}
	ctx := context.Background()
	done := uuid.New()
	if err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error { return p.HandleCommand(ctx, tx, cmd(done, wire.OpForward)) }); err != nil {
		t.Fatal(err)
	}
	cmds := []wire.Command{
		cmd(uuid.New(), wire.OpForward),    // runs its handler
		cmd(done, wire.OpForward),          // a duplicate
		cmd(uuid.New(), wire.OpCompensate), // a null compensation
	}
	opened, ended := 0, 0
	trace := func(int) (context.Context, func(error)) {
		opened++
		return ctx, func(error) { ended++ }
	}
	if err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error { return p.handle(ctx, tx, cmds, trace, false, nil) }); err != nil {
		t.Fatal(err)
	}
	if opened != len(cmds) || ended != opened {
		t.Fatalf("%d spans opened, %d ended; want %d and %d", opened, ended, len(cmds), len(cmds))
	}
}
