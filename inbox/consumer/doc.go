// Package consumer is sagabox's one Kafka consumer loop: a kafka-go group Reader
// whose every record runs through the inbox (package inbox) and a handler in one
// PostgreSQL transaction, and whose offset is committed only after that
// transaction committed. Participants (package participants), the saga
// orchestrator (package sagastate) and choreography services all consume through it.
//
// Guarantee: every record of the subscribed topics is handled exactly once per
// consumer Name (within the inbox retention window, Config.Retention, 7 days by
// default; Run sweeps the consumer's older inbox rows) or lands in the
// inbox_dead_letters table with its reason; none is lost. Kafka delivers at least
// once — after a crash between the database commit and the offset commit, or a
// rebalance, records come again — and the inbox turns every repeat into a skip.
//
// Per record:
//
//	BEGIN → INSERT inbox (consumer, message id) → duplicate? skip handler
//	      → handler(ctx, tx, msg) → COMMIT → mark offset done
//
// Offsets marked done are committed in batches every CommitInterval and once more
// on shutdown, each commit bounded by CommitTimeout (kafka-go's CommitMessages can
// hang around Reader.Close, so the loop stops fetching and processing first, commits,
// then closes the reader).
//
// Ordering and concurrency: records of one partition are handled one after another,
// in offset order, by one of Concurrency workers; different partitions run in
// parallel. Under load a worker takes up to BatchSize records already queued for it
// and handles them in one transaction (one commit for many records); if anything in
// such a batch fails, the transaction is rolled back and the records are handled one
// per transaction, so a failure never affects its neighbours.
//
// Errors: a handler error is retried on the same record with exponential backoff
// (MinBackoff to MaxBackoff, with jitter), holding back later records of that
// partition so order is kept. Errors wrapped with Permanent, records without a valid
// message-id header (malformed) and records still failing after MaxAttempts are
// dead-lettered: stored in inbox_dead_letters, together with their inbox row so a
// redelivery is skipped, in one transaction — then the partition moves on. Database
// errors outside the handler (begin, inbox insert, commit) are retried without limit,
// since no record can be handled or dead-lettered while the database is unreachable.
// Attempt counts live in memory: a restart starts counting again.
//
// A partition whose head record is being retried stops only that partition's worker;
// once that worker's queue (QueueCapacity) is full the shared kafka-go reader waits
// too, so a long retry eventually slows every partition of this consumer until the
// record succeeds or is dead-lettered.
package consumer
