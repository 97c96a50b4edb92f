package sagastate

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/sagabox/sagabox/inbox/consumer"
	"github.com/sagabox/sagabox/internal/pguuid"
	"github.com/sagabox/sagabox/internal/sqlfile"
	"github.com/sagabox/sagabox/outbox"
	"github.com/sagabox/sagabox/wire"
)

// DB is what the orchestrator needs of a transaction (pgx.Tx) or a pool.
type DB interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
}

// Every statement on the saga tables lives in sagastate.sql, by name.
//
//go:embed sagastate.sql
var statementsFile string

var statements = sqlfile.Parse(statementsFile)

// queries holds sagastate.sql's statements for one schema.
type queries map[string]string

func newQueries(schema string) queries {
	q := make(queries, len(statements))
	prefix := pgx.Identifier{schema}.Sanitize() + "."
	for name, s := range statements {
		q[name] = strings.ReplaceAll(s, `"sagabox".`, prefix)
	}
	return q
}

func (q queries) sql(name string) string {
	s, ok := q[name]
	if !ok {
		panic("sagastate: no statement " + name + " in sagastate.sql")
	}
	return s
}

func ts(t time.Time) pgtype.Timestamptz {
	return pgtype.Timestamptz{Time: t, Valid: !t.IsZero()}
}

func fromTS(t pgtype.Timestamptz) time.Time {
	if !t.Valid {
		return time.Time{}
	}
	return t.Time
}

// scanInstance reads the instance columns and the clock column of sagastate.sql's
// instance queries, and then the columns extra (lock_instances' xmin).
func scanInstance(row pgx.Row, extra ...any) (Instance, time.Time, error) {
	var s Instance
	var status string
	var wake, fin, ab pgtype.Timestamptz
	var now time.Time
	err := row.Scan(append([]any{&s.ID, &s.Type, &status, &s.Payload, &s.Version, &s.LastError, &wake, &s.CreatedAt, &s.UpdatedAt, &fin, &ab, &now}, extra...)...)
	s.Status, s.WakeAt, s.FinishedAt, s.AbortedAt = SagaStatus(status), fromTS(wake), fromTS(fin), fromTS(ab)
	return s, now, err
}

func scanStep(row pgx.CollectableRow) (uuid.UUID, StepState, error) {
	var st StepState
	var sagaID uuid.UUID
	var timeoutMS int64
	var retry, undoRetry []byte
	var status, op string
	var deadline, next, started, finished pgtype.Timestamptz
	err := row.Scan(&sagaID, &st.Name, &st.Position, &st.Stage, &st.Topic, &st.Do, &st.Undo, &timeoutMS, &retry, &undoRetry,
		&status, &op, &st.Attempt, &st.AttemptBase, &deadline, &next, &st.MustUndo, &st.DoneSeq, &st.Input, &st.Result,
		&st.LastError, &started, &finished)
	if err != nil {
		return sagaID, st, err
	}
	st.Timeout = time.Duration(timeoutMS) * time.Millisecond
	st.Status, st.Op = StepStatus(status), wire.Op(op)
	st.Deadline, st.NextAttemptAt, st.StartedAt, st.FinishedAt = fromTS(deadline), fromTS(next), fromTS(started), fromTS(finished)
	if err := json.Unmarshal(retry, &st.Retry); err != nil {
		return sagaID, st, fmt.Errorf("retry policy of step %s: %w", st.Name, err)
	}
	if err := json.Unmarshal(undoRetry, &st.UndoRetry); err != nil {
		return sagaID, st, fmt.Errorf("undo retry policy of step %s: %w", st.Name, err)
	}
	return sagaID, st, nil
}

// load reads sagas ids with their steps, locked (FOR UPDATE, in id order) when lock is
// set, and the clock to compute with (clock, or the database's when clock is zero). The
// steps are read after the row locks are granted, so (read committed) they are the
// latest committed. With lock, steps are taken from cache where the locked row is the
// version cached: the steps of the others are read in the same round trip, and those of
// cached sagas another writer changed in one more. An id without a saga is an ErrNotFound.
func (q queries) load(ctx context.Context, db DB, ids []uuid.UUID, lock bool, clock time.Time, cache *stepCache) (map[uuid.UUID]*Instance, time.Time, error) {
	batch := &pgx.Batch{}
	l := q.queueLoad(batch, ids, lock, clock, cache, true)
	if err := db.SendBatch(ctx, batch).Close(); err != nil && l.err == nil {
		l.err = err
	}
	return q.finishLoad(ctx, db, l, ids)
}

// loading is a load queued in a batch (queueLoad), filled in as the batch's results
// are read, and completed by finishLoad.
type loading struct {
	ids   []uuid.UUID
	lock  bool
	clock time.Time
	cache *stepCache
	read  []uuid.UUID // the sagas whose steps are read with the instances
	sagas map[uuid.UUID]*Instance
	now   time.Time
	stale []uuid.UUID // cached, but the row is not the version cached
	// xid is the transaction's own id (with lock): the xmin of the rows it writes
	// outside a savepoint.
	xid uint32
	err error
}

// queueLoad queues load's first round trip in batch. Unless restore is set, the
// statements after it in the transaction keep to index scans and generic plans (see
// plan_settings):
// for a transaction that runs only the orchestrator's statements until it commits.
func (q queries) queueLoad(batch *pgx.Batch, ids []uuid.UUID, lock bool, clock time.Time, cache *stepCache, restore bool) *loading {
	l := &loading{ids: ids, lock: lock, clock: clock, cache: cache, read: ids, sagas: make(map[uuid.UUID]*Instance, len(ids))}
	if !lock {
		l.cache = nil
	}
	if l.cache != nil {
		l.read = nil
		for _, id := range ids {
			if !l.cache.has(id) {
				l.read = append(l.read, id)
			}
		}
	}
	if lock {
		batch.Queue(q.sql("plan_settings"))
		batch.Queue(q.sql("lock_instances"), pguuid.Array(ids), ts(clock)).Query(l.scanInstances)
	} else {
		batch.Queue(q.sql("select_instance"), pguuid.Arg(ids[0]), ts(clock)).Query(l.scanInstances)
	}
	if len(l.read) > 0 {
		batch.Queue(q.sql("select_steps"), pguuid.Array(l.read)).Query(func(rows pgx.Rows) error {
			if l.err == nil {
				l.err = readSteps(rows, l.sagas)
			}
			return l.err
		})
	}
	if lock && restore {
		batch.Queue(q.sql("plan_settings_as_before"))
	}
	return l
}

// covers reports whether l was queued for every saga of ids.
func (l *loading) covers(ids []uuid.UUID) bool {
	for _, id := range ids {
		if !slices.Contains(l.ids, id) {
			return false
		}
	}
	return true
}

// scanInstances reads the rows of lock_instances or select_instance.
func (l *loading) scanInstances(rows pgx.Rows) error {
	defer rows.Close()
	for rows.Next() {
		var xmin uint32
		var extra []any
		if l.lock {
			extra = []any{&xmin, &l.xid}
		}
		s, t, err := scanInstance(rows, extra...)
		if err != nil {
			l.err = err
			return err
		}
		if l.cache != nil && !slices.Contains(l.read, s.ID) {
			if steps, ok := l.cache.get(s.ID, s.Version, xmin); ok {
				s.Steps = slices.Clone(steps)
			} else {
				l.cache.forget(s.ID)
				l.stale = append(l.stale, s.ID)
			}
		}
		l.sagas[s.ID], l.now = &s, t
	}
	l.err = rows.Err()
	return l.err
}

// finishLoad returns the sagas ids of l (a subset of those queued), once its batch
// was read, and the clock to compute with; it reads in one more round trip the steps
// of cached sagas another writer changed.
func (q queries) finishLoad(ctx context.Context, db DB, l *loading, ids []uuid.UUID) (map[uuid.UUID]*Instance, time.Time, error) {
	what := func() string {
		if len(ids) == 1 {
			return "saga " + ids[0].String()
		}
		return fmt.Sprintf("%d sagas", len(ids))
	}
	if l.err != nil {
		return nil, l.clock, fmt.Errorf("sagastate: load %s: %w", what(), l.err)
	}
	for _, id := range ids {
		if l.sagas[id] == nil {
			return nil, l.clock, fmt.Errorf("%w: %s", ErrNotFound, id)
		}
	}
	if len(l.stale) > 0 {
		rows, err := db.Query(ctx, q.sql("select_steps"), pguuid.Array(l.stale))
		if err == nil {
			err = readSteps(rows, l.sagas)
		}
		if err != nil {
			return nil, l.clock, fmt.Errorf("sagastate: load steps of %s: %w", what(), err)
		}
		l.stale = nil
	}
	return l.sagas, l.now, nil
}

// readSteps reads the rows of select_steps into sagas.
func readSteps(rows pgx.Rows, sagas map[uuid.UUID]*Instance) error {
	type owned struct {
		saga uuid.UUID
		step StepState
	}
	steps, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (owned, error) {
		id, st, err := scanStep(row)
		return owned{id, st}, err
	})
	if err != nil {
		return err
	}
	for _, o := range steps {
		if s := sagas[o.saga]; s != nil {
			s.Steps = append(s.Steps, o.step)
		}
	}
	return nil
}

// start writes new saga c, whose first transition was computed at the reference time
// c.res.state.CreatedAt, in one round trip: the instance row, its steps and its log in
// one statement (start_saga), which moves their times to the start time (clock, or the
// database's when clock is zero), and its commands. The commands are validated before
// anything is sent. A duplicate id writes no saga, and the commands sent with it are
// taken back (unsend_commands): the transaction is left as it was. Once written, c's
// state and events carry the start time, and cache (if not nil) remembers the steps.
func (q queries) start(ctx context.Context, db DB, out *outbox.Writer, replyTo string, c *change, clock time.Time, cache *stepCache) error {
	s := &c.res.state
	ref := s.CreatedAt
	steps := make([]ownedStep, len(s.Steps))
	for i, st := range s.Steps {
		steps[i] = ownedStep{s.ID, st}
	}
	args := append([]any{ts(clock), ref, pguuid.Arg(s.ID), s.Type, string(s.Status), string(s.Payload), s.LastError,
		ts(s.WakeAt), ref, s.UpdatedAt, ts(s.FinishedAt)}, newStepArgs(steps)[1:]...)
	args = append(args, eventArgs(c.res.events)[1:]...)
	var created time.Time
	var xmin uint32
	inserted := false
	w := &pipeline{batch: &pgx.Batch{}}
	w.queueRows(func(rows pgx.Rows) error {
		_, err := pgx.ForEachRow(rows, []any{&created, &xmin}, func() error { inserted = true; return nil })
		return err
	}, q.sql("start_saga"), args...)
	msgs := commandMessages(c, replyTo)
	if err := out.Enqueue(ctx, w, msgs...); err != nil {
		return fmt.Errorf("sagastate: enqueue commands of saga %s: %w", s.ID, err)
	}
	if err := w.run(ctx, db); err != nil {
		return fmt.Errorf("sagastate: insert saga %s: %w", s.ID, err)
	}
	if !inserted {
		if len(msgs) > 0 {
			ids := make([]pgtype.UUID, len(msgs))
			for i, m := range msgs {
				ids[i] = pguuid.Arg(m.ID) // set by Enqueue
			}
			if _, err := db.Exec(ctx, q.sql("unsend_commands"), ids); err != nil {
				return fmt.Errorf("sagastate: take back the commands of duplicate saga %s: %w", s.ID, err)
			}
		}
		return fmt.Errorf("%w: %s; pick a new id, or treat the saga as started", ErrDuplicate, s.ID)
	}
	c.res.shift(created.Sub(ref))
	s.Version = 1
	if cache != nil {
		cache.put(s, xmin)
	}
	return nil
}

// shift moves every time of r's state and events by d.
func (r *result) shift(d time.Duration) {
	if d == 0 {
		return
	}
	move := func(t *time.Time) {
		if !t.IsZero() {
			*t = t.Add(d)
		}
	}
	s := &r.state
	for _, t := range []*time.Time{&s.WakeAt, &s.CreatedAt, &s.UpdatedAt, &s.FinishedAt, &s.AbortedAt} {
		move(t)
	}
	for i := range s.Steps {
		st := &s.Steps[i]
		for _, t := range []*time.Time{&st.Deadline, &st.NextAttemptAt, &st.StartedAt, &st.FinishedAt} {
			move(t)
		}
	}
	for i := range r.events {
		move(&r.events[i].At)
	}
}

// commandMessages are c's commands as outbox messages, replies to replyTo.
func commandMessages(c *change, replyTo string) []outbox.Message {
	var msgs []outbox.Message
	for _, cmd := range c.res.commands {
		cmd.Cmd.ReplyTo, cmd.Cmd.Headers = replyTo, c.headers
		msgs = append(msgs, cmd.Cmd.Message(cmd.Topic))
	}
	return msgs
}

// change is the outcome of one or more transitions of one saga in a transaction: prev
// as it was read (Version 0 for a saga being started), res accumulated from every
// transition.
type change struct {
	prev    *Instance
	res     result
	headers map[string]string // trace context for the commands
}

// write queues every change's state, steps, log and commands into one pipeline: one
// round trip and one statement per table whatever the number of sagas. Once it went
// through, cache (if not nil) remembers the steps written.
//
// With pre (the load of the changed sagas, done with the BEGIN of a reply consumer's
// transaction that only the orchestrator writes in), the pipeline goes with the
// consumer's COMMIT instead (consumer.QueueAtCommit), and the steps are remembered at
// once with pre.xid, the xmin the rows get if it commits (if not, the rows keep
// theirs, which the cache entry then never matches). A saga no longer at the version
// read then fails the commit with a transient ErrConcurrentUpdate: it cannot happen
// while pre's row locks hold, and the consumer runs the transaction again if it does.
func (q queries) write(ctx context.Context, db DB, out *outbox.Writer, replyTo string, changes []*change, cache *stepCache, pre *loading) error {
	var updated []*Instance
	var versions []int64
	var changedSteps []ownedStep
	var events []Event
	var msgs []outbox.Message
	for _, c := range changes {
		s := &c.res.state
		updated, versions = append(updated, s), append(versions, c.prev.Version)
		for i, st := range s.Steps {
			if i >= len(c.prev.Steps) || !reflect.DeepEqual(c.prev.Steps[i], st) {
				changedSteps = append(changedSteps, ownedStep{s.ID, st})
			}
		}
		s.Version = c.prev.Version + 1
		events = append(events, c.res.events...)
		msgs = append(msgs, commandMessages(c, replyTo)...)
	}
	what := "saga " + changes[0].res.state.ID.String()
	if len(changes) > 1 {
		what = fmt.Sprintf("%d sagas", len(changes))
	}
	w := &pipeline{batch: &pgx.Batch{}}
	// For write_sagas' updates. With pre the load set it for the rest of the
	// transaction already (queueLoad without restore).
	if pre == nil {
		w.queue(nil, q.sql("plan_settings"))
	}
	xmins := make(map[uuid.UUID]uint32, len(updated))
	n := len(updated)
	w.queueRows(func(rows pgx.Rows) error {
		var id uuid.UUID
		var xmin uint32
		_, err := pgx.ForEachRow(rows, []any{&id, &xmin}, func() error { xmins[id] = xmin; return nil })
		if err == nil && len(xmins) != n {
			err = fmt.Errorf("%w: %s: %d of %d deleted since they were read", ErrConcurrentUpdate, what, n-len(xmins), n)
		}
		return err
	}, q.sql("write_sagas"), append(append(instanceArgs(updated, versions), changedStepArgs(changedSteps)...), eventArgs(events)...)...)
	if pre == nil { // the commit resets it
		w.queue(nil, q.sql("plan_settings_as_before"))
	}
	if len(msgs) > 0 {
		if err := out.Enqueue(ctx, w, msgs...); err != nil {
			return fmt.Errorf("sagastate: enqueue commands of %s: %w", what, err)
		}
	}
	if pre != nil && consumer.QueueAtCommit(ctx, w.batch, func(err error) error {
		return concurrentUpdate(fmt.Errorf("sagastate: write %s: %w", what, err), true)
	}) {
		for _, s := range updated {
			xmins[s.ID] = pre.xid
		}
	} else if err := w.run(ctx, db); err != nil {
		return concurrentUpdate(fmt.Errorf("sagastate: write %s: %w", what, err), false)
	}
	if cache != nil {
		for _, c := range changes {
			s := &c.res.state
			if x, ok := xmins[s.ID]; ok {
				cache.put(s, x)
			} else {
				cache.forget(s.ID)
			}
		}
	}
	return nil
}

// concurrentUpdate marks err as ErrConcurrentUpdate when write_sagas refused a
// saga no longer at the version read (its NULL "version"), and as transient too when
// the consumer is to run the transaction again.
func concurrentUpdate(err error, transient bool) error {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "23502" || pe.TableName != "saga_instances" || pe.ColumnName != "version" {
		return err
	}
	err = fmt.Errorf("%w: %w", ErrConcurrentUpdate, err)
	if transient {
		return consumer.Transient(err)
	}
	return err
}

type ownedStep struct {
	saga uuid.UUID
	StepState
}

// pipeline collects statements to send in one round trip; it is also the
// outbox.Execer the commands are enqueued through.
type pipeline struct {
	batch  *pgx.Batch
	checks []func(pgconn.CommandTag) error
	reads  []func(pgx.Rows) error // for statements that return rows
}

func (p *pipeline) queue(check func(pgconn.CommandTag) error, sql string, args ...any) {
	p.batch.Queue(sql, args...)
	p.checks = append(p.checks, check)
	p.reads = append(p.reads, nil)
}

// queueRows queues a statement whose rows read consumes.
func (p *pipeline) queueRows(read func(pgx.Rows) error, sql string, args ...any) {
	p.batch.Queue(sql, args...)
	p.checks = append(p.checks, nil)
	p.reads = append(p.reads, read)
}

// Exec queues a statement (for outbox.Writer.Enqueue); its error surfaces at run.
func (p *pipeline) Exec(_ context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	p.queue(nil, sql, args...)
	return pgconn.CommandTag{}, nil
}

func (p *pipeline) run(ctx context.Context, db DB) error {
	br := db.SendBatch(ctx, p.batch)
	var first error
	for i, check := range p.checks {
		var err error
		if read := p.reads[i]; read != nil {
			var rows pgx.Rows
			if rows, err = br.Query(); err == nil {
				err = read(rows) // it closes rows
			}
		} else {
			var tag pgconn.CommandTag
			tag, err = br.Exec()
			if err == nil && check != nil {
				err = check(tag)
			}
		}
		if err != nil && first == nil {
			first = err
		}
	}
	if err := br.Close(); err != nil && first == nil {
		first = err
	}
	return first
}

// instanceArgs are the instance parameters of write_sagas.
func instanceArgs(sagas []*Instance, versions []int64) []any {
	n := len(sagas)
	ids, statuses, errs := make([]pgtype.UUID, n), make([]string, n), make([]string, n)
	wakes, updates, fins, aborts := make([]pgtype.Timestamptz, n), make([]time.Time, n), make([]pgtype.Timestamptz, n), make([]pgtype.Timestamptz, n)
	for i, s := range sagas {
		ids[i], statuses[i], errs[i] = pguuid.Arg(s.ID), string(s.Status), s.LastError
		wakes[i], updates[i], fins[i], aborts[i] = ts(s.WakeAt), s.UpdatedAt, ts(s.FinishedAt), ts(s.AbortedAt)
	}
	return []any{ids, versions, statuses, errs, wakes, updates, fins, aborts}
}

// newStepArgs are the arrays of start_saga's steps, after the saga ids.
func newStepArgs(steps []ownedStep) []any {
	n := len(steps)
	ids, names, topics, dos, undos := make([]pgtype.UUID, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	positions, stages, timeouts := make([]int32, n), make([]int32, n), make([]int64, n)
	retries, undoRetries := make([]string, n), make([]string, n) // JSON text: encodable in every query exec mode
	for i, st := range steps {
		r, _ := json.Marshal(st.Retry) // plain struct of numbers: cannot fail
		u, _ := json.Marshal(st.UndoRetry)
		ids[i], names[i], positions[i], stages[i], topics[i], dos[i], undos[i] = pguuid.Arg(st.saga), st.Name, int32(st.Position), int32(st.Stage), st.Topic, st.Do, st.Undo
		timeouts[i], retries[i], undoRetries[i] = st.Timeout.Milliseconds(), string(r), string(u)
	}
	dyn := changedStepArgs(steps)[2:]
	return append([]any{ids, names, positions, stages, topics, dos, undos, timeouts, retries, undoRetries}, dyn...)
}

// changedStepArgs are the 15 step parameters of write_sagas: the key and what
// transitions change.
func changedStepArgs(steps []ownedStep) []any {
	n := len(steps)
	ids, names, statuses, ops, errs := make([]pgtype.UUID, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	attempts, bases, seqs := make([]int32, n), make([]int32, n), make([]int32, n)
	inputs, results := make([][]byte, n), make([][]byte, n)
	deadlines, nexts, starts, fins := make([]pgtype.Timestamptz, n), make([]pgtype.Timestamptz, n), make([]pgtype.Timestamptz, n), make([]pgtype.Timestamptz, n)
	undo := make([]bool, n)
	for i, st := range steps {
		ids[i], names[i], statuses[i], ops[i], attempts[i], bases[i] = pguuid.Arg(st.saga), st.Name, string(st.Status), string(st.Op), int32(st.Attempt), int32(st.AttemptBase)
		deadlines[i], nexts[i], undo[i], seqs[i], inputs[i], results[i] = ts(st.Deadline), ts(st.NextAttemptAt), st.MustUndo, int32(st.DoneSeq), st.Input, st.Result
		errs[i], starts[i], fins[i] = st.LastError, ts(st.StartedAt), ts(st.FinishedAt)
	}
	return []any{ids, names, statuses, ops, attempts, bases, deadlines, nexts, undo, seqs, inputs, results, errs, starts, fins}
}

// eventArgs are the 7 event parameters of write_sagas.
func eventArgs(events []Event) []any {
	n := len(events)
	ids, ats, types, steps, ops, attempts, details := make([]pgtype.UUID, n), make([]time.Time, n), make([]string, n),
		make([]string, n), make([]string, n), make([]int32, n), make([]string, n)
	for i, e := range events {
		ids[i], ats[i], types[i], steps[i], ops[i], attempts[i], details[i] = pguuid.Arg(e.SagaID), e.At, string(e.Type), e.Step, string(e.Op), int32(e.Attempt), e.Detail
	}
	return []any{ids, ats, types, steps, ops, attempts, details}
}

func (q queries) events(ctx context.Context, db DB, id uuid.UUID) ([]Event, error) {
	rows, err := db.Query(ctx, q.sql("select_events"), pguuid.Arg(id))
	if err != nil {
		return nil, fmt.Errorf("sagastate: events of saga %s: %w", id, err)
	}
	evs, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Event, error) {
		var e Event
		var typ, op string
		err := row.Scan(&e.ID, &e.SagaID, &typ, &e.At, &e.Step, &op, &e.Attempt, &e.Detail)
		e.Type, e.Op = EventType(typ), wire.Op(op)
		return e, err
	})
	if err != nil {
		return nil, fmt.Errorf("sagastate: events of saga %s: %w", id, err)
	}
	return evs, nil
}
