-- +goose Up
-- A poison record must be storable as a dead letter whatever bytes it carries: jsonb
-- rejects a header holding NUL (22P05) and cannot hold invalid UTF-8 exactly. The
-- headers' exact bytes go to two arrays (names and values, in record order); "headers"
-- keeps a readable copy in which such bytes are escaped (\x00). NULL arrays: a row
-- written before this migration, whose "headers" are exact.
ALTER TABLE "inbox_dead_letters"
    ADD COLUMN "header_names"  bytea[],
    ADD COLUMN "header_values" bytea[],
    -- Retention: replaying or deleting a dead letter resolves it; resolved rows are swept
    -- after a while (inbox.SweeperConfig.DeadLetterRetention) and listed no more.
    ADD COLUMN "resolved_at"   timestamptz,
    ADD COLUMN "resolution"    text CHECK ("resolution" IN ('replayed', 'deleted'));
CREATE INDEX "inbox_dead_letters_resolved_idx" ON "inbox_dead_letters" ("resolved_at") WHERE "resolved_at" IS NOT NULL;

-- +goose Down
DROP INDEX "inbox_dead_letters_resolved_idx";
ALTER TABLE "inbox_dead_letters"
    DROP COLUMN "resolution",
    DROP COLUMN "resolved_at",
    DROP COLUMN "header_values",
    DROP COLUMN "header_names";
