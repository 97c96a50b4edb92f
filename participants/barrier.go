package participants

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/sagabox/sagabox/inbox/consumer"
	"github.com/sagabox/sagabox/wire"
)

// Reasons replied (or stored) when the barrier, not the handler, decides.
const (
	reasonHanging   = "hanging: the step was compensated before this forward command arrived; not executed"
	reasonNullCmp   = "null compensation: the forward step never ran here; nothing to undo"
	reasonNoForward = "compensation of a refused forward step: nothing took effect; nothing to undo"
)

// The savepoint taken before the barrier claim: rolling back to it undoes the claim,
// the business change and anything the handler enqueued, but keeps the inbox row and
// the other records of a shared transaction. It is released once the step is decided,
// so a batch of records does not nest savepoints.
const (
	savepointSQL = `SAVEPOINT "sagabox_step"`
	rollbackSQL  = `ROLLBACK TO SAVEPOINT "sagabox_step"`
	releaseSQL   = `RELEASE SAVEPOINT "sagabox_step"`
)

type barrier struct {
	log                                       *slog.Logger
	insertSQL, selectSQL, resultSQL, sweepSQL string
}

func newBarrier(schema string, log *slog.Logger) *barrier {
	t := pgx.Identifier{schema, "saga_barrier"}.Sanitize()
	return &barrier{
		log: log,
		insertSQL: `INSERT INTO ` + t + ` ("saga_id", "step", "op", "outcome", "reason")
VALUES ($1, $2, $3, $4, $5) ON CONFLICT ("saga_id", "step", "op") DO NOTHING`,
		selectSQL: `SELECT "outcome", "reason", "result" FROM ` + t + ` WHERE "saga_id" = $1 AND "step" = $2 AND "op" = $3`,
		resultSQL: `UPDATE ` + t + ` SET "result" = $4 WHERE "saga_id" = $1 AND "step" = $2 AND "op" = $3`,
		// Rows of a saga the orchestrator (when it shares this schema) has not finished
		// are kept: a failed saga's operator Retry resumes its compensation, which needs
		// its forward rows to undo what ran.
		sweepSQL: `DELETE FROM ` + t + ` WHERE ctid IN (SELECT b.ctid FROM ` + t + ` b WHERE b."created_at" < $1
  AND NOT EXISTS (SELECT 1 FROM ` + pgx.Identifier{schema, "saga_instances"}.Sanitize() + ` s
                  WHERE s."id" = b."saga_id" AND s."status" NOT IN ('completed', 'compensated') AND s."aborted_at" IS NULL)
  LIMIT $2)`,
	}
}

// run decides cmd through the barrier, calls h when it must, and returns the reply and
// a batch holding the barrier's last writes, to be sent with the reply's outbox insert.
// An error means tx is unusable, or the handler hit a transient database error (a
// deadlock, a serialization failure, a lost connection): the consumer loop then
// retries the whole transaction, and no saga attempt is spent.
//
// Round trips: one to claim (savepoint + barrier row, which already says success),
// the handler's own, and one for the reply (with the result, the release of the
// savepoint, or the rollback to it and the refusal). A compensation reads the forward
// row in its claim; a duplicate reads the stored answer in one more.
func (b *barrier) run(ctx context.Context, tx pgx.Tx, cmd wire.Command, h Handler) (wire.Reply, *pgx.Batch, error) {
	claim := &pgx.Batch{}
	claim.Queue(savepointSQL)
	// Claimed as success: nothing is left to write on the common path. A refusal or
	// an error rolls the claim back with the handler's writes.
	claim.Queue(b.insertSQL, cmd.SagaID, cmd.Step, string(cmd.Op), string(wire.OutcomeSuccess), "")
	if cmd.Op == wire.OpCompensate {
		// Claim the forward slot too: if it was free, the forward never ran (null
		// compensation) and any later forward is hanging. If the compensate row
		// already existed, so did the forward row, and this is a no-op.
		claim.Queue(b.insertSQL, cmd.SagaID, cmd.Step, string(wire.OpForward), string(wire.OutcomeIgnored), reasonHanging)
		claim.Queue(b.selectSQL, cmd.SagaID, cmd.Step, string(wire.OpForward))
	}
	fwd, tags, err := sendClaim(ctx, tx, claim, cmd.Op == wire.OpCompensate)
	if err != nil {
		return wire.Reply{}, nil, fmt.Errorf("participants: barrier claim (saga %s step %s %s): %w", cmd.SagaID, cmd.Step, cmd.Op, err)
	}
	if tags[1].RowsAffected() == 0 {
		reply, err := b.replay(ctx, tx, cmd)
		return reply, released(), err
	}
	if cmd.Op == wire.OpCompensate {
		if tags[2].RowsAffected() == 1 {
			return b.decide(cmd, wire.OutcomeSuccess, reasonNullCmp)
		}
		if fwd != string(wire.OutcomeSuccess) {
			return b.decide(cmd, wire.OutcomeSuccess, reasonNoForward)
		}
	}
	result, herr := call(ctx, tx, cmd, h)
	if herr == nil {
		batch := released()
		if result != nil {
			batch.Queue(b.resultSQL, cmd.SagaID, cmd.Step, string(cmd.Op), result)
		}
		return replyFor(cmd, wire.OutcomeSuccess, "", result), batch, nil
	}
	if ctx.Err() != nil {
		// Shutting down: not the step's failure. Nothing commits; the record comes again.
		return wire.Reply{}, nil, fmt.Errorf("participants: saga %s step %s interrupted: %w", cmd.SagaID, cmd.Step, herr)
	}
	if tx.Conn().PgConn().TxStatus() == 'E' {
		// A failed statement aborted the transaction. pgx prepares a batch's new
		// statements before sending it, which an aborted transaction refuses, so roll
		// back to the savepoint first (the batch's own rollback then changes nothing).
		if _, err := tx.Exec(ctx, rollbackSQL); err != nil {
			return wire.Reply{}, nil, fmt.Errorf("participants: handler failed (%v) and rolling back its changes failed: %w", herr, err)
		}
	}
	var fe *FailureError
	var re *retryableError
	var pe *panicError
	switch {
	case errors.As(herr, &pe):
		if cmd.Op == wire.OpCompensate {
			// A compensation cannot be refused: dead-letter the command with the stack
			// (the orchestrator's retries then leave the saga failed for an operator).
			return wire.Reply{}, nil, consumer.Permanent(fmt.Errorf("participants: saga %s step %s %s: %w\n%s", cmd.SagaID, cmd.Step, cmd.Op, pe, pe.stack))
		}
		b.log.Error("participants: handler panicked; the step is refused", "saga_id", cmd.SagaID, "step", cmd.Step,
			"op", cmd.Op, "command", cmd.Name, "panic", fmt.Sprint(pe.value), "stack", string(pe.stack))
		return b.decide(cmd, wire.OutcomeFailure, pe.Error())
	case errors.As(herr, &fe):
		if cmd.Op == wire.OpForward {
			return b.decide(cmd, wire.OutcomeFailure, fe.Reason)
		}
		// Not recorded: the orchestrator's next attempt must run the compensation again.
		return cmd.ReplyFor(wire.OutcomeFailure, fe.Reason, nil), rolledBack(), nil
	case !errors.As(herr, &re) && consumer.IsTransient(herr):
		return wire.Reply{}, nil, fmt.Errorf("participants: saga %s step %s %s: %w", cmd.SagaID, cmd.Step, cmd.Op, herr)
	}
	// Not recorded: the orchestrator's next attempt must run the handler again.
	return cmd.ReplyFor(wire.OutcomeRetryable, herr.Error(), nil), rolledBack(), nil
}

// sendClaim sends the claim and returns its command tags and, for a compensation,
// the forward row's outcome.
func sendClaim(ctx context.Context, tx pgx.Tx, claim *pgx.Batch, compensate bool) (fwd string, tags []pgconn.CommandTag, err error) {
	br := tx.SendBatch(ctx, claim)
	defer func() {
		if cerr := br.Close(); err == nil {
			err = cerr
		}
	}()
	n := claim.Len()
	if compensate {
		n--
	}
	for range n {
		tag, err := br.Exec()
		if err != nil {
			return "", nil, err
		}
		tags = append(tags, tag)
	}
	if compensate {
		var reason string
		var result []byte
		if err := br.QueryRow().Scan(&fwd, &reason, &result); err != nil {
			return "", nil, err
		}
	}
	return fwd, tags, nil
}

// call runs h, turning a panic into an error that carries the stack.
func call(ctx context.Context, tx pgx.Tx, cmd wire.Command, h Handler) (result []byte, err error) {
	defer func() {
		if v := recover(); v != nil {
			result, err = nil, &panicError{value: v, stack: debug.Stack()}
		}
	}()
	return h(ctx, tx, cmd)
}

// panicError is a handler's panic: a permanent failure of that command.
type panicError struct {
	value any
	stack []byte
}

func (e *panicError) Error() string { return fmt.Sprintf("handler panicked: %v", e.value) }

// released ends the step's savepoint, keeping what the claim and the handler wrote.
func released() *pgx.Batch {
	b := &pgx.Batch{}
	b.Queue(releaseSQL)
	return b
}

// rolledBack undoes the claim and the handler's writes; the step stays undecided.
func rolledBack() *pgx.Batch {
	b := &pgx.Batch{}
	b.Queue(rollbackSQL)
	return b
}

// decide records an outcome other than the handler's success (queued, sent with the
// reply) and returns the reply: the claim and any handler writes are rolled back and
// the row is written again with the outcome and its reason.
func (b *barrier) decide(cmd wire.Command, outcome wire.Outcome, reason string) (wire.Reply, *pgx.Batch, error) {
	batch := rolledBack()
	batch.Queue(b.insertSQL, cmd.SagaID, cmd.Step, string(cmd.Op), string(outcome), reason)
	if cmd.Op == wire.OpCompensate && reason == reasonNullCmp {
		batch.Queue(b.insertSQL, cmd.SagaID, cmd.Step, string(wire.OpForward), string(wire.OutcomeIgnored), reasonHanging)
	}
	batch.Queue(releaseSQL)
	return replyFor(cmd, outcome, reason, nil), batch, nil
}

// replay answers a command whose barrier row exists: a duplicate gets the stored
// answer; a forward whose row was claimed by a compensation is hanging.
func (b *barrier) replay(ctx context.Context, tx pgx.Tx, cmd wire.Command) (wire.Reply, error) {
	var outcome, reason string
	var result []byte
	err := tx.QueryRow(ctx, b.selectSQL, cmd.SagaID, cmd.Step, string(cmd.Op)).Scan(&outcome, &reason, &result)
	if err != nil {
		return wire.Reply{}, fmt.Errorf("participants: barrier read (saga %s step %s %s): %w", cmd.SagaID, cmd.Step, cmd.Op, err)
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

// sendBatch sends b in one round trip.
func sendBatch(ctx context.Context, tx pgx.Tx, b *pgx.Batch) error {
	return tx.SendBatch(ctx, b).Close()
}

// queue is an outbox.Execer that adds statements to a batch instead of running them,
// so the reply's insert travels with the barrier's last write.
type queue struct{ b *pgx.Batch }

func (q queue) Exec(_ context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	q.b.Queue(sql, args...)
	return pgconn.CommandTag{}, nil
}
