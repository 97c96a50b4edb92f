package participants

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/sagabox/sagabox/sagastate/wire"
)

// Outcomes stored in saga_barrier besides the wire outcomes.
const pending = "pending" // inserted before the handler runs; never committed

// Reasons replied when the barrier, not the handler, decides.
const (
	reasonHanging   = "hanging: the step was compensated before this forward command arrived; not executed"
	reasonNullCmp   = "null compensation: the forward step never ran here; nothing to undo"
	reasonNoForward = "compensation of a refused forward step: nothing took effect; nothing to undo"
)

type barrier struct {
	insertSQL, selectSQL, finishSQL, deleteSQL string
}

func newBarrier(schema string) *barrier {
	t := pgx.Identifier{schema, "saga_barrier"}.Sanitize()
	return &barrier{
		insertSQL: `INSERT INTO ` + t + ` ("saga_id", "step", "op", "outcome", "reason")
VALUES ($1, $2, $3, $4, $5) ON CONFLICT ("saga_id", "step", "op") DO NOTHING`,
		selectSQL: `SELECT "outcome", "reason", "result" FROM ` + t + ` WHERE "saga_id" = $1 AND "step" = $2 AND "op" = $3`,
		finishSQL: `UPDATE ` + t + ` SET "outcome" = $4, "reason" = $5, "result" = $6 WHERE "saga_id" = $1 AND "step" = $2 AND "op" = $3`,
		deleteSQL: `DELETE FROM ` + t + ` WHERE "saga_id" = $1 AND "step" = $2 AND "op" = $3`,
	}
}

// The savepoint taken before the handler: rolling back to it undoes the business
// change and anything the handler enqueued, but keeps the inbox and barrier rows.
const (
	savepointSQL = `SAVEPOINT "sagabox_step"`
	rollbackSQL  = `ROLLBACK TO SAVEPOINT "sagabox_step"`
)

// run decides cmd through the barrier, calls h when it must, and returns the reply.
// An error means tx is unusable.
func (b *barrier) run(ctx context.Context, tx pgx.Tx, cmd wire.Command, h Handler) (wire.Reply, error) {
	first, err := b.insert(ctx, tx, cmd, cmd.Op, pending, "")
	if err != nil {
		return wire.Reply{}, err
	}
	if !first {
		return b.replay(ctx, tx, cmd)
	}
	if cmd.Op == wire.OpCompensate {
		// Claim the forward slot: if it was free, the forward never ran (null
		// compensation) and any later forward is hanging.
		free, err := b.insert(ctx, tx, cmd, wire.OpForward, string(wire.OutcomeIgnored), reasonHanging)
		if err != nil {
			return wire.Reply{}, err
		}
		if free {
			return b.finish(ctx, tx, cmd, wire.OutcomeSuccess, reasonNullCmp, nil)
		}
		fwd, _, _, err := b.get(ctx, tx, cmd, wire.OpForward)
		if err != nil {
			return wire.Reply{}, err
		}
		if fwd != string(wire.OutcomeSuccess) {
			return b.finish(ctx, tx, cmd, wire.OutcomeSuccess, reasonNoForward, nil)
		}
	}
	if _, err := tx.Exec(ctx, savepointSQL); err != nil {
		return wire.Reply{}, fmt.Errorf("participants: savepoint: %w", err)
	}
	result, herr := h(ctx, tx, cmd)
	if herr != nil && ctx.Err() != nil {
		// Shutting down: not the step's failure. Nothing commits; the record comes again.
		return wire.Reply{}, fmt.Errorf("participants: saga %s step %s interrupted: %w", cmd.SagaID, cmd.Step, herr)
	}
	if herr == nil {
		return b.finish(ctx, tx, cmd, wire.OutcomeSuccess, "", result)
	}
	if _, err := tx.Exec(ctx, rollbackSQL); err != nil {
		return wire.Reply{}, fmt.Errorf("participants: handler failed (%v) and rolling back its changes failed: %w", herr, err)
	}
	var fe *FailureError
	if errors.As(herr, &fe) && cmd.Op == wire.OpForward {
		return b.finish(ctx, tx, cmd, wire.OutcomeFailure, fe.Reason, nil)
	}
	// Not recorded: the orchestrator's next attempt must run the handler again.
	if _, err := tx.Exec(ctx, b.deleteSQL, cmd.SagaID, cmd.Step, string(cmd.Op)); err != nil {
		return wire.Reply{}, fmt.Errorf("participants: barrier: %w", err)
	}
	if errors.As(herr, &fe) {
		return cmd.ReplyFor(wire.OutcomeFailure, fe.Reason, nil), nil
	}
	return cmd.ReplyFor(wire.OutcomeRetryable, herr.Error(), nil), nil
}

func (b *barrier) insert(ctx context.Context, tx pgx.Tx, cmd wire.Command, op wire.Op, outcome, reason string) (bool, error) {
	tag, err := tx.Exec(ctx, b.insertSQL, cmd.SagaID, cmd.Step, string(op), outcome, reason)
	if err != nil {
		return false, fmt.Errorf("participants: barrier insert (saga %s step %s %s): %w", cmd.SagaID, cmd.Step, op, err)
	}
	return tag.RowsAffected() == 1, nil
}

func (b *barrier) get(ctx context.Context, tx pgx.Tx, cmd wire.Command, op wire.Op) (outcome, reason string, result []byte, err error) {
	err = tx.QueryRow(ctx, b.selectSQL, cmd.SagaID, cmd.Step, string(op)).Scan(&outcome, &reason, &result)
	if err != nil {
		return "", "", nil, fmt.Errorf("participants: barrier read (saga %s step %s %s): %w", cmd.SagaID, cmd.Step, op, err)
	}
	return outcome, reason, result, nil
}

func (b *barrier) finish(ctx context.Context, tx pgx.Tx, cmd wire.Command, outcome wire.Outcome, reason string, result []byte) (wire.Reply, error) {
	if _, err := tx.Exec(ctx, b.finishSQL, cmd.SagaID, cmd.Step, string(cmd.Op), string(outcome), reason, result); err != nil {
		return wire.Reply{}, fmt.Errorf("participants: barrier update (saga %s step %s %s): %w", cmd.SagaID, cmd.Step, cmd.Op, err)
	}
	return replyFor(cmd, outcome, reason, result), nil
}

// replay answers a command whose barrier row exists: a duplicate gets the stored
// answer; a forward whose row was claimed by a compensation is hanging.
func (b *barrier) replay(ctx context.Context, tx pgx.Tx, cmd wire.Command) (wire.Reply, error) {
	outcome, reason, result, err := b.get(ctx, tx, cmd, cmd.Op)
	if err != nil {
		return wire.Reply{}, err
	}
	return replyFor(cmd, wire.Outcome(outcome), reason, result), nil
}

// replyFor keeps informational reasons out of success replies (wire: "empty on success").
func replyFor(cmd wire.Command, outcome wire.Outcome, reason string, result []byte) wire.Reply {
	if outcome == wire.OutcomeSuccess {
		reason = ""
	}
	return cmd.ReplyFor(outcome, reason, result)
}
