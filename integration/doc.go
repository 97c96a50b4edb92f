// Package integration is sagabox's end-to-end suite: PostgreSQL and a Kafka-protocol broker
// run as containers (testcontainers-go), the relay and the saga's services run as real
// processes (relays: cmd/outbox-relay with 6 s leases; the order saga: cmd/orderdemo
// --role driver|orders|inventory|payments|shipping), both built once per run, and
// faults are injected the way production brings them — a relay killed with SIGKILL
// mid-batch, two relays with one killed, the PostgreSQL container restarted, the broker
// stopped for 20 s, a participant killed between its database commit and its offset
// commit, every message delivered twice.
//
// Guarantees checked after every fault: no outbox message lost; per key the messages reach
// Kafka in commit order (the first delivery of each message comes after the first delivery
// of its predecessor; redelivery of an in-flight batch is allowed and counted); every saga
// completed or compensated as expected; no effect applied twice (stock conserved, no
// payment or shipment left for a compensated order, every record applied once).
//
// The files carry the build tag "integration"; run them with
//
//	make integration
//
// Images default to the official ones (postgres:16-alpine, apache/kafka:3.9.1), so a machine
// with Docker and a registry just runs the suite. Override them with
// SAGABOX_IT_POSTGRES_IMAGE and SAGABOX_IT_KAFKA_IMAGE; an image whose name contains
// "kafkabroker" is run as cmd/kafkabroker (scripts/build-images.sh builds both locally, as
// .ci/run does where no registry can be reached). Without a reachable Ryuk reaper set
// TESTCONTAINERS_RYUK_DISABLED=true; the suite removes its containers itself and labels
// them sagabox-it=1.
package integration
