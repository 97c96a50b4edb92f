// Command orderdemo runs sagabox's demo: the order saga (create order → reserve
// inventory → charge payment → schedule shipping, compensated in reverse when a
// payment above 1000 is declined) across four participant services, the outbox
// relay and the orchestrator; or, with --flow transfer, a bank transfer in
// choreography style (debit → credit → audit, the debit refunded when the credit fails).
//
// With no --database-url / DATABASE_URL and no --brokers / KAFKA_BROKERS it starts a
// throwaway PostgreSQL from the local binaries and an in-process Kafka-protocol broker,
// so it runs on a fresh machine. Everything runs in one process unless --processes or
// --role. --processes deploys it as a team would: the four participants and the
// orchestrator (orderdemo --role orchestrator) as child processes, the relay as the
// real outbox-relay program, and this process only drives the orders. --role plays
// one part against a shared database and broker: driver (with --relay=false and
// --orchestrator=false when those run apart), orchestrator (run, scale or kill it
// apart), or one participant.
//
// Stock is seeded once per database, so a driver restarted after a crash does not put
// stock back under the reservations of sagas still running. Before exiting the driver
// checks the business invariants over the whole database — stock conserved across
// every order, every finished order saga fully applied or fully undone — and exits 1
// if one broke.
//
// Guarantee shown: every message is published at least once (with
// --duplicate-delivery, exactly twice) and every effect happens exactly once; the
// exit status is 0 only when every saga or transfer ended as expected and every
// business invariant held.
package main
