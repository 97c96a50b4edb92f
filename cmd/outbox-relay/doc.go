// Command outbox-relay publishes committed outbox rows from PostgreSQL to Kafka.
//
// Run several on one database: they share the key shards and take over from one
// another (see package relay). Every flag also reads an environment variable;
// --help lists both.
package main
