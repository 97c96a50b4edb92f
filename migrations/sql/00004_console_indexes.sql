-- +goose Up
-- The console lists sagas newest first with keyset paging: one range of
-- ("status", "created_at", "id") per status, merged; with a type filter the same on
-- ("type", "status", "created_at", "id"). Either reads a page's worth of index entries at any
-- table size. Stats read the sagas that finished in a window by "finished_at".
CREATE INDEX "saga_instances_status_created_idx" ON "saga_instances" ("status", "created_at", "id");
CREATE INDEX "saga_instances_type_status_created_idx" ON "saga_instances" ("type", "status", "created_at", "id");
CREATE INDEX "saga_instances_finished_idx" ON "saga_instances" ("finished_at") WHERE "finished_at" IS NOT NULL;

-- +goose Down
DROP INDEX "saga_instances_finished_idx";
DROP INDEX "saga_instances_type_status_created_idx";
DROP INDEX "saga_instances_status_created_idx";
