-- Every statement on "outbox_messages" (migrations/sql/00001_outbox.sql), for
-- Enqueue, the relay's claim and settle, and the operator functions.
--
-- Each statement follows a "-- name: <name>" line. They are written for the default
-- schema, so each one runs as it is in psql; a Store for another schema puts its
-- quoted table name in place of "sagabox"."outbox_messages", and changes nothing else.

-- name: enqueue
-- One statement for all messages of an Enqueue call. The transaction takes its xid
-- (pg_current_xact_id, a one-time filter) before the first row takes its seq: a
-- transaction whose first write this is would otherwise hold a seq without an xid
-- for a moment, invisible to the relay's snapshots as an open transaction, and the
-- relay could pass that seq (relay/floor.go) before the row commits.
INSERT INTO "sagabox"."outbox_messages" ("id", "topic", "key", "payload", "headers")
SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bytea[], $5::jsonb[])
WHERE pg_current_xact_id() IS NOT NULL;

-- name: claim
-- The oldest pending rows of the shards $5 after seq $3, in seq (insert) order, at most $1.
-- Not scanned at all: rows waiting for a retry ($2 is now), and every later row of
-- a key whose earlier row waits for one; so rows waiting for a retry, keyed or
-- not, never fill the LIMIT, and rows without a key hold nothing back. Every
-- scanned row is committed (visible) and ready, whatever other transaction is still
-- open: a key's rows go out in the order their transactions committed (package
-- relay, "Commit order"). A claim that follows on in a run ($4, the run's first
-- snapshot, see outbox.Cursor) takes only rows that snapshot saw; the others, and
-- every later row of their key, wait for the next run. The claim returns its
-- snapshot (or $4) for the claims that follow on, and whether any pending row has
-- failed before (it waits for its retry or is due: a relay's loop then scans from
-- the oldest row, see relay/floor.go), asked in outbox_messages_waiting_idx's order
-- like the retry test below, so that no plan reads the table for it.
-- Whether any row waits for a retry is asked once per claim (an InitPlan): when
-- none does, the usual case, no scanned row needs the NOT EXISTS, a lookup per
-- row (measured: a fifth of the claim's CPU, 2 buffers a row). It is asked in
-- outbox_messages_waiting_idx's order so that every plan reads that index:
-- as a plain EXISTS, the generic plan read the whole table when many failed rows
-- were due again (TestClaimDoesNotScanTheTableWhenManyRetriesAreDue).
-- The shard test, "shard IN $5", is written NOT ... NOT IN so that it stays a hashed
-- SubPlan (NOT IN is never made a join): one hash probe per scanned row. "= ANY($5)"
-- compares with each of up to 256 shards per row in a generic plan (its array is a
-- parameter, not a constant PostgreSQL would hash), and "IN (SELECT ...)" becomes a
-- nested-loop semi join. Measured, backend CPU of a 500-row claim of 128 shards:
-- 2.2-3.0 ms with = ANY, 1.9 ms so, 1.5-1.8 ms with no shard test.
-- "shard" BETWEEN $6 AND $7 (the lowest and highest of $5) is an index condition on
-- outbox_messages_pending_shard_idx's second column: rows of shards outside that range
-- (the other relays', whose leases are other ranges) are passed over in the index, and
-- not fetched from the heap (their index entries are still read: no skip scan).
-- The claim ends at the row that brings its payloads to $8 bytes ("upto", a running
-- sum over the scanned rows, which the caller reads to tell whether the bound cut the
-- claim short): the rows after it are never sent, nor their payloads detoasted
-- (octet_length reads a TOAST pointer's size). Cutting the result on the client
-- instead left the server sending up to $1 payloads a claim, 7-19× slower for
-- messages of 64-128 KiB.
WITH run AS MATERIALIZED (SELECT $4::text::pg_snapshot AS snap)
SELECT c."seq", c."id", c."ctid", c."topic", c."key", c."payload", c."headers", c."attempts", c."ready", c."snap",
    c."retrying", c."upto"
FROM (
SELECT m."seq", m."id", m."ctid", m."topic", m."key", m."payload", m."headers", m."attempts",
    (SELECT snap FROM run) IS NULL OR pg_visible_in_snapshot(m."txid", (SELECT snap FROM run)) AS "ready",
    (SELECT COALESCE(snap, pg_current_snapshot())::text FROM run) AS "snap",
    (SELECT f."seq" FROM "sagabox"."outbox_messages" AS f WHERE f."dead_at" IS NULL AND f."next_attempt_at" IS NOT NULL
     ORDER BY f."key", f."seq" LIMIT 1) IS NOT NULL AS "retrying",
    sum(octet_length(m."payload")) OVER (ORDER BY m."seq" ROWS UNBOUNDED PRECEDING) AS "upto"
FROM "sagabox"."outbox_messages" AS m
WHERE m."dead_at" IS NULL
  AND m."seq" > $3
  AND m."shard" BETWEEN $6::smallint AND $7::smallint
  AND NOT (m."shard" NOT IN (SELECT unnest($5::smallint[])))
  AND (m."next_attempt_at" IS NULL OR m."next_attempt_at" <= $2)
  AND (m."key" = ''
       OR (SELECT w."seq" FROM "sagabox"."outbox_messages" AS w WHERE w."dead_at" IS NULL AND w."next_attempt_at" > $2
           ORDER BY w."key", w."seq" LIMIT 1) IS NULL
       OR NOT EXISTS (
           SELECT 1 FROM "sagabox"."outbox_messages" AS w
           WHERE w."key" = m."key" AND w."dead_at" IS NULL AND w."next_attempt_at" > $2 AND w."seq" < m."seq"))
ORDER BY m."seq"
LIMIT $1) AS c
WHERE c."upto" - octet_length(c."payload") < $8::bigint
ORDER BY c."seq";

-- name: claim_all
-- claim for a relay that owns every shard (the common case): no shard filter; $5 is
-- claim's $8.
WITH run AS MATERIALIZED (SELECT $4::text::pg_snapshot AS snap)
SELECT c."seq", c."id", c."ctid", c."topic", c."key", c."payload", c."headers", c."attempts", c."ready", c."snap",
    c."retrying", c."upto"
FROM (
SELECT m."seq", m."id", m."ctid", m."topic", m."key", m."payload", m."headers", m."attempts",
    (SELECT snap FROM run) IS NULL OR pg_visible_in_snapshot(m."txid", (SELECT snap FROM run)) AS "ready",
    (SELECT COALESCE(snap, pg_current_snapshot())::text FROM run) AS "snap",
    (SELECT f."seq" FROM "sagabox"."outbox_messages" AS f WHERE f."dead_at" IS NULL AND f."next_attempt_at" IS NOT NULL
     ORDER BY f."key", f."seq" LIMIT 1) IS NOT NULL AS "retrying",
    sum(octet_length(m."payload")) OVER (ORDER BY m."seq" ROWS UNBOUNDED PRECEDING) AS "upto"
FROM "sagabox"."outbox_messages" AS m
WHERE m."dead_at" IS NULL
  AND m."seq" > $3
  AND (m."next_attempt_at" IS NULL OR m."next_attempt_at" <= $2)
  AND (m."key" = ''
       OR (SELECT w."seq" FROM "sagabox"."outbox_messages" AS w WHERE w."dead_at" IS NULL AND w."next_attempt_at" > $2
           ORDER BY w."key", w."seq" LIMIT 1) IS NULL
       OR NOT EXISTS (
           SELECT 1 FROM "sagabox"."outbox_messages" AS w
           WHERE w."key" = m."key" AND w."dead_at" IS NULL AND w."next_attempt_at" > $2 AND w."seq" < m."seq"))
ORDER BY m."seq"
LIMIT $1) AS c
WHERE c."upto" - octet_length(c."payload") < $5::bigint
ORDER BY c."seq";

-- name: probe
-- Wake-ups: the highest seq of a pending row after seq $1 (NULL when there is
-- none), and the snapshot's xmin and xmax. The relay asks it with the last answer,
-- so the index range it reads is the rows added since. A transaction open at the
-- probe (its xid below xmax) may hold a row with a lower seq, which it commits
-- later: the relay claims again once xmin has passed that xmax.
SELECT max("seq"), pg_snapshot_xmin(pg_current_snapshot()), pg_snapshot_xmax(pg_current_snapshot())
FROM "sagabox"."outbox_messages" WHERE "dead_at" IS NULL AND "seq" > $1;

-- name: settle_plan
-- Around the settle's statements, in its transaction: no sequential scans, and
-- generic plans. A connection keeps the generic plan of delete_published, and on a
-- table of a few pages that plan is a sequential scan: cheaper there than a TID scan
-- costed for ten rows, and cheaper than the custom plans of settles of more than a
-- few rows, so it is the plan kept. The table grows, or fills with rows vacuum has
-- not removed yet, and each settle still reads all of it. Measured
-- (BenchmarkSagaLoad, order saga, open loop at 400/s, auto_explain): 1354 of 2080
-- settles scanned the table, 247 buffers and 0.35 ms each, against 15 buffers and
-- 0.04 ms for the TID scans. Without sequential scans the generic plan is the TID
-- scan, the custom plans' too, so none needs planning again. The previous settings
-- are kept in "sagabox.outbox_enable_seqscan" and "sagabox.outbox_plan_cache_mode" and
-- put back after (settle_plan_as_before), for a settle inside a caller's transaction.
-- sagastate's transitions do the same (sagastate/sagastate.sql, plan_settings).
SELECT set_config('sagabox.outbox_enable_seqscan', current_setting('enable_seqscan'), true),
    set_config('enable_seqscan', 'off', true),
    set_config('sagabox.outbox_plan_cache_mode', current_setting('plan_cache_mode'), true),
    set_config('plan_cache_mode', 'force_generic_plan', true);

-- name: settle_plan_as_before
SELECT set_config('enable_seqscan', current_setting('sagabox.outbox_enable_seqscan'), true),
    set_config('plan_cache_mode', current_setting('sagabox.outbox_plan_cache_mode'), true);

-- name: delete_published
-- Settle: the broker acknowledged these rows. Each is deleted where its claim found it
-- (its ctid, in $1: a TID scan, no index lookup per row; a 500-row settle took 1.97 ms
-- and 995 buffers in the relay drain benchmark against 5.2-7.4 ms and 2449 by "id")
-- and only while the row there is one of those claimed (its seq, in $2, probed in a
-- hash; seq is an identity, never reused, unlike a caller's message id). A place
-- that vacuum gave to a new row after the claimed one was deleted keeps the new row;
-- a row updated since its claim (a relay that took the shard over recorded a failure
-- on it) has moved and stays, to be published again, a duplicate (whether a settle
-- that waited for that update deletes it depends on the server's TID recheck: either
-- way nothing unpublished is deleted).
DELETE FROM "sagabox"."outbox_messages" AS m
WHERE m."ctid" = ANY($1::tid[]) AND NOT (m."seq" NOT IN (SELECT unnest($2::bigint[])));

-- name: record_failures
-- Settle: one failed attempt each, with its error and either the retry time or the
-- dead-letter time.
UPDATE "sagabox"."outbox_messages" AS m
SET "attempts" = m."attempts" + 1, "last_error" = f.err, "next_attempt_at" = f.next, "dead_at" = f.dead
FROM unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::timestamptz[]) AS f(id, err, next, dead)
WHERE m."id" = f.id;

-- name: oldest_pending
-- The relay's lag: when the oldest row still to publish was written.
SELECT "created_at" FROM "sagabox"."outbox_messages" WHERE "dead_at" IS NULL ORDER BY "seq" LIMIT 1;

-- name: stats
-- Operators: pending, waiting for a retry, dead, age of the oldest pending (seconds).
SELECT
    count(*) FILTER (WHERE "dead_at" IS NULL),
    count(*) FILTER (WHERE "dead_at" IS NULL AND "attempts" > 0),
    count(*) FILTER (WHERE "dead_at" IS NOT NULL),
    COALESCE(EXTRACT(EPOCH FROM now() - min("created_at") FILTER (WHERE "dead_at" IS NULL)), 0)::float8
FROM "sagabox"."outbox_messages";

-- name: list_dead
-- Operators: dead letters, oldest first, at most $1.
SELECT "id", "topic", "key", "payload", "headers", "attempts", COALESCE("last_error", ''), "created_at", "dead_at"
FROM "sagabox"."outbox_messages"
WHERE "dead_at" IS NOT NULL
ORDER BY "dead_at", "seq"
LIMIT $1;

-- name: lock_dead
-- Operators: lock the rows $1 before a retry, saying which of them are dead letters.
SELECT "id", "dead_at" IS NOT NULL FROM "sagabox"."outbox_messages" WHERE "id" = ANY($1::uuid[]) FOR UPDATE;

-- name: retry_dead
-- Operators: make the dead letters $1 pending again with a fresh attempt count.
UPDATE "sagabox"."outbox_messages"
SET "dead_at" = NULL, "attempts" = 0, "next_attempt_at" = NULL
WHERE "dead_at" IS NOT NULL AND "id" = ANY($1::uuid[]);

-- name: retry_all_dead
-- Operators: make every dead letter pending again with a fresh attempt count.
UPDATE "sagabox"."outbox_messages"
SET "dead_at" = NULL, "attempts" = 0, "next_attempt_at" = NULL
WHERE "dead_at" IS NOT NULL;

-- name: topic_backlog
-- Operators (the console): per topic, pending rows, those waiting for a retry due later,
-- dead letters, and the age of the oldest pending row (seconds).
SELECT "topic",
    count(*) FILTER (WHERE "dead_at" IS NULL),
    count(*) FILTER (WHERE "dead_at" IS NULL AND "next_attempt_at" > now()),
    count(*) FILTER (WHERE "dead_at" IS NOT NULL),
    COALESCE(EXTRACT(EPOCH FROM now() - min("created_at") FILTER (WHERE "dead_at" IS NULL)), 0)::float8
FROM "sagabox"."outbox_messages"
GROUP BY "topic"
ORDER BY "topic";

-- name: list_held
-- Operators (the console): pending rows the relay cannot publish now, in seq order, at
-- most $1, with the reason (the conditions of claim): a retry due later, or an earlier
-- row of the same key waiting for a retry.
SELECT m."id", m."topic", m."key", m."attempts", COALESCE(m."last_error", ''), m."created_at", m."next_attempt_at",
    CASE WHEN m."next_attempt_at" > now() THEN 'retry due later'
         ELSE 'behind a retrying row of its key' END
FROM "sagabox"."outbox_messages" AS m
WHERE m."dead_at" IS NULL
  AND (m."next_attempt_at" > now()
       OR (m."key" <> '' AND EXISTS (
           SELECT 1 FROM "sagabox"."outbox_messages" AS w
           WHERE w."key" = m."key" AND w."dead_at" IS NULL AND w."next_attempt_at" > now() AND w."seq" < m."seq")))
ORDER BY m."seq"
LIMIT $1;
