package inbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/sagabox/sagabox/internal/pguuid"
	"github.com/sagabox/sagabox/migrations"
)

// DefaultSchema is the schema holding the inbox tables unless told otherwise.
//
// Deprecated: use migrations.DefaultSchema, the one default every package shares; this is
// the same constant.
const DefaultSchema = migrations.DefaultSchema

// Errors returned by this package.
var (
	// ErrInvalidConsumer means the consumer name is empty; every inbox row is scoped by it.
	ErrInvalidConsumer = errors.New("invalid consumer name")
	// ErrInvalidMessageID means the message id is the zero UUID, which cannot deduplicate anything.
	ErrInvalidMessageID = errors.New("invalid message id")
	// ErrInvalidConfig means a Config or schema name was rejected; the error says which field and why.
	ErrInvalidConfig = errors.New("invalid inbox config")
	// ErrNotFound means no dead letter has the given id.
	ErrNotFound = errors.New("not found")
)

// Execer is the part of pgx.Tx that Record needs. Pass the transaction that makes the
// message's effect: recording in another transaction loses the exactly-once guarantee.
type Execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// Querier is what the read operations need: a pool, a connection or a transaction.
type Querier interface {
	Execer
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// Store runs the inbox statements against one schema. It is safe for concurrent use.
type Store struct {
	schema        string
	recordSQL     string
	recordManySQL string
	sweepSQL      string
	addDeadSQL    string
	listDeadSQL   string
	deleteDeadSQL string
	takeDeadSQL   string
	sweepDeadSQL  string
	forgetSQL     string
}

// NewStore returns a Store for schema ("" means DefaultSchema).
func NewStore(schema string) (*Store, error) {
	if schema == "" {
		schema = migrations.DefaultSchema
	}
	if err := migrations.ValidateSchema(schema); err != nil {
		return nil, fmt.Errorf("inbox: %w: %w", ErrInvalidConfig, err)
	}
	inbox := pgx.Identifier{schema, "inbox_messages"}.Sanitize()
	dead := pgx.Identifier{schema, "inbox_dead_letters"}.Sanitize()
	return &Store{
		schema: schema,
		recordSQL: `INSERT INTO ` + inbox + ` ("consumer", "message_id") VALUES ($1, $2)
ON CONFLICT ("consumer", "message_id") DO NOTHING`,
		recordManySQL: `INSERT INTO ` + inbox + ` ("consumer", "message_id") SELECT $1, unnest($2::uuid[])
ON CONFLICT ("consumer", "message_id") DO NOTHING RETURNING "message_id"`,
		// Batched so a large backlog never holds one huge delete's locks and WAL.
		sweepSQL: `DELETE FROM ` + inbox + ` WHERE ctid IN (
SELECT ctid FROM ` + inbox + ` WHERE "received_at" < $1 AND ($3 = '' OR "consumer" = $3) LIMIT $2)`,
		// A record dead-lettered again after its dead letter was resolved (replayed or
		// deleted, then the record redelivered) reopens that row: the consumer records
		// the message's inbox row with it, so nothing else would show the message.
		addDeadSQL: `INSERT INTO ` + dead + ` AS d ("consumer", "message_id", "topic", "partition", "offset", "key", "value", "headers", "attempts", "reason", "header_names", "header_values")
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
ON CONFLICT ("consumer", "topic", "partition", "offset") DO UPDATE SET
    "message_id" = EXCLUDED."message_id", "key" = EXCLUDED."key", "value" = EXCLUDED."value", "headers" = EXCLUDED."headers",
    "attempts" = EXCLUDED."attempts", "reason" = EXCLUDED."reason", "header_names" = EXCLUDED."header_names",
    "header_values" = EXCLUDED."header_values", "dead_at" = now(), "resolved_at" = NULL, "resolution" = NULL
WHERE d."resolved_at" IS NOT NULL`,
		listDeadSQL: `SELECT ` + deadColumns + `
FROM ` + dead + ` WHERE "resolved_at" IS NULL AND ($1 = '' OR "consumer" = $1) ORDER BY "id" LIMIT $2`,
		// Replayed and deleted dead letters stay, resolved, until SweepDeadLetters.
		deleteDeadSQL: `UPDATE ` + dead + ` SET "resolved_at" = now(), "resolution" = 'deleted' WHERE "id" = $1 AND "resolved_at" IS NULL`,
		takeDeadSQL: `UPDATE ` + dead + ` SET "resolved_at" = now(), "resolution" = 'replayed' WHERE "id" = $1 AND "resolved_at" IS NULL
RETURNING ` + deadColumns,
		sweepDeadSQL: `DELETE FROM ` + dead + ` WHERE ctid IN (
SELECT ctid FROM ` + dead + ` WHERE "resolved_at" < $1 AND ($3 = '' OR "consumer" = $3) LIMIT $2)`,
		forgetSQL: `DELETE FROM ` + inbox + ` WHERE "consumer" = $1 AND "message_id" = $2`,
	}, nil
}

const deadColumns = `"id", "consumer", "message_id", "topic", "partition", "offset", "key", "value", "headers", "attempts", "reason", "dead_at", "header_names", "header_values"`

// Schema returns the schema the store works on.
func (s *Store) Schema() string { return s.schema }

var defaultStore, _ = NewStore(migrations.DefaultSchema)

// Record records that consumer received message id, within tx, in the default schema.
// See Store.Record.
func Record(ctx context.Context, tx Execer, consumer string, id uuid.UUID) (first bool, err error) {
	return defaultStore.Record(ctx, tx, consumer, id)
}

// Record inserts (consumer, id) within tx. It reports true the first time: run the
// effect in the same tx and commit. It reports false when the pair was already
// recorded by a committed transaction: skip the effect. If another transaction is
// recording the same pair right now, Record waits for it to end.
func (s *Store) Record(ctx context.Context, tx Execer, consumer string, id uuid.UUID) (first bool, err error) {
	if err := validate(consumer, id); err != nil {
		return false, err
	}
	tag, err := tx.Exec(ctx, s.recordSQL, consumer, pguuid.Arg(id)) // not through uuid.UUID's Valuer (package pguuid)
	if err != nil {
		return false, fmt.Errorf("inbox: record message %s for consumer %q: %w", id, consumer, err)
	}
	return tag.RowsAffected() == 1, nil
}

func validate(consumer string, ids ...uuid.UUID) error {
	if consumer == "" {
		return fmt.Errorf("inbox: %w: the consumer name is empty; name the consumer (e.g. its group id) so its dedup rows are its own", ErrInvalidConsumer)
	}
	for _, id := range ids {
		if id == uuid.Nil {
			return fmt.Errorf("inbox: %w: the zero UUID; messages need the id the outbox assigned (header %q)", ErrInvalidMessageID, "message-id")
		}
	}
	return nil
}

// RecordMany is Record for several messages in one statement: first[i] reports
// whether ids[i] is new. An id repeated within ids is new at most at its first position.
func (s *Store) RecordMany(ctx context.Context, tx Querier, consumer string, ids []uuid.UUID) (first []bool, err error) {
	if err := validate(consumer, ids...); err != nil {
		return nil, err
	}
	rows, err := tx.Query(ctx, s.recordManySQL, consumer, pguuid.Array(ids))
	if err != nil {
		return nil, fmt.Errorf("inbox: record %d messages for consumer %q: %w", len(ids), consumer, err)
	}
	return firstOf(rows, consumer, ids)
}

// QueueRecordMany queues RecordMany's statement in b — after b.BeginTx, so that BEGIN
// and the inbox insert take one round trip — and sets *first when b's results are
// read (BatchResults.Close returns the statement's error).
func (s *Store) QueueRecordMany(b *pgx.Batch, consumer string, ids []uuid.UUID, first *[]bool) error {
	if err := validate(consumer, ids...); err != nil {
		return err
	}
	b.Queue(s.recordManySQL, consumer, pguuid.Array(ids)).Query(func(rows pgx.Rows) (err error) {
		*first, err = firstOf(rows, consumer, ids)
		return err
	})
	return nil
}

// firstOf reads the ids the insert returned.
func firstOf(rows pgx.Rows, consumer string, ids []uuid.UUID) ([]bool, error) {
	inserted, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
	if err != nil {
		return nil, fmt.Errorf("inbox: record %d messages for consumer %q: %w", len(ids), consumer, err)
	}
	fresh := make(map[uuid.UUID]bool, len(inserted))
	for _, id := range inserted {
		fresh[id] = true
	}
	first := make([]bool, len(ids))
	for i, id := range ids {
		first[i] = fresh[id]
		delete(fresh, id)
	}
	return first, nil
}

// Sweep deletes the entries of consumer ("" means every consumer) received before
// `before`, batch rows per statement, until none is left, and returns how many it
// deleted. A batch of 0 or less means 1000.
func (s *Store) Sweep(ctx context.Context, db Execer, consumer string, before time.Time, batch int) (int64, error) {
	return sweep(ctx, db, s.sweepSQL, consumer, before, batch, "entries")
}

// sweep runs the batched delete sql($1 before, $2 batch, $3 consumer) until a batch
// comes back short.
func sweep(ctx context.Context, db Execer, sql, consumer string, before time.Time, batch int, what string) (int64, error) {
	if batch <= 0 {
		batch = 1000
	}
	var total int64
	for {
		tag, err := db.Exec(ctx, sql, before, batch, consumer)
		if err != nil {
			return total, fmt.Errorf("inbox: sweep %s before %s: %w", what, before.Format(time.RFC3339), err)
		}
		total += tag.RowsAffected()
		if tag.RowsAffected() < int64(batch) {
			return total, nil
		}
	}
}

// DeadLetter is a message a consumer gave up on, with the reason.
type DeadLetter struct {
	ID        int64     // assigned by the database
	Consumer  string    // the consumer name that gave up
	MessageID uuid.UUID // zero when the record carried no valid message id
	Topic     string
	Partition int
	Offset    int64
	Key       []byte
	Value     []byte
	Headers   map[string]string
	Attempts  int    // how many times the handler ran (0 when it never could)
	Reason    string // why: the last error
	DeadAt    time.Time
}

// AddDeadLetter stores d within tx (d.ID and d.DeadAt are ignored). It reports false
// when an unresolved dead letter for the same consumer and source position already
// exists, e.g. the same poison record delivered again; a resolved one is reopened
// with d's contents.
//
// Any bytes are stored intact: Key, Value and the headers' exact bytes as bytea (the
// readable headers column escapes NUL and invalid UTF-8 as \xNN, since jsonb cannot
// hold them); Reason is stored with such bytes escaped the same way.
func (s *Store) AddDeadLetter(ctx context.Context, tx Execer, d DeadLetter) (bool, error) {
	if d.Consumer == "" {
		return false, fmt.Errorf("inbox: dead letter: %w: the consumer name is empty", ErrInvalidConsumer)
	}
	names := make([]string, 0, len(d.Headers))
	for k := range d.Headers {
		names = append(names, k)
	}
	slices.Sort(names)
	readable := make(map[string]string, len(names))
	rawNames, rawValues := make([][]byte, len(names)), make([][]byte, len(names))
	for i, k := range names {
		readable[escapeText(k)] = escapeText(d.Headers[k])
		rawNames[i], rawValues[i] = []byte(k), []byte(d.Headers[k])
	}
	h, err := json.Marshal(readable)
	if err != nil {
		return false, fmt.Errorf("inbox: dead letter headers: %w", err)
	}
	var msgID *uuid.UUID
	if d.MessageID != uuid.Nil {
		msgID = &d.MessageID
	}
	tag, err := tx.Exec(ctx, s.addDeadSQL, escapeText(d.Consumer), msgID, escapeText(d.Topic), d.Partition, d.Offset, d.Key, d.Value, string(h), d.Attempts,
		escapeText(d.Reason), rawNames, rawValues)
	if err != nil {
		return false, fmt.Errorf("inbox: store dead letter %s/%d@%d for consumer %q: %w", d.Topic, d.Partition, d.Offset, d.Consumer, err)
	}
	return tag.RowsAffected() == 1, nil
}

// escapeText returns s as PostgreSQL text can hold it: NUL and bytes that are not
// UTF-8 become \xNN. Valid text comes back unchanged.
func escapeText(s string) string {
	if utf8.ValidString(s) && !strings.ContainsRune(s, 0) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		if r == 0 || (r == utf8.RuneError && n == 1) {
			fmt.Fprintf(&b, `\x%02x`, s[i])
		} else {
			b.WriteString(s[i : i+n])
		}
		i += n
	}
	return b.String()
}

// ListDeadLetters returns up to limit dead letters of consumer ("" means every
// consumer), oldest first. A limit of 0 or less means 100.
func (s *Store) ListDeadLetters(ctx context.Context, db Querier, consumer string, limit int) ([]DeadLetter, error) {
	if limit <= 0 {
		limit = 100
	}
	rows, err := db.Query(ctx, s.listDeadSQL, consumer, limit)
	if err != nil {
		return nil, fmt.Errorf("inbox: list dead letters: %w", err)
	}
	defer rows.Close()
	out, err := pgx.CollectRows(rows, scanDeadLetter)
	if err != nil {
		return nil, fmt.Errorf("inbox: list dead letters: %w", err)
	}
	return out, nil
}

func scanDeadLetter(row pgx.CollectableRow) (DeadLetter, error) {
	var d DeadLetter
	var msgID *uuid.UUID
	var h []byte
	var names, values [][]byte
	if err := row.Scan(&d.ID, &d.Consumer, &msgID, &d.Topic, &d.Partition, &d.Offset, &d.Key, &d.Value, &h, &d.Attempts, &d.Reason, &d.DeadAt, &names, &values); err != nil {
		return DeadLetter{}, err
	}
	if msgID != nil {
		d.MessageID = *msgID
	}
	if names == nil { // stored before the exact header bytes were
		if err := json.Unmarshal(h, &d.Headers); err != nil {
			return DeadLetter{}, fmt.Errorf("dead letter %d headers: %w", d.ID, err)
		}
		return d, nil
	}
	if len(names) != len(values) {
		return DeadLetter{}, fmt.Errorf("dead letter %d: %d header names but %d values", d.ID, len(names), len(values))
	}
	d.Headers = make(map[string]string, len(names))
	for i, k := range names {
		d.Headers[string(k)] = string(values[i])
	}
	return d, nil
}

// TakeDeadLetter resolves the dead letter with the given id as replayed within tx
// and returns it, e.g. to publish it again in the same transaction. It returns
// ErrNotFound if there is none, or it was resolved already.
func (s *Store) TakeDeadLetter(ctx context.Context, tx Querier, id int64) (DeadLetter, error) {
	rows, err := tx.Query(ctx, s.takeDeadSQL, id)
	if err != nil {
		return DeadLetter{}, fmt.Errorf("inbox: take dead letter %d: %w", id, err)
	}
	d, err := pgx.CollectExactlyOneRow(rows, scanDeadLetter)
	if errors.Is(err, pgx.ErrNoRows) {
		return DeadLetter{}, fmt.Errorf("inbox: dead letter %d: %w", id, ErrNotFound)
	}
	if err != nil {
		return DeadLetter{}, fmt.Errorf("inbox: take dead letter %d: %w", id, err)
	}
	return d, nil
}

// Forget deletes consumer's inbox row for message id within tx, so a redelivery of
// that message is handled again. It reports whether there was a row.
func (s *Store) Forget(ctx context.Context, tx Execer, consumer string, id uuid.UUID) (bool, error) {
	tag, err := tx.Exec(ctx, s.forgetSQL, consumer, id)
	if err != nil {
		return false, fmt.Errorf("inbox: forget message %s for consumer %q: %w", id, consumer, err)
	}
	return tag.RowsAffected() == 1, nil
}

// DeleteDeadLetter resolves the dead letter with the given id as deleted, e.g. after
// an operator discarded it: it is listed no more and swept by SweepDeadLetters. It
// returns ErrNotFound if there is none, or it was resolved already.
func (s *Store) DeleteDeadLetter(ctx context.Context, db Execer, id int64) error {
	tag, err := db.Exec(ctx, s.deleteDeadSQL, id)
	if err != nil {
		return fmt.Errorf("inbox: delete dead letter %d: %w", id, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("inbox: dead letter %d: %w", id, ErrNotFound)
	}
	return nil
}

// SweepDeadLetters deletes the dead letters of consumer ("" means every consumer)
// resolved (replayed or deleted) before `before`, batch rows per statement, until
// none is left, and returns how many it deleted. Unresolved dead letters are never
// swept. A batch of 0 or less means 1000.
func (s *Store) SweepDeadLetters(ctx context.Context, db Execer, consumer string, before time.Time, batch int) (int64, error) {
	return sweep(ctx, db, s.sweepDeadSQL, consumer, before, batch, "resolved dead letters")
}
