-- +goose Up
-- Fewer index entries and checks per saga transition (issue 9: PostgreSQL's CPU bounds
-- the saga path on small machines).
--
-- saga_instances: every transition rewrote "updated_at", an indexed column
-- (saga_instances_status_idx), so no update of an instance row could be HOT and each one
-- wrote an entry into all seven indexes. Its readers use other indexes now: retention
-- deletes by "finished_at" (saga_instances_finished_idx), a StuckFor listing reads the
-- unfinished statuses' ranges of saga_instances_status_created_idx (the sagas in flight)
-- and filters by "updated_at". Together with the orchestrator keeping "wake_at" where it
-- is while the next wake-up is not earlier, a transition in mid-saga changes no indexed
-- column and stays on its page.
DROP INDEX "saga_instances_status_idx";

-- saga_steps and saga_events: the foreign keys ran a FOR KEY SHARE lookup of the instance
-- row for every step and event inserted (14 per no-op 4-step saga), under the same
-- transaction's row lock on that instance. The orchestrator writes the three tables
-- together, and retention deletes a saga's steps and events in the statement that
-- deletes it.
ALTER TABLE "saga_steps" DROP CONSTRAINT "saga_steps_saga_id_fkey";
ALTER TABLE "saga_events" DROP CONSTRAINT "saga_events_saga_id_fkey";

-- +goose Down
-- Rows left without their saga (none when only sagastate wrote) would block the keys.
DELETE FROM "saga_events" e WHERE NOT EXISTS (SELECT 1 FROM "saga_instances" s WHERE s."id" = e."saga_id");
DELETE FROM "saga_steps" t WHERE NOT EXISTS (SELECT 1 FROM "saga_instances" s WHERE s."id" = t."saga_id");
ALTER TABLE "saga_events" ADD CONSTRAINT "saga_events_saga_id_fkey"
    FOREIGN KEY ("saga_id") REFERENCES "saga_instances" ("id") ON DELETE CASCADE;
ALTER TABLE "saga_steps" ADD CONSTRAINT "saga_steps_saga_id_fkey"
    FOREIGN KEY ("saga_id") REFERENCES "saga_instances" ("id") ON DELETE CASCADE;
CREATE INDEX "saga_instances_status_idx" ON "saga_instances" ("status", "updated_at");
