// Package sagastate orchestrates sagas whose state lives in PostgreSQL.
//
// A saga type is a typed declaration of steps, each naming its participant's command
// topic, the command that does it and the one that undoes it, a timeout and retry policies;
// steps may be grouped into parallel stages:
//
//	var Order = sagastate.Define[OrderPayload]("order",
//		sagastate.Step("create_order", "orders.commands").Do("order.create").Undo("order.cancel"),
//		sagastate.Step("reserve_inventory", "inventory.commands").Do("inventory.reserve").Undo("inventory.release").Timeout(5*time.Second),
//		sagastate.Parallel(
//			sagastate.Step("charge_payment", "payment.commands").Do("payment.charge").Undo("payment.refund").
//				Retry(sagastate.RetryPolicy{MaxAttempts: 5, Backoff: 100 * time.Millisecond}),
//			sagastate.Step("schedule_shipping", "shipping.commands").Do("shipping.schedule").Undo("shipping.cancel"),
//		),
//	)
//
// A definition starts its own sagas with a payload of its type, in the caller's
// transaction: Order.Start(ctx, tx, orch, id, order). (Orchestrator.Start is the untyped
// form, by type name, for generic tooling.)
//
// Guarantees. Start writes the saga, its first commands (into the outbox) and its log in
// the caller's transaction: a rollback leaves nothing. Every later change — a reply, a
// timeout or scheduled retry found by the sweeper, an operator's Retry or Abort — is one
// transaction that locks the saga row, computes the next state with a pure function
// (state, input) → (state, commands, events), writes state, log and commands together and
// bumps the saga's version. Replies are consumed through the inbox, so each is applied
// exactly once; commands are published at least once by the relay and participants
// deduplicate them with their barrier. Nothing lives only in memory: a process killed at
// any point loses nothing, and another process (or the same one restarted) carries on.
//
// Failure handling. A business failure, or a step out of retries, turns the saga to
// compensating: once no forward command is in flight, every step that completed — or may
// have run, because an attempt timed out or retries ran out — is compensated, one at a
// time, in reverse order of completion. A reply that arrives after its step timed out is
// ignored: that step is being compensated, which the participant's barrier turns into a
// real undo if the step ran, or into a null compensation that also blocks the late
// forward command if it did not. A compensation that keeps failing is retried with
// exponential backoff and jitter; past its limit the saga is failed and listed for an
// operator. Operators have a way out of every unfinished saga: Abort compensates a running
// saga, and gives up a compensating, timed-out or failed one (marked failed and aborted, to
// be settled by hand); Retry resumes a failed saga's compensation, or sends a compensating
// or timed-out saga's stuck compensation again at once, with a fresh retry allowance. The
// operator's reason goes into the saga's log.
//
// Hooks (Config.Hooks) report sagas started, compensating and finished, and every step
// attempt's outcome and duration, after their transaction committed, for metrics.
//
// Unknown input. Start rejects an unknown saga type, a payload that does not decode into
// the definition's type (or fails its Validate method) and a duplicate id with an error,
// writing nothing. A reply for an unknown saga or step, or for a saga type the
// orchestrator has no definition for, is logged and dead-lettered by the reply consumer;
// a stale reply (for an attempt or op the saga has moved past) is logged and ignored.
//
// Statuses, events and queries use the usual saga vocabulary; see SagaStatus, StepStatus
// and EventType. Every event is persisted in saga_events (Get, Events) and handed to
// Config.Listeners after it commits: the listener feed reads the log like the relay reads
// the outbox (below the oldest running transaction), so a long-running transaction anywhere
// in the database delays listeners as it delays the relay. List filters by type, status
// and age (stuck sagas); Stats gives counts by status, the compensation rate and time to
// consistency percentiles.
//
// Time. Deadlines, retry times and every timestamp come from the database's clock
// (clock_timestamp() of the statement that locks the saga), and the sweeper compares
// wake_at with the same clock in SQL: orchestrators on hosts whose clocks disagree still
// agree on when a step timed out. Config.Now replaces that clock in tests.
//
// Transient database errors (deadlock, serialization failure, lost connection) in a
// transition are returned as errors, never turned into a step's outcome: the reply
// consumer retries its transaction locally (see package consumer), and the sweeper
// tries the saga again later. Sagas of one transaction are locked in id order.
//
// Retention. Run deletes finished sagas (completed, compensated, or failed and aborted)
// with their steps and events once they are older than Config.Retention (30 days), in
// small batches; a saga that has not finished is never deleted (DeleteFinished).
//
// SQL. Every statement on the saga tables is in sagastate.sql, by name, readable and
// runnable as it is. A transition reads only the saga row it locks when the row is the
// one this process wrote last (same version, same xmin): it then takes the steps it
// wrote from memory. Any other change of the row (another process, a rolled-back
// transaction, an UPDATE by hand) makes it read the steps again; so a hand edit of
// saga_steps must come with an UPDATE of the saga's saga_instances row (for example
// SET version = version) in the same transaction.
//
// Round trips. The reply consumer's transaction takes two: its BEGIN and inbox insert go
// with the lock and read of the replies' sagas (consumer Prefetch; the saga ids are in
// the records' headers), and its COMMIT with every write (consumer.QueueAtCommit). The
// writes therefore cannot be checked before the commit: the version check is in the
// statement itself (write_sagas fails on a saga at another version, so the commit fails
// and the consumer runs the transaction again), and the xmin remembered with the steps is
// the transaction's own id, read with the lock. Whatever the number of replies, the
// orchestrator adds four statements to the consumer's: plan_settings and lock_instances
// with the BEGIN (and select_steps for sagas whose steps it does not remember),
// write_sagas (instance rows, changed steps and log entries) and the commands' outbox
// insert with the COMMIT. The sweeper's and the operators' transactions send their writes
// at once. Start, in the caller's, takes one: one statement (start_saga) writes the
// instance row, its steps and its first log entries, sent with the commands' outbox
// insert. The first transition is computed before the start time is known, at a reference
// time the statement moves every time to the start time by; a duplicate id writes no saga
// row (nor steps nor events), and the commands sent with it are deleted again (one more
// round trip, for that case only).
// The sweeper applies a batch of due sagas (SweepBatch) as one transition of them all,
// in a savepoint: locked and read in one round trip, written in one more; only if that
// fails does it take them one at a time, a savepoint each, so that a saga it cannot
// handle is postponed (SweepRetryDelay) without holding back the others. An idle sweep
// is one query, outside a transaction.
//
// Batching. The reply consumer runs one transaction at a time (DefaultConcurrency,
// unless Config.Consumer.Concurrency says otherwise), gathering the replies that arrive
// while one runs into the next (and those of one relay publish, consumer BatchWait).
// Eight workers, the consumer package's default, each started a transition for the one
// or two replies of its partition: in BenchmarkSagaLoad's no-op saga at 180 sagas/s
// offered (2 cores, load 6-10) the flow took 10.7-11.1 database round trips and 34.6-36.1
// statements with them, 6.0-6.1 and 11.0-11.2 with one worker (participants the same);
// at 256 in flight 202-272 sagas/s became 312-442. A transaction takes up to
// DefaultBatchSize (128) replies: with one worker the batch is all the parallelism.
//
// Cost. Saga state is PostgreSQL work the plumbing does not do: a no-op 4-step saga
// writes 1 instance row, 4 step rows and 10 log entries, and updates the instance and
// one or two steps per reply. In BenchmarkSagaLoad (2 cores shared with PostgreSQL)
// it runs at 0.52-0.64× the plumbing's flows at 256 in flight, where two thirds of
// its extra CPU is PostgreSQL's. Measured by taking writes out (a test build, two
// interleaved rounds): with no log entries 0.59-0.65×, with no step rows (the steps
// kept in memory only) 0.65-0.68×, with neither 0.62-0.70×; BenchmarkStateDB, the
// orchestrator's database work alone, went from 0.26× its commands-only baseline to
// 0.29, 0.30 and 0.33×. Folding the steps into the instance row (a 640-byte column
// rewritten by every transition instead of step rows) gave 0.28-0.29×, and dropping
// the three listing indexes of saga_instances nothing measurable: the cost is rows
// and statements, not their layout. What is left with neither steps nor log is the
// instance row and its transaction's statements.
//
// Package sagatest runs sagas end to end inside one test function.
package sagastate
