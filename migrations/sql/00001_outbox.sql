-- +goose Up
-- Rows become visible in commit order, not in seq order: the relay reads only rows whose txid
-- is below the oldest running transaction (pg_snapshot_xmin) and orders by (txid, seq).
CREATE TABLE "outbox_messages" (
    "id"              uuid        PRIMARY KEY,
    "seq"             bigint      GENERATED ALWAYS AS IDENTITY,
    "txid"            xid8        NOT NULL DEFAULT pg_current_xact_id(),
    "topic"           text        NOT NULL,
    "key"             text        NOT NULL DEFAULT '',
    "payload"         bytea       NOT NULL,
    "headers"         jsonb       NOT NULL DEFAULT '{}',
    "created_at"      timestamptz NOT NULL DEFAULT now(),
    "attempts"        integer     NOT NULL DEFAULT 0,
    "next_attempt_at" timestamptz,
    "last_error"      text,
    "dead_at"         timestamptz
);
CREATE INDEX "outbox_messages_pending_idx" ON "outbox_messages" ("txid", "seq") WHERE "dead_at" IS NULL;
CREATE INDEX "outbox_messages_dead_idx" ON "outbox_messages" ("dead_at") WHERE "dead_at" IS NOT NULL;

-- +goose Down
DROP TABLE "outbox_messages";
