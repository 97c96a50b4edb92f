// Package relayprom exports the relay's hooks as Prometheus metrics.
//
// Metrics (namespace "sagabox_relay"): published_total{topic}, failed_total{topic},
// dead_lettered_total{topic}, batch_duration_seconds, batch_size, lag_seconds (age
// of the oldest unpublished row), owned_shards and publish_latency_seconds (enqueue
// to broker acknowledgement, from the message's UUIDv7 time). Outbox adds gauges read
// from the database at scrape time: pending and dead_lettered.
// BuildInfo adds sagabox_build_info. It observes only; it never changes what the
// relay does.
package relayprom
