// Package inbox makes consumed messages take effect exactly once.
//
// A consumer calls Record with the message id inside the same PostgreSQL
// transaction as the message's effect. The first Record of a (consumer, message
// id) pair inserts a row and reports true: run the effect and commit. Any later
// Record of the same pair — a Kafka redelivery, a rebalance replay, a restart
// before the offset commit — reports false: skip the effect and acknowledge the
// message. If the transaction rolls back, the row goes with it and the next
// delivery is processed as if it were the first. Two transactions recording the
// same pair at once serialise on the primary key: the second waits for the first
// and reports false if it committed.
//
// Guarantee: within the retention window, an effect recorded with its message id
// happens at most once per consumer name, and (with an at-least-once source such as
// the relay plus package inbox/consumer) exactly once.
//
// Retention: Sweep (or a Sweeper) deletes entries older than the retention window.
// The window is the dedup horizon: a redelivery that arrives more than the window
// after the first delivery is no longer recognised and is processed again. Choose it
// longer than the longest time a message can be redelivered after it was first
// processed — at least the Kafka topic's retention if consumers may be reset to the
// earliest offset, and comfortably more than any realistic consumer lag. The default
// is 7 days (Kafka's default log.retention.hours).
//
// Dead letters: messages a consumer can never process are stored in the
// inbox_dead_letters table with their reason (see AddDeadLetter, ListDeadLetters),
// whatever bytes they carry: key, value and the headers' exact bytes as bytea, with
// NUL and invalid UTF-8 escaped (\xNN) only in the readable headers and the reason,
// since PostgreSQL text and jsonb refuse them. consumer.Replay publishes one again
// once its cause is fixed, DeleteDeadLetter discards it; either resolves it: it is
// listed no more, and a Sweeper deletes it DeadLetterRetention (30 days by default)
// after it was resolved. Unresolved dead letters are never swept.
//
// This package depends only on pgx; the Kafka consumer loop built on it is package
// inbox/consumer.
package inbox
