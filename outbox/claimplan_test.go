package outbox_test

import (
	"context"
	"strings"
	"testing"

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
	if _, err := db.Pool.Exec(ctx, `INSERT INTO "sagabox"."outbox_messages" ("id", "topic", "key", "payload")
SELECT gen_random_uuid(), 't', 'k' || (i % 100), '\x00' FROM generate_series(1, 20000) AS i`); err != nil {
		t.Fatal(err)
	}
	// Most rows failed once and are due again; one waits an hour.
	if _, err := db.Pool.Exec(ctx, `UPDATE "sagabox"."outbox_messages" SET "attempts" = 1,
    "next_attempt_at" = CASE WHEN "seq" = (SELECT max("seq") FROM "sagabox"."outbox_messages") THEN now() + interval '1 hour' ELSE now() - interval '1 minute' END
WHERE "seq" % 10 <> 0`); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Pool.Exec(ctx, `ANALYZE "sagabox"."outbox_messages"`); err != nil {
		t.Fatal(err)
	}
	conn, err := db.Pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	defer conn.Exec(ctx, `RESET plan_cache_mode`) //nolint:errcheck // the connection is the test's
	s := outbox.NewStore("")
	// Custom plans know the time and estimate the waiting rows from the statistics;
	// they may read the table when it is small, by cost, not by a wrong estimate.
	for _, mode := range []string{"force_generic_plan"} {
		if _, err := conn.Exec(ctx, `SET plan_cache_mode = `+mode); err != nil {
			t.Fatal(err)
		}
		for name, args := range map[string]string{"claim": `100, now(), 0, NULL, '{0,1,2}'`, "claim_all": `100, now(), 0, NULL`} {
			if _, err := conn.Exec(ctx, `PREPARE plan_`+name+` AS `+outbox.StatementOf(s, name)); err != nil {
				t.Fatal(err)
			}
			var plan string
			if err := conn.QueryRow(ctx, `EXPLAIN (FORMAT JSON) EXECUTE plan_`+name+`(`+args+`)`).Scan(&plan); err != nil {
				t.Fatal(err)
			}
			if _, err := conn.Exec(ctx, `DEALLOCATE plan_`+name); err != nil {
				t.Fatal(err)
			}
			if strings.Contains(plan, `"Seq Scan"`) {
				t.Errorf("%s, %s: the plan scans the whole table:\n%s", name, mode, plan)
			}
			// The shard test probes a hash of the shards per row (outbox_messages.sql, claim).
			if name == "claim" && !strings.Contains(plan, "hashed SubPlan") {
				t.Errorf("%s, %s: the shard test is not a hashed SubPlan:\n%s", name, mode, plan)
			}
		}
	}
}
