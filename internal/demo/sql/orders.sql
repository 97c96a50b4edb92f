-- Runs with search_path set to the service's own schema, so no schema name appears here.
CREATE TABLE IF NOT EXISTS "orders" (
    "id"         uuid        PRIMARY KEY,
    "customer"   text        NOT NULL,
    "sku"        text        NOT NULL,
    "qty"        integer     NOT NULL CHECK ("qty" > 0),
    "amount"     bigint      NOT NULL CHECK ("amount" >= 0),
    "status"     text        NOT NULL CHECK ("status" IN ('created', 'cancelled')),
    "created_at" timestamptz NOT NULL DEFAULT now(),
    "updated_at" timestamptz NOT NULL DEFAULT now()
);
