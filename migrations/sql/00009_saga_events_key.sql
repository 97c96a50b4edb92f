-- +goose Up
-- One index fewer per saga event (issue 9). saga_events had a primary key on "id"
-- alone and an index on ("saga_id", "id") for a saga's log (Get, Events) and retention:
-- every event, ten per no-op 4-step saga, went into three indexes, and the "id" one,
-- like the feed's ("txid", "id"), grows at its right edge, where concurrent orchestrator
-- transactions wait for each other's page lock. Nothing looks an event up by "id"
-- alone (the feed reads by ("txid", "id")), and "id" is unique by itself, so
-- ("saga_id", "id") is the primary key now and the saga index goes.
-- Rebuilding the key reads the whole table: on a large saga_events run it when the
-- orchestrators are stopped or quiet.
ALTER TABLE "saga_events" DROP CONSTRAINT "saga_events_pkey";
DROP INDEX "saga_events_saga_idx";
ALTER TABLE "saga_events" ADD CONSTRAINT "saga_events_pkey" PRIMARY KEY ("saga_id", "id");

-- +goose Down
ALTER TABLE "saga_events" DROP CONSTRAINT "saga_events_pkey";
ALTER TABLE "saga_events" ADD CONSTRAINT "saga_events_pkey" PRIMARY KEY ("id");
CREATE INDEX "saga_events_saga_idx" ON "saga_events" ("saga_id", "id");
