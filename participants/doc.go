// Package participants turns plain handler functions into saga participants.
//
// A handler is a function of (ctx, tx, command) that knows nothing of Kafka, the
// inbox or the barrier: it changes business rows in tx and returns a result, a
// business refusal (Fail) or any other error (transient). The participant consumes
// commands (package inbox/consumer, so each Kafka record takes effect at most once),
// runs the handler behind the barrier, and writes the reply (package wire)
// to the command's reply topic through the outbox — all in the one transaction of the
// business change. Handlers may enqueue further outbox messages in tx (choreography);
// they commit or roll back with the step.
//
// Guarantee: per (saga id, step, op) the business action runs at most once and every
// command gets a reply, whatever Kafka redelivers or the orchestrator resends — within
// Config.BarrierRetention (30 days by default), after which Run sweeps barrier rows —
// but not those of sagas the orchestrator has not finished, when it shares the database.
//
// The barrier is one row per (saga id, step, op) in the saga_barrier table, read before
// the handler runs and written, with the outcome and result, in the handler's
// transaction once the step is decided:
//
//   - Duplicate command (a redelivery with another message id, or an orchestrator retry
//     of a step that had in fact run): the row exists; the handler is not called and the
//     stored outcome, reason and result are replied again, with the new attempt number.
//   - Null compensation (compensate arrives, forward never ran here): the compensate row
//     and a forward row marked "ignored" are inserted; the compensate handler is not
//     called (there is nothing to undo) and the reply is success.
//   - Hanging forward (forward arrives after its compensation): the forward row exists as
//     "ignored"; the handler is not called and the reply is OutcomeIgnored.
//   - Compensating a forward that was refused (Fail): nothing took effect, so the
//     compensate handler is not called; the reply is success.
//
// Outcomes:
//
//   - nil error: success; the barrier stores the result and replies it.
//   - Fail(reason): the business change is rolled back (to a savepoint taken before the
//     handler), the barrier records the failure and the reply is OutcomeFailure, in
//     the same transaction. For a compensation the failure is not recorded, so the
//     orchestrator's next attempt runs the compensation again.
//   - a transient database error (deadlock 40P01, serialization failure 40001, lock
//     timeout 55P03, a server shutting down, a lost connection), wrapped or not: no reply.
//     The error goes up to the consumer loop, which rolls back and runs the transaction
//     again (the whole batch, then record by record, with backoff); the saga never sees
//     it and spends no attempt. Wrap it with Retryable to hand it to the saga instead.
//   - a panic: a permanent failure of that command. A forward step is refused (the
//     reply is OutcomeFailure "handler panicked: …", so the saga compensates) and the
//     stack is logged; a compensation is dead-lettered by the consumer with the stack.
//     The process stays up.
//   - any other error (or Retryable(err)): the business change and the barrier row are
//     rolled back (to the savepoint) and the reply is OutcomeRetryable with the error as
//     reason; the saga's retry policy decides when to send the next attempt, which then
//     runs afresh. If the transaction itself is broken, nothing commits and the consumer
//     loop retries the record.
//
// Lock order. The consumer runs up to Consumer.BatchSize records of different sagas in
// one transaction, and every row lock a handler takes is held until that transaction
// commits. Two batches whose handlers lock the same rows in different orders deadlock;
// the consumer retries them, but each deadlock costs a rollback and a backoff. What a
// handler must do:
//   - lock the rows it changes in one deterministic order (one statement, ORDER BY the
//     key … FOR NO KEY UPDATE, before changing several), never in payload order;
//   - when the rows it locks are not named by the command's Kafka key (the saga id) —
//     a hot SKU, an account shared by many sagas — set Consumer.LockKey to name them
//     (the demo's inventory service returns the SKU from the payload): the records of
//     a shared transaction then run sorted by it, every transaction takes those locks
//     in one global order, and they cannot deadlock;
//   - touch hot rows in as few statements as it can, late in the handler, or leave
//     the update to the commit: consumer.QueueLastAtCommit runs statements in the
//     commit's round trip, after the barrier's writes, so the row is locked for that
//     round trip only (the demo's inventory service decides on the stock it reads
//     and takes it there, once per SKU per transaction, summed with consumer.TxValue).
//     Not consumer.QueueAtCommit: its statements run inside the savepoint of the
//     transaction's last handler, which that handler's refusal rolls back.
//
// Two transactions deciding the same row at once (a command redelivered to another
// member during a rebalance, a forward racing its compensation) both run their handler;
// the second to write finds the first's row and fails with a transient error, so the
// consumer rolls it back, runs it again and it replies the stored answer.
//
// Statements and round trips: Run hands the commands of one consumer transaction
// (Consumer.BatchSize) to the barrier together (HandleMessages). One statement reads
// the barrier rows of all of them, sent with the first handler's savepoint in the
// round trip of the transaction's BEGIN and inbox insert (consumer Prefetch); each
// handler runs behind a savepoint of its own, sent before its first statement (none
// for a handler that runs no statement); one batch then inserts every decided row
// with its result (no update) and all the replies (one outbox insert), sent with the
// consumer's COMMIT (consumer.QueueAtCommit). A batch of N no-op commands costs two
// round trips in all (BEGIN, COMMIT), instead of 2N + 3; with a backlog (BenchmarkParticipant, 2 cores) that is 15,000 commands/s
// instead of 3,800.
//
// Concurrency: the participant's consumer runs one transaction at a time
// (DefaultConcurrency) unless Consumer.Concurrency says otherwise. The commands that
// arrive meanwhile go into the next (consumer Config.BatchWait gathers those of one
// relay publish), where eight workers each started a transaction for the one or two
// commands of their partition: at a moderate load that was two to three times the
// transactions, and on two cores the CPU per saga and the queueing it causes
// (figures in package inbox/consumer, Batching). One worker also means a handler
// waiting on a lock held outside holds up the participant's other commands; a
// handler that waits on something slow wants more workers.
//
// Records that are not valid commands (missing saga headers) or name a command with no
// handler are dead-lettered by the consumer loop with the reason.
package participants
