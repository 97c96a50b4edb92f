-- Runs with search_path set to the service's own schema, so no schema name appears here.
CREATE TABLE IF NOT EXISTS "shipments" (
    "order_id"   uuid        PRIMARY KEY,
    "address"    text        NOT NULL,
    "status"     text        NOT NULL CHECK ("status" IN ('scheduled', 'cancelled')),
    "created_at" timestamptz NOT NULL DEFAULT now(),
    "updated_at" timestamptz NOT NULL DEFAULT now()
);
