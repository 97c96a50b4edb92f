// Command orderdemo runs sagabox's demo: the order saga (create order → reserve
// inventory → charge payment → schedule shipping, compensated in reverse when a
// payment above 1000 is declined) across four participant services, the outbox
// relay and the orchestrator; or, with --flow transfer, a bank transfer in
// choreography style (debit → credit → audit, the debit refunded when the credit fails).
//
// With no --database-url / DATABASE_URL and no --brokers / KAFKA_BROKERS it starts a
// throwaway PostgreSQL from the local binaries and an in-process Kafka-protocol broker,
// so it runs on a fresh machine. Everything runs in one process unless --processes
// (the participants as child processes) or --role (this process plays one part only).
//
// Before exiting it checks the business invariants itself and exits 1 if one broke.
//
// Guarantee shown: every message is published at least once (with
// --duplicate-delivery, exactly twice) and every effect happens exactly once; the
// exit status is 0 only when every saga or transfer ended as expected and every
// business invariant held.
package main
