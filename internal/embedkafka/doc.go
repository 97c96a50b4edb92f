// Package embedkafka runs an in-process Kafka-protocol cluster (franz-go's kfake)
// for tests and the demo when no KAFKA_BROKERS are given.
//
// It is a test broker: lenient where a real Kafka is strict (old API versions,
// no quotas). Keep broker addresses configurable so the same code runs against
// a real cluster.
package embedkafka
