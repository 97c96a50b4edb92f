// Package vacuumsoak measures the hot tables over a sustained run: N messages are
// enqueued, published by a relay and consumed through the inbox (with a short dedup
// window, so the retention sweep deletes too), while the size, live and dead rows and
// autovacuum runs of outbox_messages and inbox_messages are sampled every 5s, to show
// that size and dead rows stay bounded (figures in migration 00007's comments).
//
// It is a test behind an environment variable, not part of make test:
//
//	SAGABOX_VACUUM_SOAK=1000000 go test -run TestSustainedTableSizes -v -timeout 60m ./internal/vacuumsoak/
//
// SAGABOX_VACUUM_SOAK_BASELINE=1 first resets the tables' settings to PostgreSQL's
// defaults, for the comparison. On the throwaway cluster autovacuum_naptime is set to
// SAGABOX_VACUUM_SOAK_NAPTIME (default 10s), as migration 00007 recommends.
package vacuumsoak
