package relay

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagabox/sagabox/outbox"
)

// row is a claimed outbox row.
type row struct {
	msg      outbox.Message
	attempts int
}

// queries holds the SQL of one schema, built once with sanitized identifiers.
type queries struct {
	claimAll, claimSome string
	deleteIDs, fail     string
	oldest              string
	register, live      string
	renew, acquire      string
	release, unregister string
	check               string
	channel             string
}

// The claim scans the oldest pending rows of the owned shards in seq order
// (insert order), skipping every key that has a row waiting for a retry. A row is
// ready when its transaction is older than every running one (txid below the
// snapshot's xmin: no row of an older transaction can still appear) and its retry,
// if any, is due. claim then takes a row when it and every earlier scanned row of
// its key are ready. Rows without a key hold nothing back. See doc.go, "Commit order".
const claimSQL = `WITH snap AS MATERIALIZED (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin)
SELECT m."id", m."topic", m."key", m."payload", m."headers", m."attempts",
    m."txid" < (SELECT xmin FROM snap) AND (m."next_attempt_at" IS NULL OR m."next_attempt_at" <= $2) AS ready
FROM %[1]s AS m
WHERE m."dead_at" IS NULL
  %[2]s
  AND (m."key" = '' OR NOT EXISTS (
      SELECT 1 FROM %[1]s AS w
      WHERE w."key" = m."key" AND w."dead_at" IS NULL AND w."next_attempt_at" > $2 AND w."seq" <= m."seq"))
ORDER BY m."seq"
LIMIT $1`

func newQueries(schema string) queries {
	msgs := pgx.Identifier{schema, "outbox_messages"}.Sanitize()
	leases := pgx.Identifier{schema, "outbox_leases"}.Sanitize()
	relays := pgx.Identifier{schema, "outbox_relays"}.Sanitize()
	channel := schema + ".outbox"
	if len(channel) > 63 {
		channel = channel[:63]
	}
	return queries{
		// Owning every shard is the common case; its query skips the shard filter.
		claimAll:  fmt.Sprintf(claimSQL, msgs, `AND $3::smallint[] IS NOT NULL`),
		claimSome: fmt.Sprintf(claimSQL, msgs, `AND m."shard" = ANY($3::smallint[])`),
		deleteIDs: `DELETE FROM ` + msgs + ` WHERE "id" = ANY($1::uuid[])`,
		fail: `UPDATE ` + msgs + ` AS m
SET "attempts" = m."attempts" + 1, "last_error" = f.err, "next_attempt_at" = f.next, "dead_at" = f.dead
FROM unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::timestamptz[]) AS f(id, err, next, dead)
WHERE m."id" = f.id`,
		oldest: `SELECT "created_at" FROM ` + msgs + ` WHERE "dead_at" IS NULL ORDER BY "seq" LIMIT 1`,
		register: `INSERT INTO ` + relays + ` ("id", "expires_at") VALUES ($1, now() + $2::interval)
ON CONFLICT ("id") DO UPDATE SET "expires_at" = EXCLUDED."expires_at"`,
		live: `WITH gone AS (DELETE FROM ` + relays + ` WHERE "expires_at" < now() - interval '1 hour')
SELECT count(*) FROM ` + relays + ` WHERE "expires_at" > now()`,
		renew: `UPDATE ` + leases + ` SET "expires_at" = now() + $2::interval
WHERE "owner" = $1 AND "expires_at" > now() RETURNING "shard"`,
		acquire: `UPDATE ` + leases + ` SET "owner" = $1, "expires_at" = now() + $2::interval, "epoch" = "epoch" + 1
WHERE "shard" IN (
    SELECT "shard" FROM ` + leases + `
    WHERE "owner" IS NULL OR "expires_at" <= now()
    ORDER BY "shard" LIMIT $3 FOR UPDATE SKIP LOCKED)
  AND ("owner" IS NULL OR "expires_at" <= now())
RETURNING "shard"`,
		release:    `UPDATE ` + leases + ` SET "owner" = NULL, "expires_at" = '-infinity' WHERE "owner" = $1 AND "shard" = ANY($2::smallint[])`,
		unregister: `DELETE FROM ` + relays + ` WHERE "id" = $1`,
		check:      `SELECT count(*) FROM ` + leases,
		channel:    channel,
	}
}

// claim returns the rows to publish next, in order, and how many rows it scanned
// (when that is limit, more may be waiting).
func (q *queries) claim(ctx context.Context, db *pgxpool.Pool, shards []int16, all bool, now time.Time, limit int) ([]row, int, error) {
	sql := q.claimSome
	if all {
		sql = q.claimAll
	}
	rows, err := db.Query(ctx, sql, limit, now, shards)
	if err != nil {
		return nil, 0, fmt.Errorf("claim: %w", err)
	}
	defer rows.Close()
	var out []row
	scanned := 0
	blocked := map[string]bool{} // keys with an earlier row that is not ready
	for rows.Next() {
		var r row
		var headers []byte
		var ready bool
		if err := rows.Scan(&r.msg.ID, &r.msg.Topic, &r.msg.Key, &r.msg.Payload, &headers, &r.attempts, &ready); err != nil {
			return nil, 0, fmt.Errorf("claim: %w", err)
		}
		scanned++
		keyed := r.msg.Key != ""
		if keyed && blocked[r.msg.Key] {
			continue
		}
		if !ready {
			if keyed {
				blocked[r.msg.Key] = true
			}
			continue
		}
		if len(headers) > 2 { // "{}" is the common case
			if err := json.Unmarshal(headers, &r.msg.Headers); err != nil {
				return nil, 0, fmt.Errorf("claim: row %s has unreadable headers: %w", r.msg.ID, err)
			}
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, 0, fmt.Errorf("claim: %w", err)
	}
	return out, scanned, nil
}

// failure is the bookkeeping of one failed row.
type failure struct {
	id   uuid.UUID
	err  string
	next *time.Time // nil when dead
	dead *time.Time
}

// settle deletes the acknowledged rows and records the failures in one round trip.
func (q *queries) settle(ctx context.Context, db *pgxpool.Pool, done []uuid.UUID, failed []failure) error {
	b := &pgx.Batch{}
	if len(done) > 0 {
		b.Queue(q.deleteIDs, rawUUIDs(done))
	}
	if len(failed) > 0 {
		ids := make([]uuid.UUID, len(failed))
		errs := make([]string, len(failed))
		next := make([]*time.Time, len(failed))
		dead := make([]*time.Time, len(failed))
		for i, f := range failed {
			ids[i], errs[i], next[i], dead[i] = f.id, f.err, f.next, f.dead
		}
		b.Queue(q.fail, rawUUIDs(ids), errs, next, dead)
	}
	if b.Len() == 0 {
		return nil
	}
	if err := db.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("settle: %w", err)
	}
	return nil
}

// rawUUIDs lets pgx encode ids in binary; as uuid.UUID it would go through their
// driver.Valuer, one string each, which was a fifth of the relay's CPU time.
func rawUUIDs(ids []uuid.UUID) [][16]byte {
	out := make([][16]byte, len(ids))
	for i, id := range ids {
		out[i] = id
	}
	return out
}

// notMigrated reports whether err says the schema or its tables are missing.
func notMigrated(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && (pgErr.Code == "42P01" || pgErr.Code == "3F000")
}

func interval(d time.Duration) string { return fmt.Sprintf("%d microseconds", d.Microseconds()) }
