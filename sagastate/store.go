package sagastate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/sagabox/sagabox/wire"
)

// DB is what the orchestrator needs of a transaction (pgx.Tx) or a pool.
type DB interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// queries holds the SQL for one schema; table names are sanitized identifiers, never input.
type queries struct {
	insertInstance, updateInstance, lockInstance, selectInstance string
	upsertSteps, selectSteps                                     string
	insertEvents, selectEvents                                   string
	dueSagas                                                     string
	// writeTransition updates the instance (version check), upserts steps and appends
	// events in one statement: one parse/execute instead of three for every reply.
	writeTransition        string
	instances, eventsTable string // table names, for List/Stats/feed
}

const instanceCols = `"id", "type", "status", "payload", "version", "last_error", "wake_at", "created_at", "updated_at", "finished_at", "aborted_at"`

const stepCols = `"saga_id", "name", "position", "stage", "topic", "do_command", "undo_command", "timeout_ms", "retry", "undo_retry",
 "status", "op", "attempt", "attempt_base", "deadline", "next_attempt_at", "must_undo", "done_seq", "input", "result", "last_error", "started_at", "finished_at"`

// shiftParams renumbers the placeholders $1..$n of sql to $(1+by)..$(n+by).
func shiftParams(sql string, by int) string {
	return placeholder.ReplaceAllStringFunc(sql, func(m string) string {
		n, _ := strconv.Atoi(m[1:])
		return "$" + strconv.Itoa(n+by)
	})
}

var placeholder = regexp.MustCompile(`\$[0-9]+`)

func newQueries(schema string) queries {
	inst := pgx.Identifier{schema, "saga_instances"}.Sanitize()
	steps := pgx.Identifier{schema, "saga_steps"}.Sanitize()
	events := pgx.Identifier{schema, "saga_events"}.Sanitize()
	q := queries{
		instances: inst, eventsTable: events,
		insertInstance: `INSERT INTO ` + inst + ` (` + instanceCols + `) VALUES ($1, $2, $3, $4, 1, $5, $6, $7, $8, $9, $10)
ON CONFLICT ("id") DO NOTHING`,
		updateInstance: `UPDATE ` + inst + ` SET "status" = $3, "version" = "version" + 1, "last_error" = $4, "wake_at" = $5,
 "updated_at" = $6, "finished_at" = $7, "aborted_at" = $8 WHERE "id" = $1 AND "version" = $2`,
		lockInstance:   `SELECT ` + instanceCols + ` FROM ` + inst + ` WHERE "id" = $1 FOR UPDATE`,
		selectInstance: `SELECT ` + instanceCols + ` FROM ` + inst + ` WHERE "id" = $1`,
		upsertSteps: `INSERT INTO ` + steps + ` (` + stepCols + `)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::int[], $4::int[], $5::text[], $6::text[], $7::text[], $8::bigint[], $9::jsonb[], $10::jsonb[],
 $11::text[], $12::text[], $13::int[], $14::int[], $15::timestamptz[], $16::timestamptz[], $17::bool[], $18::int[], $19::bytea[], $20::bytea[],
 $21::text[], $22::timestamptz[], $23::timestamptz[])
ON CONFLICT ("saga_id", "name") DO UPDATE SET "status" = excluded."status", "op" = excluded."op", "attempt" = excluded."attempt",
 "attempt_base" = excluded."attempt_base", "deadline" = excluded."deadline", "next_attempt_at" = excluded."next_attempt_at",
 "must_undo" = excluded."must_undo", "done_seq" = excluded."done_seq", "input" = excluded."input", "result" = excluded."result",
 "last_error" = excluded."last_error", "started_at" = excluded."started_at", "finished_at" = excluded."finished_at"`,
		selectSteps: `SELECT ` + stepCols + ` FROM ` + steps + ` WHERE "saga_id" = $1 ORDER BY "position"`,
		insertEvents: `INSERT INTO ` + events + ` ("saga_id", "at", "type", "step", "op", "attempt", "detail")
SELECT * FROM unnest($1::uuid[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::int[], $7::text[])`,
		selectEvents: `SELECT "id", "saga_id", "type", "at", "step", "op", "attempt", "detail" FROM ` + events + ` WHERE "saga_id" = $1 ORDER BY "id"`,
		dueSagas:     `SELECT "id" FROM ` + inst + ` WHERE "wake_at" <= $1 AND "type" = ANY($3::text[]) ORDER BY "wake_at" LIMIT $2 FOR UPDATE SKIP LOCKED`,
	}
	const onlyIfUpdated = ` WHERE EXISTS (SELECT FROM "upd")`
	stepsSQL := strings.Replace(q.upsertSteps, "\nON CONFLICT", onlyIfUpdated+"\nON CONFLICT", 1)
	q.writeTransition = `WITH "upd" AS (` + q.updateInstance + ` RETURNING 1),
"st" AS (` + shiftParams(stepsSQL, 8) + `),
"ev" AS (` + shiftParams(q.insertEvents+onlyIfUpdated, 31) + `)
SELECT 1 FROM "upd"`
	return q
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

func scanInstance(row pgx.Row) (Instance, error) {
	var s Instance
	var status string
	var wake, fin, ab pgtype.Timestamptz
	err := row.Scan(&s.ID, &s.Type, &status, &s.Payload, &s.Version, &s.LastError, &wake, &s.CreatedAt, &s.UpdatedAt, &fin, &ab)
	s.Status, s.WakeAt, s.FinishedAt, s.AbortedAt = SagaStatus(status), fromTS(wake), fromTS(fin), fromTS(ab)
	return s, err
}

func (q *queries) load(ctx context.Context, db DB, id uuid.UUID, lock bool) (Instance, error) {
	sql := q.selectInstance
	if lock {
		sql = q.lockInstance
	}
	// One round trip when possible; the steps are read after the row lock is granted,
	// so (read committed) they are the latest committed.
	var row pgx.Row
	var steps func() (pgx.Rows, error)
	if b, ok := db.(batcher); ok {
		batch := &pgx.Batch{}
		batch.Queue(sql, id)
		batch.Queue(q.selectSteps, id)
		br := b.SendBatch(ctx, batch)
		defer br.Close()
		row, steps = br.QueryRow(), br.Query
	} else {
		row, steps = db.QueryRow(ctx, sql, id), func() (pgx.Rows, error) { return db.Query(ctx, q.selectSteps, id) }
	}
	s, err := scanInstance(row)
	if errors.Is(err, pgx.ErrNoRows) {
		return Instance{}, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	if err != nil {
		return Instance{}, fmt.Errorf("sagastate: load saga %s: %w", id, err)
	}
	rows, err := steps()
	if err != nil {
		return Instance{}, fmt.Errorf("sagastate: load steps of saga %s: %w", id, err)
	}
	s.Steps, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (StepState, error) {
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
			return st, err
		}
		st.Timeout = time.Duration(timeoutMS) * time.Millisecond
		st.Status, st.Op = StepStatus(status), wire.Op(op)
		st.Deadline, st.NextAttemptAt, st.StartedAt, st.FinishedAt = fromTS(deadline), fromTS(next), fromTS(started), fromTS(finished)
		if err := json.Unmarshal(retry, &st.Retry); err != nil {
			return st, fmt.Errorf("retry policy of step %s: %w", st.Name, err)
		}
		if err := json.Unmarshal(undoRetry, &st.UndoRetry); err != nil {
			return st, fmt.Errorf("undo retry policy of step %s: %w", st.Name, err)
		}
		return st, nil
	})
	if err != nil {
		return Instance{}, fmt.Errorf("sagastate: load steps of saga %s: %w", id, err)
	}
	return s, nil
}

// insertNew inserts a new saga's instance row on its own, before anything else of it is
// written: a duplicate id must stop Start before steps or commands are queued.
func (q *queries) insertNew(ctx context.Context, db DB, s *Instance) error {
	tag, err := db.Exec(ctx, q.insertInstance, s.ID, s.Type, string(s.Status), s.Payload, s.LastError, ts(s.WakeAt),
		s.CreatedAt, s.UpdatedAt, ts(s.FinishedAt), ts(s.AbortedAt))
	if err != nil {
		return fmt.Errorf("sagastate: insert saga %s: %w", s.ID, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("%w: %s; pick a new id, or treat the saga as started", ErrDuplicate, s.ID)
	}
	s.Version = 1
	return nil
}

// batcher is implemented by pgx.Tx and pools: statements queued in a pgx.Batch go to the
// server in one round trip.
type batcher interface {
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
}

// writes collects the statements of one transition so they reach the server in one round
// trip. It is also the outbox.Execer the commands are enqueued through.
type writes struct {
	stmts []stmt
}

type stmt struct {
	sql   string
	args  []any
	check func(pgconn.CommandTag, error) error
}

func (w *writes) add(check func(pgconn.CommandTag, error) error, sql string, args ...any) {
	w.stmts = append(w.stmts, stmt{sql: sql, args: args, check: check})
}

// Exec queues a statement (for outbox.Writer.Enqueue); its error surfaces at flush.
func (w *writes) Exec(_ context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	w.add(nil, sql, args...)
	return pgconn.CommandTag{}, nil
}

func (w *writes) flush(ctx context.Context, db DB, what string) error {
	run := func(i int, tag pgconn.CommandTag, err error) error {
		if c := w.stmts[i].check; c != nil {
			return c(tag, err)
		}
		if err != nil {
			return fmt.Errorf("sagastate: %s: %w", what, err)
		}
		return nil
	}
	b, ok := db.(batcher)
	if !ok || len(w.stmts) == 1 {
		for i, st := range w.stmts {
			tag, err := db.Exec(ctx, st.sql, st.args...)
			if err := run(i, tag, err); err != nil {
				return err
			}
		}
		return nil
	}
	batch := &pgx.Batch{}
	for _, st := range w.stmts {
		batch.Queue(st.sql, st.args...)
	}
	br := b.SendBatch(ctx, batch)
	var first error
	for i := range w.stmts {
		tag, err := br.Exec()
		if err := run(i, tag, err); err != nil && first == nil {
			first = err
		}
	}
	if err := br.Close(); err != nil && first == nil {
		first = fmt.Errorf("sagastate: %s: %w", what, err)
	}
	return first
}

// save queues a transition's new state and log into w; prev is the state it started
// from (Version 0 for a new saga). Only steps that changed are written.
func (q *queries) save(w *writes, prev *Instance, s *Instance, events []Event) {
	if prev.Version == 0 {
		// The instance row was inserted first (insertNew); steps and log follow.
		q.saveSteps(w, s.ID, s.Steps)
		q.saveEvents(w, events)
		return
	}
	prevVersion := prev.Version
	var changed []StepState
	for i, st := range s.Steps {
		if i >= len(prev.Steps) || !reflect.DeepEqual(prev.Steps[i], st) {
			changed = append(changed, st)
		}
	}
	args := []any{s.ID, prevVersion, string(s.Status), s.LastError, ts(s.WakeAt), s.UpdatedAt, ts(s.FinishedAt), ts(s.AbortedAt)}
	args = append(args, stepArgs(s.ID, changed)...)
	args = append(args, eventArgs(events)...)
	w.add(func(tag pgconn.CommandTag, err error) error {
		if err != nil {
			return fmt.Errorf("sagastate: write saga %s: %w", s.ID, err)
		}
		if tag.RowsAffected() == 0 {
			return fmt.Errorf("%w: saga %s is no longer at version %d", ErrConcurrentUpdate, s.ID, prevVersion)
		}
		return nil
	}, q.writeTransition, args...)
	s.Version = prevVersion + 1
}

func (q *queries) saveSteps(w *writes, id uuid.UUID, steps []StepState) {
	if len(steps) == 0 {
		return
	}
	w.add(func(_ pgconn.CommandTag, err error) error {
		if err != nil {
			return fmt.Errorf("sagastate: save steps of saga %s: %w", id, err)
		}
		return nil
	}, q.upsertSteps, stepArgs(id, steps)...)
}

// stepArgs are the 23 array parameters of upsertSteps.
func stepArgs(id uuid.UUID, steps []StepState) []any {
	n := len(steps)
	ids, names, topics, dos, undos, statuses, ops, errs := make([]uuid.UUID, n), make([]string, n), make([]string, n),
		make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	positions, stages, attempts, bases, seqs := make([]int32, n), make([]int32, n), make([]int32, n), make([]int32, n), make([]int32, n)
	timeouts := make([]int64, n)
	retries, undoRetries, inputs, results := make([][]byte, n), make([][]byte, n), make([][]byte, n), make([][]byte, n)
	deadlines, nexts, starts, fins := make([]pgtype.Timestamptz, n), make([]pgtype.Timestamptz, n), make([]pgtype.Timestamptz, n), make([]pgtype.Timestamptz, n)
	undo := make([]bool, n)
	for i, st := range steps {
		r, _ := json.Marshal(st.Retry) // plain struct of numbers: cannot fail
		u, _ := json.Marshal(st.UndoRetry)
		ids[i], names[i], positions[i], stages[i], topics[i], dos[i], undos[i] = id, st.Name, int32(st.Position), int32(st.Stage), st.Topic, st.Do, st.Undo
		timeouts[i], retries[i], undoRetries[i] = st.Timeout.Milliseconds(), r, u
		statuses[i], ops[i], attempts[i], bases[i] = string(st.Status), string(st.Op), int32(st.Attempt), int32(st.AttemptBase)
		deadlines[i], nexts[i], undo[i], seqs[i], inputs[i], results[i] = ts(st.Deadline), ts(st.NextAttemptAt), st.MustUndo, int32(st.DoneSeq), st.Input, st.Result
		errs[i], starts[i], fins[i] = st.LastError, ts(st.StartedAt), ts(st.FinishedAt)
	}
	return []any{ids, names, positions, stages, topics, dos, undos, timeouts, retries, undoRetries,
		statuses, ops, attempts, bases, deadlines, nexts, undo, seqs, inputs, results, errs, starts, fins}
}

func (q *queries) saveEvents(w *writes, events []Event) {
	if len(events) == 0 {
		return
	}
	w.add(func(_ pgconn.CommandTag, err error) error {
		if err != nil {
			return fmt.Errorf("sagastate: save events of saga %s: %w", events[0].SagaID, err)
		}
		return nil
	}, q.insertEvents, eventArgs(events)...)
}

// eventArgs are the 7 array parameters of insertEvents.
func eventArgs(events []Event) []any {
	n := len(events)
	ids, ats, types, steps, ops, attempts, details := make([]uuid.UUID, n), make([]time.Time, n), make([]string, n),
		make([]string, n), make([]string, n), make([]int32, n), make([]string, n)
	for i, e := range events {
		ids[i], ats[i], types[i], steps[i], ops[i], attempts[i], details[i] = e.SagaID, e.At, string(e.Type), e.Step, string(e.Op), int32(e.Attempt), e.Detail
	}
	return []any{ids, ats, types, steps, ops, attempts, details}
}

func (q *queries) events(ctx context.Context, db DB, id uuid.UUID) ([]Event, error) {
	rows, err := db.Query(ctx, q.selectEvents, id)
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
