// Package relayprom exports the relay's hooks as Prometheus metrics.
//
// Metrics (namespace "sagabox_relay"): published_total{topic}, failed_total{topic},
// dead_lettered_total{topic}, batch_duration_seconds, batch_size, lag_seconds (age
// of the oldest unpublished row) and owned_shards. It observes only; it never
// changes what the relay does.
package relayprom
