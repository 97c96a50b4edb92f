package outbox

import (
	"context"
	_ "embed"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/sagabox/sagabox/internal/pguuid"
	"github.com/sagabox/sagabox/internal/sqlfile"
)

// Every statement on outbox_messages lives in outbox_messages.sql, by name.
//
//go:embed outbox_messages.sql
var statementsFile string

// defaultTable is how outbox_messages.sql names the table.
const defaultTable = `"sagabox"."outbox_messages"`

var statements = sqlfile.Parse(statementsFile)

// Store runs the statements on one schema's outbox_messages: Enqueue's insert, the
// relay's claim and settle, and the operator functions. It is safe for concurrent
// use.
type Store struct {
	schema string
	sql    map[string]string
}

// NewStore returns the Store of schema ("" means DefaultSchema).
func NewStore(schema string) *Store {
	schema = schemaOrDefault(schema)
	table := pgx.Identifier{schema, "outbox_messages"}.Sanitize()
	sql := make(map[string]string, len(statements))
	for name, s := range statements {
		sql[name] = strings.ReplaceAll(s, defaultTable, table)
	}
	return &Store{schema: schema, sql: sql}
}

// Schema returns the schema the Store works on.
func (s *Store) Schema() string { return s.schema }

func (s *Store) stmt(name string) string {
	q, ok := s.sql[name]
	if !ok {
		panic("outbox: no statement " + name + " in outbox_messages.sql")
	}
	return q
}

// Claimed is a row returned by Claim.
type Claimed struct {
	Message
	// Loc names the row for Settle, once published.
	Loc Loc
	// Attempts counts the failed publishes so far.
	Attempts int
	// Invalid says why the row can never become a Message (headers written by
	// another producer that are not an object of strings); dead-letter it.
	Invalid error
}

// Claim returns the rows to publish next among the oldest pending ones of shards
// (nil means every shard), in order, and how many rows it scanned: when that is
// limit, more may be waiting. now decides which retries are due.
//
// Ordering: rows are scanned in seq (insert) order and every committed row is
// ready, whatever other transaction is still open; a keyed row is taken only when
// no earlier row of its key waits for a retry. So a key's rows are published in
// the order their transactions committed. Rows waiting for a retry are not
// scanned, so they never fill limit. See package relay, "Commit order".
func (s *Store) Claim(ctx context.Context, db Querier, shards []int16, now time.Time, limit int) ([]Claimed, int, error) {
	return s.ClaimNext(ctx, db, shards, now, limit, &Cursor{})
}

// Cursor lets claims follow each other while the rows of the earlier ones are
// still pending (being published): each scans only after the last row the one
// before it scanned, and leaves the keys that one left a row of. A row that
// commits behind the cursor is found only by a claim from a new Cursor; so that
// no later row of its key overtakes it meanwhile, the claims of one Cursor take
// only rows the first claim's snapshot saw (committed before it), and the caller
// passes one now to all of them (a retry falling due behind the cursor stays
// waiting).
type Cursor struct {
	// Seq is the last seq scanned; the next claim scans after it.
	Seq int64
	// Snapshot is the first claim's snapshot, as PostgreSQL prints a pg_snapshot
	// ("" before it).
	Snapshot string
	// Retrying is set by a claim that returned rows while some pending row (of
	// any shard) had failed before and waits for its retry or is due: it may be
	// below where the claims started, and later rows of its key must not pass it.
	Retrying bool
	// Blocked holds the keys a claim left a row of (not ready): later rows of
	// theirs are not taken either. The caller adds keys it must hold back (their
	// publish failed) the same way.
	Blocked map[string]bool
	// MaxBytes, when positive, bounds the payload bytes one claim scans: it ends
	// at the row that brings them to MaxBytes or more, and the rows after it are
	// left for the next claim (the server does not send them), as rows past the
	// limit are. A claim's payloads then stay under MaxBytes plus one message,
	// whatever its limit of rows. Keys and headers are not counted.
	MaxBytes int
	// Full is set by each claim: it stopped at its limit of rows or at MaxBytes,
	// so more rows may be waiting behind it.
	Full bool
}

// A claim copies payloads into chunks of minChunk bytes, doubling up to maxChunk.
const (
	minChunk = 4 << 10
	maxChunk = 64 << 10
)

// ClaimNext is Claim continuing from cur, which it advances.
func (s *Store) ClaimNext(ctx context.Context, db Querier, shards []int16, now time.Time, limit int, cur *Cursor) ([]Claimed, int, error) {
	var rows pgx.Rows
	var err error
	var snap *string // NULL: the first claim of a run takes every committed row
	if cur.Snapshot != "" {
		snap = &cur.Snapshot
	}
	maxBytes := int64(math.MaxInt64)
	if cur.MaxBytes > 0 {
		maxBytes = int64(cur.MaxBytes)
	}
	cur.Full = false
	switch {
	case shards != nil && len(shards) == 0:
		return nil, 0, nil
	case shards == nil:
		rows, err = db.Query(ctx, s.stmt("claim_all"), limit, now, cur.Seq, snap, maxBytes)
	default:
		rows, err = db.Query(ctx, s.stmt("claim"), limit, now, cur.Seq, snap, shards, slices.Min(shards), slices.Max(shards), maxBytes)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("claim: %w", err)
	}
	defer rows.Close()
	if cur.Blocked == nil {
		cur.Blocked = map[string]bool{}
	}
	// The scan targets are reused for every row, and the driver's bytes are copied
	// out: payloads into shared chunks, a batch's topic once. Scanned into a fresh
	// Claimed each, its fields escaped to the heap row by row, and decoding the
	// claim's rows was half the relay's CPU in a drain (CPU profile).
	out := make([]Claimed, 0, min(max(limit, 0), 64))
	next := minChunk // the next chunk's size: small claims (the usual case) stay small
	var (
		scanned          int
		upto             int64 // payload bytes of the rows scanned so far
		id               [16]byte
		tid              pgtype.TID
		topic, key       pgtype.DriverBytes
		payload, headers pgtype.DriverBytes
		attempts         int
		ready, retrying  bool
		lastTopic        string
		chunk            []byte
	)
	targets := []any{&cur.Seq, &id, &tid, &topic, &key, &payload, &headers, &attempts, &ready, &cur.Snapshot, &retrying, &upto}
	for rows.Next() {
		if err := rows.Scan(targets...); err != nil {
			return nil, 0, fmt.Errorf("claim: %w", err)
		}
		scanned++
		cur.Retrying = cur.Retrying || retrying
		k := string(key)
		if k != "" && cur.Blocked[k] {
			continue
		}
		if !ready {
			if k != "" {
				cur.Blocked[k] = true
			}
			continue
		}
		if string(topic) != lastTopic {
			lastTopic = string(topic)
		}
		if cap(chunk)-len(chunk) < len(payload) {
			chunk = make([]byte, 0, max(len(payload), next))
			next = min(2*next, maxChunk)
		}
		n := len(chunk)
		chunk = append(chunk, payload...)
		r := Claimed{
			Message:  Message{ID: id, Topic: lastTopic, Key: k, Payload: chunk[n:len(chunk):len(chunk)]},
			Loc:      Loc{block: tid.BlockNumber, offset: tid.OffsetNumber, seq: cur.Seq},
			Attempts: attempts,
		}
		if r.Payload == nil { // an empty payload before the first chunk: empty, not null (a tombstone)
			r.Payload = []byte{}
		}
		if len(headers) > 2 { // "{}" is the common case
			if err := json.Unmarshal(headers, &r.Headers); err != nil {
				r.Headers = nil
				r.Invalid = fmt.Errorf("headers %.200s are not an object of string values (written by another producer?): %v", headers, err)
			}
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, 0, fmt.Errorf("claim: %w", err)
	}
	cur.Full = scanned > 0 && (scanned == limit || upto >= maxBytes)
	return out, scanned, nil
}

// ProbeResult is what Probe found.
type ProbeResult struct {
	// Seq is the highest seq of a pending row after the one asked about, and Found
	// says whether there is one: rows arrived since.
	Seq   int64
	Found bool
	// Xmin and Xmax are the probe's snapshot's: the transactions open at the probe
	// have xids below Xmax, and all of them have ended once a later Xmin reaches it.
	Xmin, Xmax uint64
}

// Probe reports whether pending rows were added after seq after: the highest seq
// of one, and the snapshot's xmin and xmax. It reads only the index entries of the
// rows added since. A transaction open at the probe may hold a row with a seq at
// or below the answer, which becomes visible when it commits: the probe cannot see
// such a row, so a caller claims again once a later probe's Xmin reaches this Xmax.
func (s *Store) Probe(ctx context.Context, db Querier, after int64) (ProbeResult, error) {
	var seq *int64
	res := ProbeResult{Seq: after}
	if err := db.QueryRow(ctx, s.stmt("probe"), after).Scan(&seq, &res.Xmin, &res.Xmax); err != nil {
		return ProbeResult{Seq: after}, fmt.Errorf("probe: %w", err)
	}
	if seq != nil {
		res.Seq, res.Found = *seq, true
	}
	return res, nil
}

// Failure is the bookkeeping of one failed publish: one attempt spent, the error
// kept, and either a retry time or a dead-letter time.
type Failure struct {
	ID  uuid.UUID
	Err string
	// NextAttemptAt is when the row may be published again; nil when it is dead.
	NextAttemptAt *time.Time
	// DeadAt dead-letters the row; nil while it is retried.
	DeadAt *time.Time
}

// Loc says which row a claim returned (its seq, never reused) and where it
// found it in the table (its ctid). Only a claim makes one: the zero Loc names
// no row.
type Loc struct {
	block  uint32
	offset uint16
	seq    int64
}

// QueueSettle adds to b the statements that delete the published rows (the Locs
// of their claims) and record the failures, so a caller can send them with other
// statements in one round trip. A row is deleted where its claim found it while
// it is the row claimed there; one that was changed and moved since (a relay
// that took the shard over recorded a failure on it) stays and is published
// again: a duplicate, never a row lost. Its statements plan without sequential
// scans (outbox_messages.sql, settle_plan) and put the transaction's settings back:
// two SELECTs around them, so read the batch's results with Close or per-query
// callbacks, not by position.
func (s *Store) QueueSettle(b *pgx.Batch, published []Loc, failed []Failure) {
	if len(published) == 0 && len(failed) == 0 {
		return
	}
	b.Queue(s.stmt("settle_plan"))
	if len(published) > 0 {
		tids := make([]pgtype.TID, len(published))
		seqs := make([]int64, len(published))
		for i, l := range published {
			tids[i] = pgtype.TID{BlockNumber: l.block, OffsetNumber: l.offset, Valid: true}
			seqs[i] = l.seq
		}
		b.Queue(s.stmt("delete_published"), tids, seqs)
	}
	if len(failed) > 0 {
		ids := make([]uuid.UUID, len(failed))
		errs := make([]string, len(failed))
		next := make([]*time.Time, len(failed))
		dead := make([]*time.Time, len(failed))
		for i, f := range failed {
			ids[i], errs[i], next[i], dead[i] = f.ID, f.Err, f.NextAttemptAt, f.DeadAt
		}
		b.Queue(s.stmt("record_failures"), pguuid.Array(ids), errs, next, dead)
	}
	b.Queue(s.stmt("settle_plan_as_before"))
}

// Batcher is the part of a pgx pool, connection or transaction that Settle needs.
type Batcher interface {
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
}

// Settle deletes the published rows and records the failures in one round trip.
func (s *Store) Settle(ctx context.Context, db Batcher, published []Loc, failed []Failure) error {
	b := &pgx.Batch{}
	s.QueueSettle(b, published, failed)
	if b.Len() == 0 {
		return nil
	}
	if err := db.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("settle: %w", err)
	}
	return nil
}

// OldestPending returns when the oldest row still to publish (not dead-lettered)
// was written, and false when there is none.
func (s *Store) OldestPending(ctx context.Context, db Querier) (time.Time, bool, error) {
	var at time.Time
	err := db.QueryRow(ctx, s.stmt("oldest_pending")).Scan(&at)
	switch {
	case err == pgx.ErrNoRows:
		return time.Time{}, false, nil
	case err != nil:
		return time.Time{}, false, fmt.Errorf("oldest pending row: %w", err)
	}
	return at, true, nil
}
