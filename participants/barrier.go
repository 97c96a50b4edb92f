package participants

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/sagabox/sagabox/wire"
)

// Outcome stored in saga_barrier while the handler runs; never committed.
const pending = "pending"

// Reasons replied (or stored) when the barrier, not the handler, decides.
const (
	reasonHanging   = "hanging: the step was compensated before this forward command arrived; not executed"
	reasonNullCmp   = "null compensation: the forward step never ran here; nothing to undo"
	reasonNoForward = "compensation of a refused forward step: nothing took effect; nothing to undo"
)

// The savepoint taken before the handler: rolling back to it undoes the business
// change and anything the handler enqueued, but keeps the inbox and barrier rows.
const (
	savepointSQL = `SAVEPOINT "sagabox_step"`
	rollbackSQL  = `ROLLBACK TO SAVEPOINT "sagabox_step"`
)

type barrier struct {
	insertSQL, selectSQL, finishSQL, deleteSQL, sweepSQL string
}

func newBarrier(schema string) *barrier {
	t := pgx.Identifier{schema, "saga_barrier"}.Sanitize()
	return &barrier{
		insertSQL: `INSERT INTO ` + t + ` ("saga_id", "step", "op", "outcome", "reason")
VALUES ($1, $2, $3, $4, $5) ON CONFLICT ("saga_id", "step", "op") DO NOTHING`,
		selectSQL: `SELECT "outcome", "reason", "result" FROM ` + t + ` WHERE "saga_id" = $1 AND "step" = $2 AND "op" = $3`,
		finishSQL: `UPDATE ` + t + ` SET "outcome" = $4, "reason" = $5, "result" = $6 WHERE "saga_id" = $1 AND "step" = $2 AND "op" = $3`,
		deleteSQL: `DELETE FROM ` + t + ` WHERE "saga_id" = $1 AND "step" = $2 AND "op" = $3`,
		sweepSQL:  `DELETE FROM ` + t + ` WHERE ctid IN (SELECT ctid FROM ` + t + ` WHERE "created_at" < $1 LIMIT $2)`,
	}
}

// run decides cmd through the barrier, calls h when it must, and returns the reply
// and a batch holding the barrier's last write, to be sent with the reply's outbox
// insert (one round trip). An error means tx is unusable.
//
// Round trips on the forward path: claim + savepoint, the handler's own, then the
// barrier update + reply.
func (b *barrier) run(ctx context.Context, tx pgx.Tx, cmd wire.Command, h Handler) (wire.Reply, *pgx.Batch, error) {
	claim := &pgx.Batch{}
	claim.Queue(b.insertSQL, cmd.SagaID, cmd.Step, string(cmd.Op), pending, "")
	if cmd.Op == wire.OpCompensate {
		// Claim the forward slot too: if it was free, the forward never ran (null
		// compensation) and any later forward is hanging. If the compensate row
		// already existed, so did the forward row, and this is a no-op.
		claim.Queue(b.insertSQL, cmd.SagaID, cmd.Step, string(wire.OpForward), string(wire.OutcomeIgnored), reasonHanging)
	}
	claim.Queue(savepointSQL)
	tags, err := sendBatch(ctx, tx, claim)
	if err != nil {
		return wire.Reply{}, nil, fmt.Errorf("participants: barrier claim (saga %s step %s %s): %w", cmd.SagaID, cmd.Step, cmd.Op, err)
	}
	if tags[0].RowsAffected() == 0 {
		reply, err := b.replay(ctx, tx, cmd)
		return reply, &pgx.Batch{}, err
	}
	if cmd.Op == wire.OpCompensate {
		if tags[1].RowsAffected() == 1 {
			return b.finish(cmd, wire.OutcomeSuccess, reasonNullCmp, nil)
		}
		fwd, _, _, err := b.get(ctx, tx, cmd, wire.OpForward)
		if err != nil {
			return wire.Reply{}, nil, err
		}
		if fwd != string(wire.OutcomeSuccess) {
			return b.finish(cmd, wire.OutcomeSuccess, reasonNoForward, nil)
		}
	}
	result, herr := h(ctx, tx, cmd)
	if herr == nil {
		return b.finish(cmd, wire.OutcomeSuccess, "", result)
	}
	if ctx.Err() != nil {
		// Shutting down: not the step's failure. Nothing commits; the record comes again.
		return wire.Reply{}, nil, fmt.Errorf("participants: saga %s step %s interrupted: %w", cmd.SagaID, cmd.Step, herr)
	}
	if _, err := tx.Exec(ctx, rollbackSQL); err != nil {
		return wire.Reply{}, nil, fmt.Errorf("participants: handler failed (%v) and rolling back its changes failed: %w", herr, err)
	}
	var fe *FailureError
	if errors.As(herr, &fe) && cmd.Op == wire.OpForward {
		return b.finish(cmd, wire.OutcomeFailure, fe.Reason, nil)
	}
	// Not recorded: the orchestrator's next attempt must run the handler again.
	forget := &pgx.Batch{}
	forget.Queue(b.deleteSQL, cmd.SagaID, cmd.Step, string(cmd.Op))
	if errors.As(herr, &fe) {
		return cmd.ReplyFor(wire.OutcomeFailure, fe.Reason, nil), forget, nil
	}
	return cmd.ReplyFor(wire.OutcomeRetryable, herr.Error(), nil), forget, nil
}

func (b *barrier) get(ctx context.Context, tx pgx.Tx, cmd wire.Command, op wire.Op) (outcome, reason string, result []byte, err error) {
	err = tx.QueryRow(ctx, b.selectSQL, cmd.SagaID, cmd.Step, string(op)).Scan(&outcome, &reason, &result)
	if err != nil {
		return "", "", nil, fmt.Errorf("participants: barrier read (saga %s step %s %s): %w", cmd.SagaID, cmd.Step, op, err)
	}
	return outcome, reason, result, nil
}

// finish records the decided outcome (queued, sent with the reply) and returns the reply.
func (b *barrier) finish(cmd wire.Command, outcome wire.Outcome, reason string, result []byte) (wire.Reply, *pgx.Batch, error) {
	batch := &pgx.Batch{}
	batch.Queue(b.finishSQL, cmd.SagaID, cmd.Step, string(cmd.Op), string(outcome), reason, result)
	return replyFor(cmd, outcome, reason, result), batch, nil
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

// sendBatch sends b in one round trip and returns each statement's command tag.
func sendBatch(ctx context.Context, tx pgx.Tx, b *pgx.Batch) ([]pgconn.CommandTag, error) {
	br := tx.SendBatch(ctx, b)
	tags := make([]pgconn.CommandTag, 0, b.Len())
	for range b.Len() {
		tag, err := br.Exec()
		if err != nil {
			_ = br.Close()
			return nil, err
		}
		tags = append(tags, tag)
	}
	return tags, br.Close()
}

// queue is an outbox.Execer that adds statements to a batch instead of running them,
// so the reply's insert travels with the barrier's last write.
type queue struct{ b *pgx.Batch }

func (q queue) Exec(_ context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	q.b.Queue(sql, args...)
	return pgconn.CommandTag{}, nil
}
