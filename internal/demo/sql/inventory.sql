-- Runs with search_path set to the service's own schema, so no schema name appears here.
CREATE TABLE IF NOT EXISTS "stock" (
    "sku"       text    PRIMARY KEY,
    "available" integer NOT NULL CHECK ("available" >= 0),
    -- What was put on the shelf when the sku was seeded: available plus what live
    -- reservations hold must always equal it.
    "seeded"    integer NOT NULL DEFAULT 0
);
ALTER TABLE "stock" ADD COLUMN IF NOT EXISTS "seeded" integer NOT NULL DEFAULT 0;
CREATE TABLE IF NOT EXISTS "reservations" (
    "order_id"   uuid        PRIMARY KEY,
    "sku"        text        NOT NULL REFERENCES "stock" ("sku"),
    "qty"        integer     NOT NULL CHECK ("qty" > 0),
    "status"     text        NOT NULL CHECK ("status" IN ('reserved', 'released')),
    "created_at" timestamptz NOT NULL DEFAULT now(),
    "updated_at" timestamptz NOT NULL DEFAULT now()
);
