// Package promsql builds Prometheus collectors whose values come from a query run at
// scrape time (outbox backlog, sagas in flight, dead letters): state that lives in
// PostgreSQL, shared by every process, rather than in one process's memory.
//
// Each scrape runs the query once, bounded by a timeout. A failed query emits none of
// the collector's gauges (so no stale value is shown) and sets its
// <namespace>_scrape_error gauge to 1; the rest of the scrape is unaffected.
package promsql
