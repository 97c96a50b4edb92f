// Package wire is the message contract between a saga orchestrator (package
// sagastate) and its participants (package participants): how a command and a
// reply travel as outbox messages and Kafka records.
//
// Both directions are keyed by saga id, so one saga's messages stay in order on
// one partition. Saga metadata travels in headers, the business body in the
// payload, so participants never unwrap an envelope and any Kafka tool can read
// the body. A step is identified by its name; (saga id, step, op) is what a
// participant's barrier deduplicates on, and the attempt number lets the
// orchestrator tell a current reply from a stale one.
package wire
