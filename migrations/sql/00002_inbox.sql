-- +goose Up
-- Receive-side dedup: one row per (consumer, message id), inserted in the transaction of the
-- message's effect. Rows older than the retention window are swept; a redelivery older than
-- the window is no longer recognised.
CREATE TABLE "inbox_messages" (
    "consumer"    text        NOT NULL,
    "message_id"  uuid        NOT NULL,
    "received_at" timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY ("consumer", "message_id")
);
CREATE INDEX "inbox_messages_received_at_idx" ON "inbox_messages" ("received_at");

-- Messages a consumer could never process (malformed, permanent handler error, or past its
-- attempt limit), with the reason. Kept until an operator deletes or replays them.
-- "message_id" is NULL when the record had no valid message-id header; the source position
-- (consumer, topic, partition, offset) is unique so a redelivered poison record is stored once.
CREATE TABLE "inbox_dead_letters" (
    "id"         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    "consumer"   text        NOT NULL,
    "message_id" uuid,
    "topic"      text        NOT NULL,
    "partition"  integer     NOT NULL,
    "offset"     bigint      NOT NULL,
    "key"        bytea,
    "value"      bytea,
    "headers"    jsonb       NOT NULL DEFAULT '{}',
    "attempts"   integer     NOT NULL,
    "reason"     text        NOT NULL,
    "dead_at"    timestamptz NOT NULL DEFAULT now(),
    UNIQUE ("consumer", "topic", "partition", "offset")
);
CREATE INDEX "inbox_dead_letters_consumer_idx" ON "inbox_dead_letters" ("consumer", "dead_at");

-- Participant barrier: one row per (saga, step, op) decides duplicates, null compensations
-- and hanging forwards. "outcome" and "result" are what the participant replied, so a
-- duplicate command gets the same answer again. A compensation that finds no forward row
-- also inserts the forward row with outcome 'ignored' (null compensation), which makes a
-- later forward command a hanging one.
CREATE TABLE "saga_barrier" (
    "saga_id"    uuid        NOT NULL,
    "step"       text        NOT NULL,
    "op"         text        NOT NULL CHECK ("op" IN ('forward', 'compensate')),
    "outcome"    text        NOT NULL,
    "reason"     text        NOT NULL DEFAULT '',
    "result"     bytea,
    "created_at" timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY ("saga_id", "step", "op")
);
CREATE INDEX "saga_barrier_created_at_idx" ON "saga_barrier" ("created_at");

-- +goose Down
DROP TABLE "saga_barrier";
DROP TABLE "inbox_dead_letters";
DROP TABLE "inbox_messages";
