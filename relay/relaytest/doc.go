// Package relaytest is a conformance suite for relay.Publisher implementations,
// like watermill's exported pub/sub tests: RunPublisherTests checks what the relay
// relies on, against a real broker the caller provides.
//
//   - every acknowledged message reached the broker, with its message-id;
//   - messages of one key arrive in the order given, within a batch and across batches;
//   - a message the publisher refuses fails alone in a relay.MessageErrors (not as
//     relay.ErrUnavailable), and the later messages of its key in the batch come
//     back as relay.ErrHeldBack, unsent, while other keys go out;
//   - an unreachable broker fails the batch as relay.ErrUnavailable (spending no
//     message's attempt);
//   - an empty batch is a no-op; Close returns nil.
//
// package kafkapub runs it in its tests (conformance_test.go).
package relaytest
