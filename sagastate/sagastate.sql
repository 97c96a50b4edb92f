-- Every statement on the saga tables "saga_instances", "saga_steps" and "saga_events"
-- (migrations/sql/00003_sagastate.sql), by name; and unsend_commands, which takes a
-- duplicate Start's commands back out of the outbox.
--
-- Each statement follows a "-- name: <name>" line. They are written for the default
-- schema, so each one runs as it is in psql; an orchestrator for another schema puts its
-- quoted schema in place of "sagabox" in the table names, and changes nothing else.
--
-- Time. A parameter named "now" below is NULL unless the orchestrator was given a clock
-- (Config.Now, for tests): the database's clock_timestamp() stands in, so deadlines set
-- on one host are compared on another with the same clock.

-- name: start_saga
-- Start: a new saga's instance row, its steps and its first log entries, in one
-- statement, sent with the outbox insert of its first commands. The orchestrator
-- computes the first transition before it knows the start time: at the reference time
-- $2, which the statement moves every time column by to the start time ($1 is now).
-- The instance row goes first, and a duplicate id inserts nothing there ("saga" has no
-- row), so nothing else either: no error, and the caller's transaction stays usable
-- (the commands are then taken back, unsend_commands). It returns the start time and
-- the row's xmin. The shift is a number of microseconds: the difference of two
-- timestamptz values comes in days and hours, and a day added to a timestamptz is a
-- calendar day in the session's time zone, 23 or 25 hours across a daylight saving change.
WITH "now" AS (
    SELECT interval '1 microsecond' * ((extract(epoch FROM coalesce($1::timestamptz, clock_timestamp()))
        - extract(epoch FROM $2::timestamptz)) * 1000000)::float8 AS "shift"),
"saga" AS (
    INSERT INTO "sagabox"."saga_instances" ("id", "type", "status", "payload", "last_error", "wake_at", "created_at",
        "updated_at", "finished_at")
    SELECT $3, $4, $5, $6, $7, $8::timestamptz + "shift", $9::timestamptz + "shift", $10::timestamptz + "shift",
        $11::timestamptz + "shift"
    FROM "now"
    ON CONFLICT ("id") DO NOTHING
    RETURNING "id", "created_at", "xmin"),
"steps" AS (
    INSERT INTO "sagabox"."saga_steps" ("saga_id", "name", "position", "stage", "topic", "do_command", "undo_command",
        "timeout_ms", "retry", "undo_retry", "status", "op", "attempt", "attempt_base", "deadline", "next_attempt_at",
        "must_undo", "done_seq", "input", "result", "last_error", "started_at", "finished_at")
    SELECT "saga"."id", u.name, u.position, u.stage, u.topic, u.do_command, u.undo_command, u.timeout_ms, u.retry,
        u.undo_retry, u.status, u.op, u.attempt, u.attempt_base, u.deadline + "shift", u.next_attempt_at + "shift",
        u.must_undo, u.done_seq, u.input, u.result, u.last_error, u.started_at + "shift", u.finished_at + "shift"
    FROM "saga", "now", unnest($12::text[], $13::int[], $14::int[], $15::text[], $16::text[], $17::text[], $18::bigint[],
        $19::jsonb[], $20::jsonb[], $21::text[], $22::text[], $23::int[], $24::int[], $25::timestamptz[],
        $26::timestamptz[], $27::bool[], $28::int[], $29::bytea[], $30::bytea[], $31::text[], $32::timestamptz[],
        $33::timestamptz[])
        AS u(name, position, stage, topic, do_command, undo_command, timeout_ms, retry, undo_retry, status, op, attempt,
             attempt_base, deadline, next_attempt_at, must_undo, done_seq, input, result, last_error, started_at,
             finished_at)),
"events" AS (
    INSERT INTO "sagabox"."saga_events" ("saga_id", "at", "type", "step", "op", "attempt", "detail")
    SELECT "saga"."id", u.at + "shift", u.type, u.step, u.op, u.attempt, u.detail
    FROM "saga", "now", unnest($34::timestamptz[], $35::text[], $36::text[], $37::text[], $38::int[], $39::text[])
        AS u(at, type, step, op, attempt, detail))
SELECT "created_at", "xmin" FROM "saga";

-- name: unsend_commands
-- Start of a duplicate id: the commands enqueued with start_saga, in this transaction
-- (so no relay has seen them), are deleted again; the transaction is as it was.
DELETE FROM "sagabox"."outbox_messages" WHERE "id" = ANY($1::uuid[]);

-- name: lock_instances
-- The sagas a transaction changes, locked in id order: two transactions that lock
-- overlapping sets wait for each other instead of deadlocking. After the instance
-- columns: the time the transition computes with ($2 is now), the row's xmin (the
-- transaction that wrote it; it tells whether the steps the orchestrator remembers are
-- the row's), and this transaction's own id: the xmin its writes will have (outside a
-- savepoint), known before they are sent.
SELECT "id", "type", "status", "payload", "version", "last_error", "wake_at", "created_at", "updated_at",
    "finished_at", "aborted_at", coalesce($2::timestamptz, clock_timestamp()), "xmin", pg_current_xact_id()::xid
FROM "sagabox"."saga_instances"
WHERE "id" = ANY($1::uuid[])
ORDER BY "id"
FOR UPDATE;

-- name: select_instance
SELECT "id", "type", "status", "payload", "version", "last_error", "wake_at", "created_at", "updated_at",
    "finished_at", "aborted_at", coalesce($2::timestamptz, clock_timestamp())
FROM "sagabox"."saga_instances"
WHERE "id" = $1;

-- name: write_sagas
-- A transition's writes, for every saga of the transaction, in one statement: the
-- instance rows ("sagas"), the steps that changed ("steps": the plan columns never
-- change after Start) and the new log entries ("events").
--
-- Each instance row changes only if still at the version it was read at. The check
-- fails the statement by itself: a row at another version gets a NULL "version", which
-- its NOT NULL constraint refuses (SQLSTATE 23502, column "version"), so the statement
-- can go with the COMMIT and nothing commits when it fails. It returns the rows' new
-- xmin, for the orchestrator's memory of their steps (a row deleted meanwhile is
-- missing: the caller checks the count, except when the statement goes with the
-- COMMIT, where the rows locked by the prefetched read cannot be deleted meanwhile).
WITH "sagas" AS (
    UPDATE "sagabox"."saga_instances" AS s
    SET "status" = u.status, "version" = CASE WHEN s."version" = u.version THEN s."version" + 1 END,
        "last_error" = u.last_error, "wake_at" = u.wake_at,
        "updated_at" = u.updated_at, "finished_at" = u.finished_at, "aborted_at" = u.aborted_at
    FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::text[], $5::timestamptz[], $6::timestamptz[],
                $7::timestamptz[], $8::timestamptz[])
        AS u(id, version, status, last_error, wake_at, updated_at, finished_at, aborted_at)
    WHERE s."id" = u.id
    RETURNING s."id", s."xmin"),
"steps" AS (
    UPDATE "sagabox"."saga_steps" AS s
    SET "status" = u.status, "op" = u.op, "attempt" = u.attempt, "attempt_base" = u.attempt_base,
        "deadline" = u.deadline, "next_attempt_at" = u.next_attempt_at, "must_undo" = u.must_undo,
        "done_seq" = u.done_seq, "input" = u.input, "result" = u.result, "last_error" = u.last_error,
        "started_at" = u.started_at, "finished_at" = u.finished_at
    FROM unnest($9::uuid[], $10::text[], $11::text[], $12::text[], $13::int[], $14::int[], $15::timestamptz[],
                $16::timestamptz[], $17::bool[], $18::int[], $19::bytea[], $20::bytea[], $21::text[],
                $22::timestamptz[], $23::timestamptz[])
        AS u(saga_id, name, status, op, attempt, attempt_base, deadline, next_attempt_at, must_undo,
             done_seq, input, result, last_error, started_at, finished_at)
    WHERE s."saga_id" = u.saga_id AND s."name" = u.name),
"events" AS (
    INSERT INTO "sagabox"."saga_events" ("saga_id", "at", "type", "step", "op", "attempt", "detail")
    SELECT * FROM unnest($24::uuid[], $25::timestamptz[], $26::text[], $27::text[], $28::text[], $29::int[],
                         $30::text[]))
SELECT "id", "xmin" FROM "sagas";

-- name: due_sagas
-- The sweeper's batch: sagas of the registered types $3 whose deadline or scheduled
-- retry is due ($1 is now), earliest first, skipping those another transaction holds.
-- The time is a subquery, computed once: compared with clock_timestamp() (volatile)
-- directly, "wake_at" cannot bound the index scan, which then reads every saga that has
-- a wake-up (measured: 19-100 buffer hits for an empty result, against 1).
SELECT "id" FROM "sagabox"."saga_instances"
WHERE "wake_at" <= (SELECT coalesce($1::timestamptz, clock_timestamp())) AND "type" = ANY($3::text[])
ORDER BY "wake_at"
LIMIT $2
FOR UPDATE SKIP LOCKED;

-- name: any_due
-- The sweeper's look before it opens a transaction: a row if due_sagas would find a
-- saga (locked by another transaction or not). Written as due_sagas is, ORDER BY and
-- LIMIT included, so that it reads the wake_at index: measured, 2 buffer hits for no
-- row, against 65 (a sequential scan of 3,000 sagas) for the same test as EXISTS (...).
SELECT 1 FROM "sagabox"."saga_instances"
WHERE "wake_at" <= (SELECT coalesce($1::timestamptz, clock_timestamp())) AND "type" = ANY($2::text[])
ORDER BY "wake_at"
LIMIT 1;

-- name: postpone_instance
-- The sweeper could not handle this saga: look again after $2 instead of at once, so
-- one saga that keeps failing neither spins the sweeper nor stays first in line.
UPDATE "sagabox"."saga_instances"
SET "wake_at" = coalesce($3::timestamptz, clock_timestamp()) + $2::interval
WHERE "id" = $1;

-- name: list_instances
-- List: every filter is optional ('' / an empty array / NULL match everything).
-- $3 is the StuckFor cutoff age, $4 CreatedBefore, $6 now.
SELECT "id", "type", "status", "payload", "version", "last_error", "wake_at", "created_at", "updated_at",
    "finished_at", "aborted_at", coalesce($6::timestamptz, clock_timestamp())
FROM "sagabox"."saga_instances"
WHERE ($1 = '' OR "type" = $1)
  AND (cardinality($2::text[]) = 0 OR "status" = ANY($2::text[]))
  AND ($3::interval IS NULL OR ("finished_at" IS NULL AND "updated_at" <= coalesce($6::timestamptz, clock_timestamp()) - $3::interval))
  AND ($4::timestamptz IS NULL OR "created_at" < $4::timestamptz)
ORDER BY "created_at" DESC, "id"
LIMIT $5;

-- name: count_by_status
-- Stats: sagas of type $1 ('' for all) created at or after $2 (NULL for all time).
SELECT "status", count(*) FROM "sagabox"."saga_instances"
WHERE ($1 = '' OR "type" = $1) AND ($2::timestamptz IS NULL OR "created_at" >= $2::timestamptz)
GROUP BY "status";

-- name: time_to_consistency
-- Stats: percentiles of finished_at - created_at, in seconds, over the completed and
-- compensated sagas of the same selection.
SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY d), percentile_cont(0.99) WITHIN GROUP (ORDER BY d), max(d)
FROM (SELECT extract(epoch FROM "finished_at" - "created_at") AS d FROM "sagabox"."saga_instances"
      WHERE ($1 = '' OR "type" = $1) AND ($2::timestamptz IS NULL OR "created_at" >= $2::timestamptz)
        AND "status" IN ('completed', 'compensated') AND "finished_at" IS NOT NULL) AS t;

-- name: delete_finished
-- Retention: up to $2 sagas that finished longer than $1 ago ($3 is now), oldest first,
-- with their steps and events (no foreign keys: they go in this statement). Only a
-- finished saga has "finished_at" (completed, compensated, or failed and aborted), and
-- the finished index finds them. Rows another transaction holds are skipped; an
-- unfinished saga (running, compensating, timeout, or failed and waiting for an
-- operator) is never touched.
WITH "gone" AS (
    DELETE FROM "sagabox"."saga_instances" WHERE "id" IN (
        SELECT "id" FROM "sagabox"."saga_instances"
        WHERE "finished_at" < (SELECT coalesce($3::timestamptz, clock_timestamp()) - $1::interval) -- once (see due_sagas)
          AND "status" IN ('completed', 'compensated', 'failed')
        ORDER BY "finished_at"
        LIMIT $2
        FOR UPDATE SKIP LOCKED)
    RETURNING "id"),
"steps" AS (DELETE FROM "sagabox"."saga_steps" WHERE "saga_id" IN (SELECT "id" FROM "gone")),
"events" AS (DELETE FROM "sagabox"."saga_events" WHERE "saga_id" IN (SELECT "id" FROM "gone"))
SELECT count(*) FROM "gone";

-- name: plan_settings
-- Around the statements of a transition (lock_instances and select_steps in one round
-- trip, write_sagas in the other; once, with the first, when the two are the reply
-- consumer's BEGIN and COMMIT), in the transaction: no sequential scans, and generic
-- plans.
--
-- Sequential scans: the plans are cached per connection and kept until the table is
-- next analyzed; built while the saga tables were a few pages (a new database, the
-- first minute before autovacuum comes by), they read the whole table, which then
-- keeps growing. Measured (BenchmarkSagaLoad, no-op saga): the steps' update (then a
-- statement of its own) 80-114 buffer hits and 0.8-1.2 ms per call for 4-5 rows,
-- against 20 hits and 0.34 ms with the index; BenchmarkStateDB, lock_instances 92
-- hits for 8 rows against 25.
--
-- Generic plans: with the default plan_cache_mode, a statement whose parameter is an
-- array (id = ANY($1), unnest($1)) is planned again at every run: the generic plan's
-- estimate (a default row count for the array) looks dearer than the custom plans',
-- which see the array. Measured (BenchmarkSagaLoad, no-op saga, pg_stat_statements
-- with track_planning): lock_instances planned at 1174 of 1282 runs and the
-- transition's write at 904 of 1282, 0.15-0.5 ms each, 0.31 ms per saga in all. With
-- index scans only, the generic plan is the custom one: an index scan per array
-- element, in array order.
--
-- The previous settings are kept in "sagabox.enable_seqscan" and
-- "sagabox.plan_cache_mode" and put back after.
SELECT set_config('sagabox.enable_seqscan', current_setting('enable_seqscan'), true), set_config('enable_seqscan', 'off', true),
    set_config('sagabox.plan_cache_mode', current_setting('plan_cache_mode'), true),
    set_config('plan_cache_mode', 'force_generic_plan', true);

-- name: plan_settings_as_before
SELECT set_config('enable_seqscan', current_setting('sagabox.enable_seqscan'), true),
    set_config('plan_cache_mode', current_setting('sagabox.plan_cache_mode'), true);

-- name: select_steps
-- The steps of the sagas $1, in declaration order.
SELECT "saga_id", "name", "position", "stage", "topic", "do_command", "undo_command", "timeout_ms", "retry",
    "undo_retry", "status", "op", "attempt", "attempt_base", "deadline", "next_attempt_at", "must_undo",
    "done_seq", "input", "result", "last_error", "started_at", "finished_at"
FROM "sagabox"."saga_steps"
WHERE "saga_id" = ANY($1::uuid[])
ORDER BY "saga_id", "position";

-- name: select_events
SELECT "id", "saga_id", "type", "at", "step", "op", "attempt", "detail"
FROM "sagabox"."saga_events"
WHERE "saga_id" = $1
ORDER BY "id";

-- name: feed_start
-- The event feed starts at events committed after this point.
SELECT pg_snapshot_xmin(pg_current_snapshot())::text;

-- name: feed_events
-- The event feed: events after the cursor ($1 txid, $2 id) whose transaction is older
-- than every running one, so no event can still appear before them (as the relay reads
-- the outbox).
SELECT "txid"::text, "id", "saga_id", "type", "at", "step", "op", "attempt", "detail"
FROM "sagabox"."saga_events"
WHERE ("txid", "id") > ($1::text::xid8, $2) AND "txid" < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY "txid", "id"
LIMIT $3;
