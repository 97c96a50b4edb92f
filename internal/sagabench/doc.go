// Package sagabench loads sagas the way a service would and measures them: closed
// loop with a fixed number of flows in flight, and open loop at a steady offered rate
// (so time to consistency is not only queueing). It reports flows per second, time to
// consistency (p50, p99), the consumer loops' local transient retries and the sagas'
// own retries, read from the saga log in the database, and the CPU time per flow of
// the process and the PostgreSQL server (CPUMeter, the server's share apart), whose
// ratio to the baseline's is what a machine shared with other work cannot show in
// flows per second, and the database round trips and statements per flow (Trips, a
// pgx tracer on the env's pool), which show how much was batched whatever the load. Flags after -args run part of it (-sagaload.kinds,
// -sagaload.levels, -sagaload.rate), to profile one kind at one load.
//
// A flow is anything started by a function and known finished by a signal: a saga of
// the orchestrator (finished when its SagaFinished hook fires, after the commit) or
// the raw outbox + consumer round trips of the baseline. Both are driven by the same
// Driver, so their figures compare. The benchmark lives in bench_test.go (make bench).
package sagabench
