// Package kafkatest has test helpers for consumers: produce records with chosen
// headers (duplicates, malformed ones) and wait until a consumer group has committed
// every record of a topic. It talks to any Kafka-protocol broker through kafka-go.
package kafkatest
