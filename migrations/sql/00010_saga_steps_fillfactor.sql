-- +goose Up
-- Half of each saga_steps page left free for updates (issue 9). A step row is about 450
-- bytes (the plan copied at Start: topic, commands, both retry policies as jsonb, the
-- input) and is rewritten about twice per saga (executing, then completed), after the four
-- rows of its saga were inserted side by side. With fillfactor 80 the page often had no
-- room for the new version, and a third of the updates were not HOT: a new primary key
-- entry each, and a page split now and then. Measured (BenchmarkStateDB, 2,688 no-op
-- 4-step sagas, 18,816 step updates, pg_stat_statements): HOT 62-65% at 80, 93-96% at 50;
-- update_steps 0.98 → 0.51 ms, 96.5 → 74.8 buffer hits and 4.7 → 2.7 kB of WAL per call
-- (8 sagas); the table was 11 and 12 MB. That benchmark's sagas are started and advanced
-- eight at a time, as a reply consumer's batches advance sagas started together; in
-- BenchmarkSagaLoad's no-op saga, whose sagas drift apart, 97% of the step updates were
-- HOT at 80 already (100% at 50). The cost is the space of sagas that finished:
-- their pages stay about half full until retention deletes them (about 3.6 kB per saga of
-- four steps instead of 2.2 kB).
-- Only pages filled from now on are affected; the existing ones keep their rows.
ALTER TABLE "saga_steps" SET (fillfactor = 50);
-- +goose Down
ALTER TABLE "saga_steps" SET (fillfactor = 80);
