// Package consumerprom exports a consumer's hooks (package inbox/consumer) as
// Prometheus metrics, and the inbox's dead letters as a gauge read at scrape time.
//
// Metrics (namespace "sagabox_consumer", labels consumer and topic):
// handled_total (records whose transaction committed, duplicates included),
// duplicates_total (skipped by the inbox), retries_total (after a handler failure;
// spends an attempt), local_retries_total (a transaction run again after a transient
// database error), dead_lettered_total, handler_duration_seconds{outcome} (one handler
// call, ok or error) and lag_records{partition} (records behind the newest one handled,
// from its fetch's high-water mark). DeadLetters adds
// sagabox_inbox_dead_letters{consumer}. It observes only; it never changes what the
// consumer does.
package consumerprom
