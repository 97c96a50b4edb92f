// Package outbox writes messages into the caller's PostgreSQL transaction so
// that a business change and the messages announcing it commit or roll back
// together.
//
// Guarantee: a message enqueued in a transaction that rolls back is never
// published; a message enqueued in a transaction that commits is published at
// least once by the relay (package relay), in commit order per key. Consumers
// get exactly-once effects by deduplicating on the message id (package inbox).
//
// Enqueue validates every message before writing any of them: an empty or
// invalid topic, an oversized payload or an invalid header is rejected with an
// error naming the message and the problem, and nothing is written.
//
// Each row's "shard" (hashtext(key) & 255, computed by the database) decides which
// relay publishes it; see package relay. For operators (sagactl): Stats reports
// the backlog and dead letters, ListDead shows the dead-lettered rows with their
// errors, RetryDead makes them pending again.
//
// Every statement on the outbox_messages table is in outbox_messages.sql, by
// name, readable and runnable as SQL: Enqueue's insert, the relay's claim and
// settle (Store, which package relay calls) and the operator functions. Nothing
// else in the module queries the table.
package outbox
