-- +goose Up
-- The relay's claim reads the pending rows in seq order and keeps those of its shards.
-- With several relays each one owns a range of shards (leases are taken lowest first,
-- and a relay gives up shards at the end of its range that keeps the ranges side by
-- side; see relay/lease.go), so most rows it reads belong to the others:
-- each of three relays' loops read six times the rows it took. With "shard" in the
-- pending index the claim bounds it ("shard" BETWEEN its lowest and highest shard,
-- an index condition on the second column), so the other relays' rows are skipped in
-- the index, without a heap visit. seq stays the first column: the order, the probe
-- (max seq) and the lag (min seq) read it as before. CREATE INDEX blocks producers'
-- inserts while it runs: the outbox is normally small (milliseconds); on a large
-- backlog run this migration when the producers are quiet.
DROP INDEX "outbox_messages_pending_idx";
CREATE INDEX "outbox_messages_pending_idx" ON "outbox_messages" ("seq", "shard") WHERE "dead_at" IS NULL;

-- +goose Down
DROP INDEX "outbox_messages_pending_idx";
CREATE INDEX "outbox_messages_pending_idx" ON "outbox_messages" ("seq") WHERE "dead_at" IS NULL;
