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
// Ordering and concurrency: records of one partition are handled by one of
// Concurrency workers, and records of one key in one partition in offset order;
// different partitions run in parallel. Under load a worker takes up to BatchSize
// records already queued for it (they may come from several of its partitions) and
// handles them in one transaction (one commit for many records). After that commit
// the newest offset of every partition in the batch is marked done.
//
// Batching: a worker whose batch is not full waits BatchWait (200µs) for one more
// record, again after each that comes, up to 5×BatchWait: the records of one relay
// publish reach it through the fetches of several partitions, a fraction of a
// millisecond apart, and went into a transaction each. The fewer workers, the more
// records each transaction gathers: participants and the saga orchestrator run one
// (participants.DefaultConcurrency), since their handlers turn failures into
// replies and no record of theirs waits in a retry backoff. In BenchmarkSagaLoad
// (2 cores, load 5-12) one worker with the wait against eight without took the CPU
// per flow at 64 in flight from 5.7-6.4 to 3.6-3.7 ms (raw outbox + consumer) and
// 11.8-13.6 to 5.9-6.2 ms (no-op 4-step saga), and 8 in flight from 13.1-13.7 to
// 9.9-10.5 ms and 18.9-25.5 to 13.9-14.7 ms. One worker gathered 3.0 records per
// transaction at an offered 300 flows/s without the wait, 4.8 with it (raw flow,
// pg_stat_statements, load 8-11). The wait adds BatchWait to a record that comes
// alone. Eight workers (the default here, for
// handlers that may fail and back off) gain little from the wait: each serves
// about one partition.
//
// Lock order: within a shared transaction records run sorted by Config.LockKey
// (default: the Kafka key), then topic, partition and offset; records of one key in
// one partition stay in offset order. Transactions of different workers that lock
// the rows their records' lock keys name therefore lock them in one global order
// and cannot deadlock on them. What a handler must do:
//   - lock the rows it changes in a deterministic order (ORDER BY the primary key ...
//     FOR UPDATE before updating several rows), never in the order a payload lists them;
//   - if it locks rows its record's Kafka key does not name (a SKU in an order keyed
//     by saga id), set LockKey to name them (e.g. the SKU from the payload), or key
//     the records by those rows at the producer;
//   - touch hot rows late in the transaction and keep it short.
//
// Any deadlock that remains is retried locally (below), not failed, and makes its
// worker handle the next 1000 records one per transaction before batching again:
// with handlers updating 8 hot rows their keys do not name, fixed batches of 8 or 32
// collapsed to 25-79 msg/s (each deadlock waits deadlock_timeout, 1s), this rule
// keeps 520-530 msg/s, one record per transaction gives 920-1040 and batches of 32
// in LockKey order 1390-1480 with no deadlock (BenchmarkHotRows, 2 cores, load ~30).
// Without contention batches of 32 run 8.6x one per transaction (BenchmarkConsume),
// so BatchSize stays 32.
//
// Errors: the consumer owns its transactions, so it retries what the database did
// to them. A transient database error (IsTransient: deadlock 40P01, serialization
// failure 40001, lock or statement timeout 55P03/57014, server shutdown, a lost
// connection) returned by the handler or met around it — and any database error of
// begin, the inbox statements or commit — spends none of the record's attempts: the
// shared transaction is run once more as a whole, then its records one per
// transaction, each again until it commits, with jittered exponential backoff
// starting at 10ms (or MinBackoff if shorter) and capped at MaxBackoff. These local
// retries are counted by Hooks.LocalRetry and logged at debug level; from the 11th
// retry of one record on (the database is down rather than contended) they are
// logged as warnings, and the backoff stays at MaxBackoff. A record is never
// dead-lettered because the database was unavailable: its partition waits until the
// database is back. (A statement that always exceeds statement_timeout therefore
// stalls its partition, visibly in the log, the LocalRetry count and the lag; raise
// the timeout or make the handler return Permanent for it.) A handler that turns
// errors into messages (a participant's "retryable" reply) must return transient
// errors unchanged instead, so they are retried here and never reach a saga.
//
// Any other handler error is retried on the same record with exponential backoff
// (MinBackoff to MaxBackoff, with jitter), holding back later records of that
// partition so order is kept; a commit refused by a deferred constraint (class 23)
// counts as such a handler error. Errors wrapped with Permanent, records without a
// valid message-id header (malformed) and records still failing after MaxAttempts
// are dead-lettered, and so is a record whose handler panicked (the panic is
// recovered, ErrHandlerPanic with the panic value and stack is the reason, and the
// process stays up): stored in inbox_dead_letters, together with their inbox row so
// a redelivery is skipped, in one transaction — then the partition moves on. Any
// record can be stored so, whatever bytes its key, value, headers or the error text
// hold (see package inbox); storing it is retried like a local retry, backing off,
// only while the database fails. If a
// batch fails, its transaction is rolled back and its records are handled one per
// transaction, in fetch order, so a failure never affects its neighbours. Attempt
// counts live in memory: a restart starts counting again.
//
// A partition whose head record is being retried stops only that partition's worker;
// once that worker's queue (QueueCapacity) is full the shared kafka-go reader waits
// too, so a long retry eventually slows every partition of this consumer until the
// record succeeds or is dead-lettered.
package consumer
