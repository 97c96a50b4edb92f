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
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/sagabox/sagabox/inbox/consumer"
	"github.com/sagabox/sagabox/internal/pguuid"
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

// The barrier read runs with sequential scans off and a generic plan, both put back
// after. Its plan is cached per connection until saga_barrier is next analyzed; made
// while the table was a few pages (a new database, before autovacuum came by), it is a
// hash join over the whole table, which keeps growing: 0.42-0.58 ms per read in
// BenchmarkSagaLoad's baseline database against 0.10-0.23 in the others. And with the
// default plan_cache_mode its array parameters get it planned again at most runs (the
// generic plan's default estimate for an array looks dearer than a custom plan's):
// 1028 plans in 2124 reads in BenchmarkSagaLoad's no-op saga; with index scans only
// the generic plan is the custom one.
const (
	indexScansSQL = `SELECT set_config('sagabox.enable_seqscan', current_setting('enable_seqscan'), true), set_config('enable_seqscan', 'off', true),
    set_config('sagabox.plan_cache_mode', current_setting('plan_cache_mode'), true), set_config('plan_cache_mode', 'force_generic_plan', true)`
	scansAsBefore = `SELECT set_config('enable_seqscan', current_setting('sagabox.enable_seqscan'), true),
    set_config('plan_cache_mode', current_setting('sagabox.plan_cache_mode'), true)`
)

type barrier struct {
	log                            *slog.Logger
	selectSQL, insertSQL, sweepSQL string
}

func newBarrier(schema string, log *slog.Logger) *barrier {
	t := pgx.Identifier{schema, "saga_barrier"}.Sanitize()
	return &barrier{
		log: log,
		selectSQL: `SELECT b."saga_id", b."step", b."op", b."outcome", b."reason", b."result" FROM ` + t + ` b
WHERE (b."saga_id", b."step", b."op") IN (SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[]))`,
		// One statement writes the decided rows of every command of a transaction. A
		// row written meanwhile by another transaction fails it (unique violation,
		// see written): nothing of this one may commit then.
		insertSQL: `INSERT INTO ` + t + ` ("saga_id", "step", "op", "outcome", "reason", "result")
SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bytea[])`,
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
	// fwd is, for a compensation, the forward row's outcome.
	fwd   string
	reply wire.Reply
	took  time.Duration
}

type key struct {
	saga     uuid.UUID
	step, op string
}

// stored is a barrier row's decision.
type stored struct {
	outcome, reason string
	result          []byte
}

// keys are barrier rows as the statements' array arguments.
type keys struct {
	sagas      []pgtype.UUID // uuid.UUID would be encoded through its driver.Valuer (package pguuid)
	steps, ops []string
	outcomes   []string
	reasons    []string
	results    [][]byte
}

func (k *keys) add(saga uuid.UUID, step string, op wire.Op) {
	k.sagas, k.steps, k.ops = append(k.sagas, pguuid.Arg(saga)), append(k.steps, step), append(k.ops, string(op))
}

func (k *keys) addRow(saga uuid.UUID, step string, op wire.Op, outcome wire.Outcome, reason string, result []byte) {
	k.add(saga, step, op)
	k.outcomes, k.reasons, k.results = append(k.outcomes, string(outcome)), append(k.reasons, reason), append(k.results, result)
}

// run decides steps (commands of distinct (saga, step) pairs, in the order given)
// through the barrier, calls the handlers that must run, sets every step's reply and
// returns a batch holding the barrier's writes, to be sent with the replies' outbox
// insert. An error means tx is unusable, or a handler hit a transient database error
// (a deadlock, a serialization failure, a lost connection): the consumer loop then
// retries the whole transaction, and no saga attempt is spent.
//
// The rows are read first and written once decided, with the result: a row that
// exists means a duplicate (its stored answer is replied) or a hanging forward; a
// compensation that finds no forward row is a null compensation, and writes the
// forward row as ignored so a later forward is hanging. A row written meanwhile by a
// concurrent transaction (the same command redelivered elsewhere during a rebalance,
// or a forward racing its compensation) makes the write insert fewer rows than
// decided: that is a transient error, and the transaction runs again and reads it.
//
// Round trips, for any number of commands: one to read every barrier row (with the
// first handler's savepoint; under the consumer it travels with BEGIN), the handlers' own, one more before each later handler
// that runs a statement (to release the previous savepoint and take its own), and one
// for the writes and replies.
func (b *barrier) run(ctx context.Context, tx pgx.Tx, steps []*step, pre *readResult) (*pgx.Batch, error) {
	start := time.Now()
	var got map[key]stored
	if pre != nil {
		got = pre.got // read with BEGIN (Participant.prefetch), savepoint taken
	} else {
		var err error
		if got, err = b.read(ctx, tx, steps); err != nil {
			return nil, err
		}
	}
	read := time.Since(start)
	sp := &savepoints{ready: true}
	var rows keys
	for _, s := range steps {
		cmd := s.cmd
		if r, ok := got[key{cmd.SagaID, cmd.Step, string(cmd.Op)}]; ok {
			s.reply, s.took = replyFor(cmd, wire.Outcome(r.outcome), r.reason, r.result), read
			continue
		}
		if cmd.Op == wire.OpCompensate {
			fwd, ok := got[key{cmd.SagaID, cmd.Step, string(wire.OpForward)}]
			if !ok {
				rows.addRow(cmd.SagaID, cmd.Step, cmd.Op, wire.OutcomeSuccess, reasonNullCmp, nil)
				rows.addRow(cmd.SagaID, cmd.Step, wire.OpForward, wire.OutcomeIgnored, reasonHanging, nil)
				s.reply, s.took = replyFor(cmd, wire.OutcomeSuccess, reasonNullCmp, nil), read
				continue
			}
			s.fwd = fwd.outcome
		}
		t0 := time.Now()
		outcome, reason, result, record, err := b.decide(tx, s, sp)
		s.took = read + time.Since(t0)
		if err != nil {
			return nil, err
		}
		if record {
			rows.addRow(cmd.SagaID, cmd.Step, cmd.Op, outcome, reason, result)
		}
		s.reply = replyFor(cmd, outcome, reason, result)
	}
	batch := &pgx.Batch{}
	if sp.ready {
		sp.pending = append(sp.pending, releaseSQL)
	}
	for _, sql := range sp.pending {
		batch.Queue(sql)
	}
	if len(rows.sagas) > 0 {
		batch.Queue(b.insertSQL, rows.sagas, rows.steps, rows.ops, rows.outcomes, rows.reasons, rows.results)
	}
	return batch, nil
}

// written turns the unique violation of a barrier row written meanwhile by a
// concurrent transaction into a transient error: the consumer runs the transaction
// again, and it then reads the row.
func written(err error) error {
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == "23505" && pe.TableName == "saga_barrier" {
		return consumer.Transient(fmt.Errorf("participants: barrier row written meanwhile by a concurrent transaction: %w", err))
	}
	return err
}

// read returns the barrier rows of steps (and, for compensations, of their forward
// steps), and takes the first handler's savepoint, in one round trip.
func (b *barrier) read(ctx context.Context, tx pgx.Tx, steps []*step) (map[key]stored, error) {
	cmds := make([]wire.Command, len(steps))
	for i, s := range steps {
		cmds[i] = s.cmd
	}
	batch := &pgx.Batch{}
	r := b.queueRead(batch, cmds)
	err := tx.SendBatch(ctx, batch).Close()
	if err == nil {
		err = r.err
	}
	if err != nil {
		return nil, fmt.Errorf("participants: barrier read (%d commands, first saga %s step %s %s): %w",
			len(steps), steps[0].cmd.SagaID, steps[0].cmd.Step, steps[0].cmd.Op, err)
	}
	return r.got, nil
}

// readResult is a barrier read, filled in when its batch's results are read.
type readResult struct {
	got map[key]stored
	err error
}

// queueRead queues the barrier read of cmds (and, for compensations, of their
// forward steps) and the first handler's savepoint in batch.
func (b *barrier) queueRead(batch *pgx.Batch, cmds []wire.Command) *readResult {
	var k keys
	for _, c := range cmds {
		k.add(c.SagaID, c.Step, c.Op)
		if c.Op == wire.OpCompensate {
			k.add(c.SagaID, c.Step, wire.OpForward)
		}
	}
	r := &readResult{}
	batch.Queue(indexScansSQL)
	batch.Queue(b.selectSQL, k.sagas, k.steps, k.ops).Query(func(rows pgx.Rows) error {
		r.got, r.err = scanStored(rows)
		return r.err
	})
	batch.Queue(scansAsBefore)
	batch.Queue(savepointSQL)
	return r
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
	if cmd.Op == wire.OpCompensate && s.fwd != string(wire.OutcomeSuccess) {
		return wire.OutcomeSuccess, reasonNoForward, nil, true, nil
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
