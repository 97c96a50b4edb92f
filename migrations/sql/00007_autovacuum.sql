-- +goose Up
-- Autovacuum for the hot tables. PostgreSQL's defaults vacuum a table once its dead rows
-- pass 50 + 20% of its rows and throttle the vacuum (cost delay 2ms): right for tables that
-- grow, wrong for queues whose rows are deleted minutes after they are written. There the
-- live row count is small, the dead ones pile up between vacuums, and one backlog that
-- once made the table large (reltuples) raises the 20% bar for long after it drained.
-- Dead rows cost the relay's and consumers' index scans (they step over them) and bloat
-- the table until vacuum makes the space reusable.
--
-- So the queue-like tables vacuum after a fixed number of dead rows, whatever their size
-- (scale factor 0), unthrottled (the table is small, the vacuum must keep up with the
-- deletes), and analyze as often, so the planner's row estimates follow the churn.
-- Per-table settings cannot change autovacuum_naptime (1min by default: how often the
-- launcher looks at a database), and measured, that is what bounds the outbox. The
-- sustained run (internal/vacuumsoak, 1M messages at ~4k msg/s, relay and consumer
-- keeping up, 2 loaded cores) peaked at: naptime 1min: outbox 132MB / 348k dead rows
-- with these settings, 102MB / 255k with the defaults; naptime 10s: 30MB / 59k with
-- these settings, 28MB / 70k with the defaults; every run back to 6-22MB and 0 dead rows
-- after it. While the queue drains, its few live rows make the default 20% bar as low
-- as this fixed one, so these settings matter for a table a backlog once made large
-- (its reltuples raise the 20% bar long after), which that run does not show. For high
-- message rates set autovacuum_naptime to 10-15s in postgresql.conf.

-- outbox_messages: every row is inserted, published within milliseconds and deleted.
ALTER TABLE "outbox_messages" SET (
    autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 5000,
    autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_insert_threshold = 5000,
    autovacuum_analyze_scale_factor = 0, autovacuum_analyze_threshold = 5000,
    autovacuum_vacuum_cost_delay = 0
);

-- inbox_messages: one row per consumed message, deleted by the retention sweep in batches
-- (days later). Insert-driven vacuums keep the visibility map current for the dedup
-- lookups; 2% keeps the dead rows of each sweep from waiting for a 20% bar.
ALTER TABLE "inbox_messages" SET (
    autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_threshold = 10000,
    autovacuum_vacuum_insert_scale_factor = 0.05, autovacuum_analyze_scale_factor = 0.05
);

-- Saga tables: every reply updates a saga's instance row and a step row in place. Free
-- space on each page (fillfactor) lets updates that change no indexed column stay on the
-- page (HOT: no index entry, cleaned without vacuum): most step updates, since the step's
-- only index is its primary key. Retention deletes finished sagas in batches later.
ALTER TABLE "saga_instances" SET (
    fillfactor = 80,
    autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.05
);
ALTER TABLE "saga_steps" SET (
    fillfactor = 80,
    autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.05
);
-- saga_events is append-only until retention: insert-driven vacuums keep its visibility
-- map (the listener feed and the console read it by index).
ALTER TABLE "saga_events" SET (
    autovacuum_vacuum_insert_scale_factor = 0.05,
    autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.05
);
-- saga_barrier: one insert and one update per command, swept by age.
ALTER TABLE "saga_barrier" SET (
    fillfactor = 90,
    autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_threshold = 1000
);

-- +goose Down
ALTER TABLE "saga_barrier" RESET (fillfactor, autovacuum_vacuum_scale_factor, autovacuum_vacuum_threshold);
ALTER TABLE "saga_events" RESET (autovacuum_vacuum_insert_scale_factor, autovacuum_vacuum_scale_factor,
    autovacuum_analyze_scale_factor);
ALTER TABLE "saga_steps" RESET (fillfactor, autovacuum_vacuum_scale_factor, autovacuum_vacuum_threshold,
    autovacuum_analyze_scale_factor);
ALTER TABLE "saga_instances" RESET (fillfactor, autovacuum_vacuum_scale_factor, autovacuum_vacuum_threshold,
    autovacuum_analyze_scale_factor);
ALTER TABLE "inbox_messages" RESET (autovacuum_vacuum_scale_factor, autovacuum_vacuum_threshold,
    autovacuum_vacuum_insert_scale_factor, autovacuum_analyze_scale_factor);
ALTER TABLE "outbox_messages" RESET (autovacuum_vacuum_scale_factor, autovacuum_vacuum_threshold,
    autovacuum_vacuum_insert_scale_factor, autovacuum_vacuum_insert_threshold,
    autovacuum_analyze_scale_factor, autovacuum_analyze_threshold, autovacuum_vacuum_cost_delay);
