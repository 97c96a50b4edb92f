package participants

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"time"

	"github.com/google/uuid"
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

// The savepoint taken before each handler: rolling back to it undoes the business
// change and anything the handler enqueued, but keeps the barrier claims, the inbox
// rows and the other commands of a shared transaction. It is released once the step
// is decided, so the steps of a batch do not nest savepoints. The first is taken with
// the claim; the others are sent before their handler's first statement (stepTx), so
// a handler that runs none needs none.
const (
	savepointSQL = `SAVEPOINT "sagabox_step"`
	rollbackSQL  = `ROLLBACK TO SAVEPOINT "sagabox_step"`
	releaseSQL   = `RELEASE SAVEPOINT "sagabox_step"`
)

type barrier struct {
	log                                                 *slog.Logger
	claimSQL, selectSQL, updateSQL, deleteSQL, sweepSQL string
}

func newBarrier(schema string, log *slog.Logger) *barrier {
	t := pgx.Identifier{schema, "saga_barrier"}.Sanitize()
	return &barrier{
		log: log,
		// One statement claims the rows of every command of a transaction (and, for a
		// compensation, its forward slot).
		claimSQL: `INSERT INTO ` + t + ` ("saga_id", "step", "op", "outcome", "reason")
SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[])
ON CONFLICT ("saga_id", "step", "op") DO NOTHING RETURNING "saga_id", "step", "op"`,
		selectSQL: `SELECT b."saga_id", b."step", b."op", b."outcome", b."reason", b."result" FROM ` + t + ` b
WHERE (b."saga_id", b."step", b."op") IN (SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[]))`,
		updateSQL: `UPDATE ` + t + ` b SET "outcome" = k."outcome", "reason" = k."reason", "result" = k."result"
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bytea[]) AS k("saga_id", "step", "op", "outcome", "reason", "result")
WHERE b."saga_id" = k."saga_id" AND b."step" = k."step" AND b."op" = k."op"`,
		deleteSQL: `DELETE FROM ` + t + ` b USING unnest($1::uuid[], $2::text[], $3::text[]) AS k("saga_id", "step", "op")
WHERE b."saga_id" = k."saga_id" AND b."step" = k."step" AND b."op" = k."op"`,
		// Rows of a saga the orchestrator (when it shares this schema) has not finished
		// are kept: a failed saga's operator Retry resumes its compensation, which needs
		// its forward rows to undo what ran.
		sweepSQL: `DELETE FROM ` + t + ` WHERE ctid IN (SELECT b.ctid FROM ` + t + ` b WHERE b."created_at" < $1
  AND NOT EXISTS (SELECT 1 FROM ` + pgx.Identifier{schema, "saga_instances"}.Sanitize() + ` s
                  WHERE s."id" = b."saga_id" AND s."status" NOT IN ('completed', 'compensated') AND s."aborted_at" IS NULL)
  LIMIT $2)`,
	}
}

// step is one command on its way through the barrier.
type step struct {
	cmd wire.Command
	h   Handler
	// ctx is the command's context (its trace span); end, if not nil, ends it.
	ctx context.Context
	end func(error)
	// fresh: the claim inserted the command's row (as success, no reason).
	fresh bool
	// nullCmp: a compensation whose claim inserted the forward row too: the forward
	// never ran here. fwd is the forward row's outcome otherwise.
	nullCmp bool
	fwd     string
	reply   wire.Reply
	took    time.Duration
}

type key struct {
	saga     uuid.UUID
	step, op string
}

func (s *step) key() key { return key{s.cmd.SagaID, s.cmd.Step, string(s.cmd.Op)} }

// stored is a barrier row's decision.
type stored struct {
	outcome, reason string
	result          []byte
}

// keys are barrier rows as the statements' array arguments.
type keys struct {
	sagas      []uuid.UUID
	steps, ops []string
	outcomes   []string
	reasons    []string
	results    [][]byte
}

func (k *keys) add(saga uuid.UUID, step string, op wire.Op) {
	k.sagas, k.steps, k.ops = append(k.sagas, saga), append(k.steps, step), append(k.ops, string(op))
}

func (k *keys) addRow(saga uuid.UUID, step string, op wire.Op, outcome wire.Outcome, reason string, result []byte) {
	k.add(saga, step, op)
	k.outcomes, k.reasons, k.results = append(k.outcomes, string(outcome)), append(k.reasons, reason), append(k.results, result)
}

// run decides steps (commands of distinct (saga, step) pairs, in the order given)
// through the barrier, calls the handlers that must run, sets every step's reply and
// returns a batch holding the barrier's last writes, to be sent with the replies'
// outbox insert. An error means tx is unusable, or a handler hit a transient database
// error (a deadlock, a serialization failure, a lost connection): the consumer loop
// then retries the whole transaction, and no saga attempt is spent.
//
// Round trips, for any number of commands: one to claim every barrier row (which
// already says success; a compensation reads its forward row in the same one, and the
// first handler's savepoint is taken in it too), the handlers' own, one more before
// each later handler that runs a statement (to release the previous savepoint and
// take its own), and one for the replies (with the results, refusals and release).
// Duplicates read their stored answers in one more.
func (b *barrier) run(ctx context.Context, tx pgx.Tx, steps []*step) (*pgx.Batch, error) {
	start := time.Now()
	if err := b.claim(ctx, tx, steps); err != nil {
		return nil, err
	}
	if err := b.replay(ctx, tx, steps); err != nil {
		return nil, err
	}
	claimed := time.Since(start)
	sp := &savepoints{ready: true}
	var writes, deletes keys
	for _, s := range steps {
		if !s.fresh {
			s.took = claimed
			continue
		}
		t0 := time.Now()
		outcome, reason, result, record, err := b.decide(tx, s, sp)
		s.took = claimed + time.Since(t0)
		if err != nil {
			return nil, err
		}
		switch {
		case !record:
			deletes.add(s.cmd.SagaID, s.cmd.Step, s.cmd.Op)
		case outcome != wire.OutcomeSuccess || reason != "" || result != nil:
			writes.addRow(s.cmd.SagaID, s.cmd.Step, s.cmd.Op, outcome, reason, result)
		}
		s.reply = replyFor(s.cmd, outcome, reason, result)
	}
	batch := &pgx.Batch{}
	if sp.ready {
		sp.pending = append(sp.pending, releaseSQL)
	}
	for _, sql := range sp.pending {
		batch.Queue(sql)
	}
	if len(writes.sagas) > 0 {
		batch.Queue(b.updateSQL, writes.sagas, writes.steps, writes.ops, writes.outcomes, writes.reasons, writes.results)
	}
	if len(deletes.sagas) > 0 {
		batch.Queue(b.deleteSQL, deletes.sagas, deletes.steps, deletes.ops)
	}
	return batch, nil
}

// claim inserts every command's barrier row as success, and for a compensation the
// forward row as ignored (hanging), in one statement: a forward slot that was free
// means the forward never ran (null compensation) and any later forward is hanging.
// The forward rows of the other compensations are read in the same round trip, and
// the first handler's savepoint is taken.
func (b *barrier) claim(ctx context.Context, tx pgx.Tx, steps []*step) error {
	var rows, fwd keys
	for _, s := range steps {
		rows.addRow(s.cmd.SagaID, s.cmd.Step, s.cmd.Op, wire.OutcomeSuccess, "", nil)
		if s.cmd.Op == wire.OpCompensate {
			rows.addRow(s.cmd.SagaID, s.cmd.Step, wire.OpForward, wire.OutcomeIgnored, reasonHanging, nil)
			fwd.add(s.cmd.SagaID, s.cmd.Step, wire.OpForward)
		}
	}
	batch := &pgx.Batch{}
	batch.Queue(b.claimSQL, rows.sagas, rows.steps, rows.ops, rows.outcomes, rows.reasons)
	if len(fwd.sagas) > 0 {
		batch.Queue(b.selectSQL, fwd.sagas, fwd.steps, fwd.ops)
	}
	batch.Queue(savepointSQL)
	br := tx.SendBatch(ctx, batch)
	inserted, err := collectKeys(br)
	var fwds map[key]stored
	if err == nil && len(fwd.sagas) > 0 {
		fwds, err = collectStored(br)
	}
	if err == nil {
		_, err = br.Exec()
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("participants: barrier claim (%d commands, first saga %s step %s %s): %w",
			len(steps), steps[0].cmd.SagaID, steps[0].cmd.Step, steps[0].cmd.Op, err)
	}
	for _, s := range steps {
		s.fresh = inserted[s.key()]
		if s.cmd.Op == wire.OpCompensate {
			k := key{s.cmd.SagaID, s.cmd.Step, string(wire.OpForward)}
			s.nullCmp, s.fwd = inserted[k], fwds[k].outcome
		}
	}
	return nil
}

// replay gives the commands whose barrier row existed their stored answer, read in
// one round trip: a duplicate gets the stored outcome; a forward whose row was
// claimed by a compensation is hanging.
func (b *barrier) replay(ctx context.Context, tx pgx.Tx, steps []*step) error {
	var dup keys
	for _, s := range steps {
		if !s.fresh {
			dup.add(s.cmd.SagaID, s.cmd.Step, s.cmd.Op)
		}
	}
	if len(dup.sagas) == 0 {
		return nil
	}
	rows, err := tx.Query(ctx, b.selectSQL, dup.sagas, dup.steps, dup.ops)
	var got map[key]stored
	if err == nil {
		got, err = scanStored(rows)
	}
	if err != nil {
		return fmt.Errorf("participants: barrier read (%d commands, first saga %s step %s %s): %w", len(dup.sagas), dup.sagas[0], dup.steps[0], dup.ops[0], err)
	}
	for _, s := range steps {
		if !s.fresh {
			r, ok := got[s.key()]
			if !ok {
				return fmt.Errorf("participants: barrier row of saga %s step %s %s vanished", s.cmd.SagaID, s.cmd.Step, s.cmd.Op)
			}
			s.reply = replyFor(s.cmd, wire.Outcome(r.outcome), r.reason, r.result)
		}
	}
	return nil
}

func collectKeys(br pgx.BatchResults) (map[key]bool, error) {
	rows, err := br.Query()
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[key]bool{}
	for rows.Next() {
		var k key
		if err := rows.Scan(&k.saga, &k.step, &k.op); err != nil {
			return nil, err
		}
		out[k] = true
	}
	return out, rows.Err()
}

func collectStored(br pgx.BatchResults) (map[key]stored, error) {
	rows, err := br.Query()
	if err != nil {
		return nil, err
	}
	return scanStored(rows)
}

func scanStored(rows pgx.Rows) (map[key]stored, error) {
	defer rows.Close()
	out := map[key]stored{}
	for rows.Next() {
		var k key
		var s stored
		if err := rows.Scan(&k.saga, &k.step, &k.op, &s.outcome, &s.reason, &s.result); err != nil {
			return nil, err
		}
		out[k] = s
	}
	return out, rows.Err()
}

// savepoints is the step savepoint's state across the steps of one transaction.
type savepoints struct {
	// pending are the statements to send before the next handler's first one.
	pending []string
	// ready: a savepoint exists and nothing was written since it was taken.
	ready bool
}

// decide runs a fresh step: the barrier's own decisions for compensations, else the
// handler behind its savepoint. It returns what to reply and whether to keep the
// claimed row (with outcome, reason and result); a step not recorded runs afresh
// on the orchestrator's next attempt.
func (b *barrier) decide(tx pgx.Tx, s *step, sp *savepoints) (outcome wire.Outcome, reason string, result []byte, record bool, err error) {
	cmd := s.cmd
	if cmd.Op == wire.OpCompensate {
		if s.nullCmp {
			return wire.OutcomeSuccess, reasonNullCmp, nil, true, nil
		}
		if s.fwd != string(wire.OutcomeSuccess) {
			return wire.OutcomeSuccess, reasonNoForward, nil, true, nil
		}
	}
	ready := sp.ready
	if !ready {
		sp.pending = append(sp.pending, savepointSQL)
	}
	st := &stepTx{Tx: tx, ctx: s.ctx, pending: &sp.pending}
	result, herr := call(s.ctx, st, cmd, s.h)
	if s.end != nil {
		s.end(herr)
	}
	if !st.used {
		if !ready {
			sp.pending = sp.pending[:len(sp.pending)-1] // nothing ran: no savepoint needed
		}
	} else {
		sp.ready = false
	}
	if herr == nil {
		if st.used {
			sp.pending = append(sp.pending, releaseSQL)
		}
		return wire.OutcomeSuccess, "", result, true, nil
	}
	if s.ctx.Err() != nil {
		// Shutting down: not the step's failure. Nothing commits; the record comes again.
		return "", "", nil, false, fmt.Errorf("participants: saga %s step %s interrupted: %w", cmd.SagaID, cmd.Step, herr)
	}
	var fe *FailureError
	var re *retryableError
	var pe *panicError
	isPanic, isFailure := errors.As(herr, &pe), errors.As(herr, &fe)
	switch {
	case isPanic && cmd.Op == wire.OpCompensate:
		// A compensation cannot be refused: dead-letter the command with the stack
		// (the orchestrator's retries then leave the saga failed for an operator).
		return "", "", nil, false, consumer.Permanent(fmt.Errorf("participants: saga %s step %s %s: %w\n%s", cmd.SagaID, cmd.Step, cmd.Op, pe, pe.stack))
	case !isPanic && !isFailure && !errors.As(herr, &re) && consumer.IsTransient(herr):
		return "", "", nil, false, fmt.Errorf("participants: saga %s step %s %s: %w", cmd.SagaID, cmd.Step, cmd.Op, herr)
	}
	if st.used {
		if tx.Conn().PgConn().TxStatus() == 'E' {
			// A failed statement aborted the transaction. pgx prepares a batch's new
			// statements before sending it, which an aborted transaction refuses, so
			// roll back to the savepoint now.
			if _, err := tx.Exec(s.ctx, rollbackSQL); err != nil {
				return "", "", nil, false, fmt.Errorf("participants: handler failed (%v) and rolling back its changes failed: %w", herr, err)
			}
		} else {
			sp.pending = append(sp.pending, rollbackSQL)
		}
		sp.pending = append(sp.pending, releaseSQL)
	}
	switch {
	case isPanic:
		b.log.Error("participants: handler panicked; the step is refused", "saga_id", cmd.SagaID, "step", cmd.Step,
			"op", cmd.Op, "command", cmd.Name, "panic", fmt.Sprint(pe.value), "stack", string(pe.stack))
		return wire.OutcomeFailure, pe.Error(), nil, true, nil
	case isFailure:
		// A refused compensation is not recorded: the orchestrator's next attempt must
		// run it again.
		return wire.OutcomeFailure, fe.Reason, nil, cmd.Op == wire.OpForward, nil
	}
	// Not recorded: the orchestrator's next attempt must run the handler again.
	return wire.OutcomeRetryable, herr.Error(), nil, false, nil
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

// replyFor keeps informational reasons out of success replies (wire: "empty on success").
func replyFor(cmd wire.Command, outcome wire.Outcome, reason string, result []byte) wire.Reply {
	if outcome == wire.OutcomeSuccess {
		reason = ""
	}
	return cmd.ReplyFor(outcome, reason, result)
}

// queue is an outbox.Execer that adds statements to a batch instead of running them,
// so the replies' insert travels with the barrier's last writes.
type queue struct{ b *pgx.Batch }

func (q queue) Exec(_ context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	q.b.Queue(sql, args...)
	return pgconn.CommandTag{}, nil
}
