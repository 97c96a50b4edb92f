// Package sagaotel traces sagabox with OpenTelemetry: a message's way from the
// producer's transaction through the relay to its consumer, and a saga with its steps.
// The core packages know nothing of OpenTelemetry; this package plugs into their hooks
// and carries W3C trace context ("traceparent", "tracestate") in message headers.
//
// Spans, following the OpenTelemetry messaging semantic conventions (messaging.system
// "kafka"):
//
//   - Enqueue: "create <topic>" (PRODUCER), a child of the caller's span; every message
//     enqueued carries it as its creation context.
//   - RelayHooks: "send <topic>" (CLIENT) per published batch, linked to the creation
//     context of each of its messages (the relay runs in no trace of its own).
//   - ConsumerHooks: "process <topic>" (CONSUMER) around each handler run, a child of the
//     record's creation context, so a consumer's work joins the producer's trace. The
//     handler's context holds this span.
//   - StartSaga and SagaHooks: "saga <type>" (INTERNAL) from Start to the saga's end, a
//     child of the caller's span; its context goes into the saga's commands, which the
//     participants copy onto their replies, so every command's and reply's "process"
//     span hangs under it. "<type> <step> <op>" (INTERNAL) per step attempt, command
//     sent → reply or timeout, also under the saga span.
//
// Limits. The saga span lives in the memory of the process that started the saga and
// ends when that process sees the saga finish; a saga finished by another orchestrator
// process, or after a restart, leaves it unended (not exported), and at most MaxSagaSpans
// are kept (the oldest are then ended early, marked sagabox.saga.unfinished). A step span
// is recorded when the orchestrator process that handled the reply knows the saga's trace
// context, which it learns from the reply's headers, so step spans work across processes.
package sagaotel
