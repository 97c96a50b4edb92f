-- +goose Up
-- Rows become visible in commit order, not in seq order: the relay publishes the committed rows
-- in seq order, each once no earlier row of its key is still waiting (see relay/doc.go, "Commit
-- order", for why seq and not (txid, seq)).
--
-- "shard" spreads keys over 256 shards (the relay's unit of ownership). It is computed here,
-- not by producers, so no writer can disagree about a key's shard. 256 is fixed by this
-- expression and by the rows of "outbox_leases": change both together, with every relay stopped.
CREATE TABLE "outbox_messages" (
    "id"              uuid        PRIMARY KEY,
    "seq"             bigint      GENERATED ALWAYS AS IDENTITY,
    "txid"            xid8        NOT NULL DEFAULT pg_current_xact_id(),
    "topic"           text        NOT NULL,
    "key"             text        NOT NULL DEFAULT '',
    "shard"           smallint    NOT NULL GENERATED ALWAYS AS ((hashtext("key") & 255)::smallint) STORED,
    "payload"         bytea       NOT NULL,
    "headers"         jsonb       NOT NULL DEFAULT '{}',
    "created_at"      timestamptz NOT NULL DEFAULT now(),
    "attempts"        integer     NOT NULL DEFAULT 0,
    "next_attempt_at" timestamptz,
    "last_error"      text,
    "dead_at"         timestamptz
);
CREATE INDEX "outbox_messages_pending_idx" ON "outbox_messages" ("seq") WHERE "dead_at" IS NULL;
CREATE INDEX "outbox_messages_dead_idx" ON "outbox_messages" ("dead_at") WHERE "dead_at" IS NOT NULL;
-- Rows waiting for a retry hold back the later rows of their key; few rows are ever in it.
CREATE INDEX "outbox_messages_waiting_idx" ON "outbox_messages" ("key", "seq")
    WHERE "dead_at" IS NULL AND "next_attempt_at" IS NOT NULL;

-- One statement-level NOTIFY per inserting statement wakes the relays; identical notifications
-- of one transaction are folded into one by PostgreSQL. The channel names the schema so relays
-- of different schemas do not wake each other.
-- +goose StatementBegin
CREATE FUNCTION "outbox_messages_notify"() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(left(TG_TABLE_SCHEMA || '.outbox', 63), '');
    RETURN NULL;
END
$$;
-- +goose StatementEnd
CREATE TRIGGER "outbox_messages_notify" AFTER INSERT ON "outbox_messages"
    FOR EACH STATEMENT EXECUTE FUNCTION "outbox_messages_notify"();

-- Relays alive now: each relay's fair share of the shards is ceil(256 / live relays).
CREATE TABLE "outbox_relays" (
    "id"         text        PRIMARY KEY,
    "started_at" timestamptz NOT NULL DEFAULT now(),
    "expires_at" timestamptz NOT NULL
);

-- Which relay owns which shard, until when. Only the owner publishes a shard's rows.
CREATE TABLE "outbox_leases" (
    "shard"      smallint    PRIMARY KEY,
    "owner"      text,
    "expires_at" timestamptz NOT NULL DEFAULT '-infinity',
    "epoch"      bigint      NOT NULL DEFAULT 0
);
INSERT INTO "outbox_leases" ("shard") SELECT generate_series(0, 255);

-- +goose Down
DROP TABLE "outbox_leases";
DROP TABLE "outbox_relays";
DROP TABLE "outbox_messages";
DROP FUNCTION "outbox_messages_notify"();
