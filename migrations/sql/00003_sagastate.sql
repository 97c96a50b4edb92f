-- +goose Up
-- Saga state lives here and only here: the orchestrator keeps nothing in memory that a crash
-- could lose. Every change to a saga happens in one transaction that locks its instance row
-- (FOR UPDATE), bumps "version", rewrites its steps, appends to "saga_events" and enqueues the
-- next commands into the outbox.
CREATE TABLE "saga_instances" (
    "id"          uuid        PRIMARY KEY,
    "type"        text        NOT NULL,
    "status"      text        NOT NULL CHECK ("status" IN ('running', 'completed', 'failed', 'compensating', 'compensated', 'timeout')),
    "payload"     jsonb       NOT NULL,
    "version"     bigint      NOT NULL DEFAULT 1,
    "last_error"  text        NOT NULL DEFAULT '',
    -- The earliest time the sweeper must look at this saga again (a step deadline or a
    -- scheduled retry); NULL when the saga waits only for replies or has ended.
    "wake_at"     timestamptz,
    "created_at"  timestamptz NOT NULL,
    "updated_at"  timestamptz NOT NULL,
    "finished_at" timestamptz,
    "aborted_at"  timestamptz
);
CREATE INDEX "saga_instances_wake_idx" ON "saga_instances" ("wake_at") WHERE "wake_at" IS NOT NULL;
CREATE INDEX "saga_instances_status_idx" ON "saga_instances" ("status", "updated_at");
CREATE INDEX "saga_instances_type_idx" ON "saga_instances" ("type", "created_at");

CREATE TABLE "saga_steps" (
    "saga_id"         uuid        NOT NULL REFERENCES "saga_instances" ("id") ON DELETE CASCADE,
    "name"            text        NOT NULL,
    "position"        integer     NOT NULL,
    "stage"           integer     NOT NULL,
    -- The step's plan is copied from its definition at Start, so a saga finishes with the
    -- plan it began with even if the definition changes, and an operator can resume its
    -- compensation without the definition.
    "topic"           text        NOT NULL,
    "do_command"      text        NOT NULL,
    "undo_command"    text        NOT NULL DEFAULT '',
    "timeout_ms"      bigint      NOT NULL,
    "retry"           jsonb       NOT NULL,
    "undo_retry"      jsonb       NOT NULL,
    "status"          text        NOT NULL CHECK ("status" IN ('pending', 'executing', 'completed', 'failed', 'compensating', 'compensated', 'timeout')),
    "op"              text        NOT NULL DEFAULT 'forward' CHECK ("op" IN ('forward', 'compensate')),
    "attempt"         integer     NOT NULL DEFAULT 0,
    -- Attempts before this one do not count against the retry limit (an operator Retry
    -- starts a fresh allowance while attempt numbers keep growing, so old replies stay stale).
    "attempt_base"    integer     NOT NULL DEFAULT 0,
    "deadline"        timestamptz,
    "next_attempt_at" timestamptz,
    "must_undo"       boolean     NOT NULL DEFAULT false,
    -- Order in which steps completed (or timed out): compensation runs in reverse of it.
    "done_seq"        integer     NOT NULL DEFAULT 0,
    "input"           bytea,
    "result"          bytea,
    "last_error"      text        NOT NULL DEFAULT '',
    "started_at"      timestamptz,
    "finished_at"     timestamptz,
    PRIMARY KEY ("saga_id", "name")
);

-- Listeners read this log after commit: like the outbox, rows are read only below the
-- oldest running transaction (pg_snapshot_xmin) in ("txid", "id") order, so none is skipped.
CREATE TABLE "saga_events" (
    "id"      bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    "txid"    xid8        NOT NULL DEFAULT pg_current_xact_id(),
    "saga_id" uuid        NOT NULL REFERENCES "saga_instances" ("id") ON DELETE CASCADE,
    "at"      timestamptz NOT NULL,
    "type"    text        NOT NULL,
    "step"    text        NOT NULL DEFAULT '',
    "op"      text        NOT NULL DEFAULT '',
    "attempt" integer     NOT NULL DEFAULT 0,
    "detail"  text        NOT NULL DEFAULT ''
);
CREATE INDEX "saga_events_saga_idx" ON "saga_events" ("saga_id", "id");
CREATE INDEX "saga_events_feed_idx" ON "saga_events" ("txid", "id");

-- +goose Down
DROP TABLE "saga_events";
DROP TABLE "saga_steps";
DROP TABLE "saga_instances";
