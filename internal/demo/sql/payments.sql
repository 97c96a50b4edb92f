-- Runs with search_path set to the service's own schema, so no schema name appears here.
CREATE TABLE IF NOT EXISTS "payments" (
    "order_id"   uuid        PRIMARY KEY,
    "amount"     bigint      NOT NULL CHECK ("amount" >= 0),
    "status"     text        NOT NULL CHECK ("status" IN ('captured', 'refunded')),
    "created_at" timestamptz NOT NULL DEFAULT now(),
    "updated_at" timestamptz NOT NULL DEFAULT now()
);
