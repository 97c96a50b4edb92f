-- +goose Up
-- saga_steps: more free space per page (issue 9). A saga's steps are inserted together,
-- on one page, and each reply updates one or two of them (seven new row versions in a
-- no-op 4-step saga, ~350 bytes each): with fillfactor 80, 30% of the updates found no
-- room on the page (BenchmarkStateDB: 13157 of 18816 HOT) and wrote the row on another
-- page and a new primary key entry. Only pages filled from now on keep the new free
-- space; the setting takes a SHARE UPDATE EXCLUSIVE lock, which does not block reads or
-- writes.
ALTER TABLE "saga_steps" SET (fillfactor = 50);

-- +goose Down
ALTER TABLE "saga_steps" SET (fillfactor = 80);
