package relay

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagabox/sagabox/migrations"
	"github.com/sagabox/sagabox/outbox"
)

// row is a claimed outbox row.
type row struct {
	msg      outbox.Message
	loc      outbox.Loc // where the claim found it, for the settle
	attempts int
}

// queries holds the SQL of one schema, built once with sanitized identifiers: the
// lease tables' statements here, outbox_messages' in package outbox (msgs).
type queries struct {
	msgs                *outbox.Store
	register, live      string
	renew, acquire      string
	release, unregister string
	check               string
	trigger             string
	channel             string
}

func newQueries(schema string) queries {
	leases := pgx.Identifier{schema, "outbox_leases"}.Sanitize()
	relays := pgx.Identifier{schema, "outbox_relays"}.Sanitize()
	channel := schema + ".outbox"
	if len(channel) > 63 {
		channel = channel[:63]
	}
	return queries{
		msgs: outbox.NewStore(schema),
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
		trigger: `SELECT coalesce(bool_or("tgenabled" <> 'D'), false) FROM pg_trigger
WHERE "tgrelid" = '` + strings.ReplaceAll(pgx.Identifier{schema, "outbox_messages"}.Sanitize(), "'", "''") + `'::regclass AND "tgname" = 'outbox_messages_notify'`,
		channel: channel,
	}
}

// claim returns the rows to publish next after cur, in order, how many rows it
// scanned and whether it stopped at BatchSize rows or MaxBatchBytes (then more
// may be waiting). See outbox.Store.ClaimNext. A row that can
// never become a message (outbox.Claimed.Invalid) is dead-lettered here, so it
// neither fails the claim nor blocks its key.
func (r *Relay) claim(ctx context.Context, shards []int16, now time.Time, cur *outbox.Cursor) ([]row, int, bool, error) {
	if len(shards) == Shards {
		shards = nil
	}
	// A claim that takes longer leaves no lease time to publish its rows (each batch
	// needs PublishTimeout of it), and would hold up the release of its shards.
	ctx, cancel := context.WithTimeout(ctx, r.cfg.PublishTimeout)
	defer cancel()
	claimed, scanned, err := r.q.msgs.ClaimNext(ctx, r.db, shards, now, r.cfg.BatchSize, cur)
	if err != nil {
		return nil, 0, false, err
	}
	out := make([]row, 0, len(claimed))
	var invalid []outbox.Failure
	for _, c := range claimed {
		if c.Invalid == nil {
			out = append(out, row{msg: c.Message, loc: c.Loc, attempts: c.Attempts})
			continue
		}
		invalid = append(invalid, outbox.Failure{ID: c.ID, Err: c.Invalid.Error(), DeadAt: &now})
		r.cfg.Hooks.deadLettered(c.Topic, c.Invalid)
		r.log.Error("relay: unreadable row dead-lettered", "id", c.ID, "topic", c.Topic, "key", c.Key, "err", c.Invalid)
	}
	if len(invalid) > 0 {
		if err := r.q.msgs.Settle(ctx, r.db, nil, invalid); err != nil {
			return nil, 0, false, err
		}
	}
	return out, scanned - len(invalid), cur.Full, nil
}

// failure is the bookkeeping of one failed row.
type failure struct {
	id   uuid.UUID
	err  string
	next *time.Time // nil when dead
	dead *time.Time
}

// settle deletes the acknowledged rows and records the failures in one round
// trip. Its transaction commits without waiting for the WAL flush
// (synchronous_commit off, for this transaction only): a settle lost in a crash
// only means its rows are published again, which at-least-once allows, and the
// relay's commits stop queueing behind (and slowing) the producers' flushes.
func (q *queries) settle(ctx context.Context, db *pgxpool.Pool, done []outbox.Loc, failed []failure) error {
	if len(done) == 0 && len(failed) == 0 {
		return nil
	}
	fs := make([]outbox.Failure, len(failed))
	for i, f := range failed {
		fs[i] = outbox.Failure{ID: f.id, Err: f.err, NextAttemptAt: f.next, DeadAt: f.dead}
	}
	b := &pgx.Batch{}
	b.Queue(asyncCommit) // a batch is one implicit transaction: this applies to its commit
	q.msgs.QueueSettle(b, done, fs)
	if err := db.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("settle: %w", err)
	}
	return nil
}

const asyncCommit = `SELECT set_config('synchronous_commit', 'off', true)`

// notMigrated reports whether err says the schema or its tables are missing.
func notMigrated(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && (pgErr.Code == "42P01" || pgErr.Code == "3F000")
}

func interval(d time.Duration) string { return fmt.Sprintf("%d microseconds", d.Microseconds()) }

// Preflight checks that db can serve a relay of schema ("" means the default):
// the outbox tables exist (else ErrNotMigrated) and the role may read and write
// them (else ErrNoAccess). Any other error (the database unreachable, a wrong
// password) is returned as the driver gave it, so a caller can tell a fault that
// waiting cures from one it does not.
func Preflight(ctx context.Context, db *pgxpool.Pool, schema string) error {
	if schema == "" {
		schema = migrations.DefaultSchema
	}
	tables := []string{
		pgx.Identifier{schema, "outbox_messages"}.Sanitize(),
		pgx.Identifier{schema, "outbox_leases"}.Sanitize(),
		pgx.Identifier{schema, "outbox_relays"}.Sanitize(),
	}
	var n int
	var ok [3]bool
	err := db.QueryRow(ctx, `SELECT (SELECT count(*) FROM `+tables[1]+`),
    has_table_privilege($1, 'SELECT, INSERT, UPDATE, DELETE'),
    has_table_privilege($2, 'SELECT, INSERT, UPDATE, DELETE'),
    has_table_privilege($3, 'SELECT, INSERT, UPDATE, DELETE')`, tables[0], tables[1], tables[2]).Scan(&n, &ok[0], &ok[1], &ok[2])
	var pgErr *pgconn.PgError
	switch {
	case notMigrated(err):
		return fmt.Errorf("relay: schema %q: %w; run the migrations first (sagactl migrate up --schema %s): %v", schema, ErrNotMigrated, schema, err)
	case errors.As(err, &pgErr) && pgErr.Code == "42501":
		return fmt.Errorf("relay: schema %q: %w: %v", schema, ErrNoAccess, err)
	case err != nil:
		return err
	case n != Shards:
		return fmt.Errorf("relay: schema %q has %d shard leases, this relay expects %d: %w", schema, n, Shards, ErrNotMigrated)
	}
	for i, t := range tables {
		if !ok[i] {
			return fmt.Errorf("relay: %w: the role may not SELECT, INSERT, UPDATE and DELETE on %s", ErrNoAccess, t)
		}
	}
	return nil
}

// oldestXactSQL finds the oldest transaction on the server that holds an xid: the
// one pg_snapshot_xmin stops at, so vacuum keeps every row deleted after it began
// until it ends. Any database's; its query text shows only with pg_read_all_stats.
const oldestXactSQL = `SELECT "pid", COALESCE("datname", ''), COALESCE("usename", ''), "xact_start",
    GREATEST(EXTRACT(EPOCH FROM now() - "xact_start"), 0)::float8, COALESCE("state", ''), left(COALESCE("query", ''), 200)
FROM pg_stat_activity
WHERE "backend_xid" IS NOT NULL AND "xact_start" IS NOT NULL AND "pid" <> pg_backend_pid()
ORDER BY age("backend_xid") DESC
LIMIT 1`

// holdLogEvery spaces the warnings about one long transaction.
const holdLogEvery = time.Minute

// reportHeldBack reports the age of the oldest running transaction (Hooks.HeldBack)
// and names it in the log once it is older than HoldWarnAfter.
func (r *Relay) reportHeldBack(ctx context.Context) {
	var pid int32
	var db, user, state, query string
	var start time.Time
	var age float64
	err := r.db.QueryRow(ctx, oldestXactSQL).Scan(&pid, &db, &user, &start, &age, &state, &query)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		r.cfg.Hooks.heldBack(0)
		return
	case err != nil:
		r.log.Debug("relay: looking for the oldest transaction failed", "err", err) // the heartbeat reports database trouble
		return
	}
	d := time.Duration(age * float64(time.Second))
	r.cfg.Hooks.heldBack(d)
	if d < r.cfg.HoldWarnAfter || time.Since(r.holdLogged) < holdLogEvery {
		return
	}
	r.holdLogged = time.Now()
	r.log.Warn("relay: a long open transaction keeps vacuum from removing the outbox rows published since it began, so every claim reads past them; end it",
		"pid", pid, "database", db, "user", user, "xact_start", start, "age", d.Round(time.Second), "state", state, "query", query)
}
