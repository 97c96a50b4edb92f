-- Runs with search_path set to the bank's own schema, so no schema name appears here.
CREATE TABLE IF NOT EXISTS "accounts" (
    "id"      text    PRIMARY KEY,
    "balance" bigint  NOT NULL CHECK ("balance" >= 0),
    -- A frozen account accepts no credit: the demo's way to make a credit fail.
    "frozen"  boolean NOT NULL DEFAULT false
);
CREATE TABLE IF NOT EXISTS "transfers" (
    "id"         uuid        PRIMARY KEY,
    "source"     text        NOT NULL,
    "target"     text        NOT NULL,
    "amount"     bigint      NOT NULL CHECK ("amount" > 0),
    "status"     text        NOT NULL CHECK ("status" IN ('requested', 'debited', 'credited', 'credit_failed', 'rejected', 'completed', 'reversed')),
    "reason"     text        NOT NULL DEFAULT '',
    "created_at" timestamptz NOT NULL DEFAULT clock_timestamp(),
    "updated_at" timestamptz NOT NULL DEFAULT clock_timestamp()
);
-- One row per money movement; the primary key refuses a second debit, credit or
-- refund of one transfer even if a duplicate slipped past the inbox.
CREATE TABLE IF NOT EXISTS "ledger" (
    "transfer_id" uuid        NOT NULL,
    "kind"        text        NOT NULL CHECK ("kind" IN ('debit', 'credit', 'refund')),
    "account"     text        NOT NULL,
    "amount"      bigint      NOT NULL,
    "at"          timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY ("transfer_id", "kind")
);
CREATE TABLE IF NOT EXISTS "audit_log" (
    "transfer_id" uuid        PRIMARY KEY,
    "outcome"     text        NOT NULL,
    "detail"      text        NOT NULL DEFAULT '',
    "at"          timestamptz NOT NULL DEFAULT clock_timestamp()
);
