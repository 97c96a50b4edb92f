-- +goose Up
-- The console lists sagas newest first with keyset paging on ("created_at", "id"); with a
-- status filter it walks ("status", "created_at", "id"). Both stay a few index pages per page
-- at any table size. Stats read finished sagas of a window by "finished_at".
CREATE INDEX "saga_instances_created_idx" ON "saga_instances" ("created_at", "id");
CREATE INDEX "saga_instances_status_created_idx" ON "saga_instances" ("status", "created_at", "id");
CREATE INDEX "saga_instances_finished_idx" ON "saga_instances" ("finished_at") WHERE "finished_at" IS NOT NULL;

-- +goose Down
DROP INDEX "saga_instances_finished_idx";
DROP INDEX "saga_instances_status_created_idx";
DROP INDEX "saga_instances_created_idx";
