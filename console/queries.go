package console

import (
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
)

// queries holds the console's own SQL for one schema (reads only: every write goes through
// sagastate, outbox or inbox). Table names are sanitized identifiers, never input.
type queries struct {
	listOlder, listNewer, listByID string
	boundedCount, statusEstimate   string
	types                          string
	oldestTx                       string
	inboxConsumers                 string
	relays, leases                 string
	statsBuckets                   string
}

// sagaCols are the columns of a list row.
const sagaCols = `"id", "type", "status", "created_at", "updated_at", "finished_at", "aborted_at", "last_error"`

// listSQL pages through sagas newest first by keyset ("created_at", "id"): one index range
// per status (saga_instances_status_created_idx) merged by the outer ORDER BY, so a page reads
// at most PageSize+1 index entries per status however many rows the table has and however
// the statuses are distributed. Unused filters take values that match everything (” type,
// -infinity/infinity bounds, NULL stuck time); queries run unprepared (QueryExecModeExec)
// so the planner sees the values and drops them.
//
// $1 statuses, $2 type, $3 created at or after, $4 created before, $5 unchanged since
// (stuck), $6/$7 the keyset cursor, $8 limit.
const listSQL = `SELECT i.* FROM unnest($1::text[]) AS s("status")
CROSS JOIN LATERAL (
    SELECT ` + sagaCols + ` FROM %[1]s
    WHERE "status" = s."status"
      AND ($2::text = '' OR "type" = $2::text)
      AND "created_at" >= $3::timestamptz AND "created_at" < $4::timestamptz
      AND ($5::timestamptz IS NULL OR ("finished_at" IS NULL AND "updated_at" <= $5::timestamptz))
      AND ("created_at", "id") %[2]s ($6::timestamptz, $7::uuid)
    ORDER BY "created_at" %[3]s, "id" %[3]s LIMIT $8) AS i
ORDER BY i."created_at" %[3]s, i."id" %[3]s LIMIT $8`

// boundedCountSQL counts the sagas of each status, stopping at $2 rows: exact for the
// statuses an operator looks at (failed, running), bounded work for the big ones, whose size
// comes from statusEstimate. Each status is a literal so the planner picks its plan by that
// status's frequency (an index range for a rare one, the table's first pages for a common
// one); $1 is the type (” for all).
func boundedCountSQL(inst string) string {
	var parts []string
	for _, st := range allStatuses {
		parts = append(parts, fmt.Sprintf(`SELECT '%[1]s', (SELECT count(*) FROM (SELECT 1 FROM %[2]s WHERE "status" = '%[1]s'
    AND ($1::text = '' OR "type" = $1::text) LIMIT $2) t)`, st, inst))
	}
	return strings.Join(parts, "\nUNION ALL ")
}

func newQueries(schema string) queries {
	id := func(table string) string { return pgx.Identifier{schema, table}.Sanitize() }
	inst, dead := id("saga_instances"), id("inbox_dead_letters")
	return queries{
		listOlder: fmt.Sprintf(listSQL, inst, "<", "DESC"),
		listNewer: fmt.Sprintf(listSQL, inst, ">", "ASC"),
		// An id prefix is a range of the primary key.
		listByID: `SELECT ` + sagaCols + ` FROM ` + inst + ` WHERE "id" BETWEEN $1::uuid AND $2::uuid
ORDER BY "created_at" DESC, "id" DESC LIMIT $3`,
		boundedCount: boundedCountSQL(inst),
		statusEstimate: `SELECT v::text, f * GREATEST(c.reltuples, 0)
FROM pg_stats ps, unnest(ps.most_common_vals::text::text[], ps.most_common_freqs) AS x(v, f), pg_class c
WHERE ps.schemaname = $1 AND ps.tablename = 'saga_instances' AND ps.attname = 'status'
  AND c.oid = (quote_ident($1) || '.saga_instances')::regclass`,
		// Distinct types by skipping through saga_instances_type_idx: one index probe per type.
		types: `WITH RECURSIVE t AS (
    (SELECT "type" FROM ` + inst + ` ORDER BY "type" LIMIT 1)
    UNION ALL
    SELECT (SELECT "type" FROM ` + inst + ` WHERE "type" > t."type" ORDER BY "type" LIMIT 1) FROM t WHERE t."type" IS NOT NULL)
SELECT "type" FROM t WHERE "type" IS NOT NULL LIMIT 200`,
		// The oldest open transaction: while it runs, vacuum keeps the outbox rows deleted since it started.
		oldestTx: `SELECT pid, COALESCE(usename, ''), COALESCE(application_name, ''), state, EXTRACT(EPOCH FROM now() - xact_start)::float8, left(query, 200)
FROM pg_stat_activity WHERE xact_start IS NOT NULL AND (backend_xid IS NOT NULL OR backend_xmin IS NOT NULL) AND pid <> pg_backend_pid()
ORDER BY xact_start LIMIT 1`,
		inboxConsumers: `SELECT "consumer", count(*), max("dead_at") FROM ` + dead + ` WHERE "resolved_at" IS NULL GROUP BY "consumer" ORDER BY "consumer"`,
		relays:         `SELECT "id", "started_at", "expires_at", "expires_at" > now() FROM ` + id("outbox_relays") + ` ORDER BY "id"`,
		leases: `SELECT COALESCE("owner", ''), "expires_at" > now(), array_agg("shard" ORDER BY "shard"), max("expires_at"), max("epoch")
FROM ` + id("outbox_leases") + ` GROUP BY 1, 2 ORDER BY 1, 2`,
		// Per type and time bucket over the sagas that ended in the window (a failed saga
		// ends when its compensation gave up: its last update): counts by outcome and
		// duration percentiles. $1 window start, $2 bucket seconds, $3 type ('' for all).
		statsBuckets: `WITH f AS (
    SELECT "type", "status", COALESCE("finished_at", "updated_at") AS "ended", EXTRACT(EPOCH FROM COALESCE("finished_at", "updated_at") - "created_at") AS d
    FROM ` + inst + `
    WHERE (("finished_at" >= $1::timestamptz) OR ("status" = 'failed' AND "updated_at" >= $1::timestamptz))
      AND ($3::text = '' OR "type" = $3::text))
SELECT "type", floor(EXTRACT(EPOCH FROM "ended" - $1::timestamptz) / $2::float8)::int AS b, -- NULL: the whole window
    count(*) FILTER (WHERE "status" = 'completed'),
    count(*) FILTER (WHERE "status" = 'compensated'),
    count(*) FILTER (WHERE "status" = 'failed'),
    percentile_cont(0.5) WITHIN GROUP (ORDER BY d) FILTER (WHERE "status" = 'completed'),
    percentile_cont(0.99) WITHIN GROUP (ORDER BY d) FILTER (WHERE "status" = 'completed'),
    percentile_cont(0.5) WITHIN GROUP (ORDER BY d) FILTER (WHERE "status" IN ('completed', 'compensated')),
    percentile_cont(0.99) WITHIN GROUP (ORDER BY d) FILTER (WHERE "status" IN ('completed', 'compensated'))
FROM f WHERE "status" IN ('completed', 'compensated', 'failed')
GROUP BY GROUPING SETS ((1, 2), (1)) ORDER BY 1, 2 NULLS FIRST`,
	}
}
