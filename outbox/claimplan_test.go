package outbox_test

import (
	"context"
	"regexp"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagabox/sagabox/internal/testenv"
	"github.com/sagabox/sagabox/outbox"
)

// TestClaimDoesNotScanTheTableWhenManyRetriesAreDue: the claim asks once whether
// any row waits for a retry. Asked as a plain EXISTS, the generic plan (the one a
// cached prepared statement, as pgx uses, ends up with) estimated a third of the
// rows with a next_attempt_at as waiting and read the whole table to find the one
// that did, when many failed rows were due again: every claim a sequential scan.
func TestClaimDoesNotScanTheTableWhenManyRetriesAreDue(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.NewDB(t)
	fillRows(t, db, 20000)
	// Most rows failed once and are due again; one waits an hour.
	if _, err := db.Pool.Exec(ctx, `UPDATE "sagabox"."outbox_messages" SET "attempts" = 1,
    "next_attempt_at" = CASE WHEN "seq" = (SELECT max("seq") FROM "sagabox"."outbox_messages") THEN now() + interval '1 hour' ELSE now() - interval '1 minute' END
WHERE "seq" % 10 <> 0`); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Pool.Exec(ctx, `ANALYZE "sagabox"."outbox_messages"`); err != nil {
		t.Fatal(err)
	}
	// Only the generic plan: custom plans know the time and estimate the waiting rows
	// from the statistics; they may read the table when it is small, by cost, not by
	// a wrong estimate.
	for name, args := range map[string]string{"claim": `100, now(), 0, NULL, '{0,1,2}', 0, 2, 8388608`, "claim_all": `100, now(), 0, NULL, 8388608`} {
		plan := genericPlan(t, db, name, args)
		if strings.Contains(plan, `"Seq Scan"`) {
			t.Errorf("%s: the plan scans the whole table:\n%s", name, plan)
		}
		// The byte bound's running sum streams in seq order under the LIMIT: no sort
		// of every pending row before the first one comes out.
		if strings.Contains(plan, `"Sort"`) || !strings.Contains(plan, `"WindowAgg"`) {
			t.Errorf("%s: the running sum of the payloads is not computed in index order:\n%s", name, plan)
		}
		// The shard test probes a hash of the shards per row (outbox_messages.sql, claim).
		if name == "claim" && !strings.Contains(plan, "hashed SubPlan") {
			t.Errorf("%s: the shard test is not a hashed SubPlan:\n%s", name, plan)
		}
		// The shards' range bounds the index scan, so other relays' rows are not read.
		if name == "claim" && !regexp.MustCompile(`"Index Cond": "[^"]*shard >= `).MatchString(plan) {
			t.Errorf("%s: the shard range is not an index condition:\n%s", name, plan)
		}
	}
}

// TestSettleDeleteIsATIDScan: the settle's delete finds each row where its claim
// found it (a TID scan) and checks its seq in a hash, in the generic plan a cached
// prepared statement ends up with; "id" = ANY took an index lookup per row, 2.6×
// the time for 500 rows.
func TestSettleDeleteIsATIDScan(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.NewDB(t)
	fillRows(t, db, 5000) // on a table of a page or two a sequential scan is as cheap
	if _, err := db.Pool.Exec(ctx, `ANALYZE "sagabox"."outbox_messages"`); err != nil {
		t.Fatal(err)
	}
	plan := genericPlan(t, db, "delete_published", `'{"(0,1)"}', '{1}'`)
	if !strings.Contains(plan, `"Tid Scan"`) || !strings.Contains(plan, "hashed SubPlan") {
		t.Errorf("the settle's delete is not a TID scan with a hashed seq check:\n%s", plan)
	}
}

// genericPlan returns the plan of statement name of outbox_messages.sql with args,
// as a cached prepared statement (pgx's) ends up with it: the generic one.
func genericPlan(t *testing.T, db *testenv.DB, name, args string) string {
	t.Helper()
	ctx := context.Background()
	conn, err := db.Pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	defer conn.Exec(ctx, `RESET plan_cache_mode`) //nolint:errcheck // the connection is the test's
	if _, err := conn.Exec(ctx, `SET plan_cache_mode = force_generic_plan`); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `PREPARE plan_`+name+` AS `+outbox.StatementOf(outbox.NewStore(""), name)); err != nil {
		t.Fatal(err)
	}
	defer conn.Exec(ctx, `DEALLOCATE plan_`+name) //nolint:errcheck // the connection is the test's
	var plan string
	if err := conn.QueryRow(ctx, `EXPLAIN (FORMAT JSON) EXECUTE plan_`+name+`(`+args+`)`).Scan(&plan); err != nil {
		t.Fatal(err)
	}
	return plan
}

// fillRows adds n pending rows of 100 keys.
func fillRows(t *testing.T, db *testenv.DB, n int) {
	t.Helper()
	if _, err := db.Pool.Exec(context.Background(), `INSERT INTO "sagabox"."outbox_messages" ("id", "topic", "key", "payload")
SELECT gen_random_uuid(), 't', 'k' || (i % 100), '\x00' FROM generate_series(1, $1::int) AS i`, n); err != nil {
		t.Fatal(err)
	}
}

// TestEnqueueTakesItsXidBeforeItsSeq: Enqueue's insert assigns the transaction's
// xid before any row's seq default runs (a one-time filter above the rows), so no
// seq is ever held by a transaction the relay's snapshots cannot see as open.
func TestEnqueueTakesItsXidBeforeItsSeq(t *testing.T) {
	t.Parallel()
	db := testenv.NewDB(t)
	plan := genericPlan(t, db, "enqueue", `'{}'::uuid[], '{}'::text[], '{}'::text[], '{}'::bytea[], '{}'::jsonb[]`)
	if !regexp.MustCompile(`"One-Time Filter": "\(pg_current_xact_id\(\) IS NOT NULL\)"`).MatchString(plan) {
		t.Fatalf("enqueue does not take its xid before its rows' seqs:\n%s", plan)
	}
}

// TestSettleDoesNotScanTheWholeTableWithAPlanCachedWhileItWasSmall: a connection keeps the
// settle's generic plan, and on a table of a page or two that plan is a sequential
// scan (cheaper there than the TID scan, costed for ten rows). The table grew, or
// its pages filled with rows vacuum had not removed yet, and every settle on that
// connection still read all of it: in BenchmarkSagaLoad's order saga (open loop,
// 400/s) 1354 of 2080 settles, 247 buffers and 0.35 ms each against 15 and 0.04 ms.
// The settle now plans with sequential scans off.
func TestSettleDoesNotScanTheWholeTableWithAPlanCachedWhileItWasSmall(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.NewDB(t)
	// No analyze during the test: it would drop the cached plans.
	if _, err := db.Pool.Exec(ctx, `ALTER TABLE "sagabox"."outbox_messages" SET (autovacuum_enabled = false)`); err != nil {
		t.Fatal(err)
	}
	cfg, err := pgxpool.ParseConfig(db.URL)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 1 // one connection, one plan cache
	one, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer one.Close()
	s := outbox.NewStore("")
	fillRows(t, db, 100)
	claimed := claimAll(t, s, db.Pool, 100)
	// Settles of ten rows: the custom plans' TID scans cost more than the generic
	// plan's sequential scan of the small table, so after five of them the
	// connection keeps the generic plan.
	for i := 0; i < 80; i += 10 {
		if err := s.Settle(ctx, one, locsOf(claimed[i:i+10]), nil); err != nil {
			t.Fatal(err)
		}
	}
	fillRows(t, db, 20000)
	// This connection's scans only: pg_stat_xact_user_tables counts those of its
	// transaction (and any of its earlier ones not yet flushed to pg_stat_user_tables).
	tx, err := one.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if err := s.Settle(ctx, tx, locsOf(claimed[80:]), nil); err != nil {
		t.Fatal(err)
	}
	var n int64
	if err := tx.QueryRow(ctx, `SELECT "seq_scan" FROM pg_stat_xact_user_tables
		WHERE "relid" = '"sagabox"."outbox_messages"'::regclass`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("the settle of 20 rows scanned the 20000-row table %d time(s) with the plan cached on 100 rows", n)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if n := countRows(t, db); n != 20000 {
		t.Errorf("%d rows left, want the 20000 not settled", n)
	}
}
