package relay

import (
	"context"
	"errors"
	"fmt"

	"github.com/sagabox/sagabox/outbox"
)

// Errors of this package. Wrapped with context; test with errors.Is.
var (
	// ErrInvalidConfig means a Config field is out of range; the message names it.
	ErrInvalidConfig = errors.New("invalid relay config")
	// ErrNotMigrated means the schema lacks the outbox tables: run the migrations
	// (sagactl migrate up) for it first.
	ErrNotMigrated = errors.New("outbox tables missing")
	// ErrNoAccess means the database role may not read and write the outbox
	// tables; grant it SELECT, INSERT, UPDATE and DELETE on them (and USAGE on the schema).
	ErrNoAccess = errors.New("no access to the outbox tables")
	// ErrAlreadyRunning means Run was called on a Relay that is running.
	ErrAlreadyRunning = errors.New("relay already running")
	// ErrUnavailable marks a publish failure of the broker rather than of the
	// message (connection refused, timeout). A Publisher wraps per-message errors
	// with it so the relay retries those messages without spending their attempts.
	ErrUnavailable = errors.New("broker unavailable")
	// ErrHeldBack marks a message a Publisher did not send because an earlier
	// message of its key in the same batch failed: sending it would break the
	// key's order. The relay leaves it pending without spending an attempt.
	ErrHeldBack = errors.New("held back behind an earlier failed message of its key")
	// ErrPermanent marks a message that can never be published as it is (larger
	// than the publisher's limit, unreadable as stored). The relay dead-letters it
	// at once instead of retrying it MaxAttempts times while it blocks its key.
	ErrPermanent = errors.New("can never be published as it is")
)

// Publisher sends messages to the broker. It is the relay's only port to Kafka;
// package kafkapub implements it with segmentio/kafka-go. relaytest.RunPublisherTests
// checks an implementation against this contract.
//
// Publish returns nil once the broker acknowledged every message (for Kafka:
// acks=all). If some messages were acknowledged and others not, it returns a
// MessageErrors. Any other error means the batch failed as a whole (e.g. the
// broker is unreachable): the relay retries it later without spending attempts,
// and messages of it that did reach the broker are published again.
//
// Messages of one key must reach the broker in the order given, and a message
// must not be sent after an earlier message of its key failed in the same batch
// (report it as ErrHeldBack instead). Publish returns by ctx's deadline; a send
// still in flight then must not be repeated by a later Publish of the same
// message while it may still land (kafkapub waits for its outcome instead).
type Publisher interface {
	Publish(ctx context.Context, msgs []outbox.Message) error
	Close() error
}

// MessageErrors reports a partly failed batch: one entry per message, in batch
// order, nil where the broker acknowledged the message.
type MessageErrors []error

func (e MessageErrors) Error() string {
	n, first := 0, error(nil)
	for _, err := range e {
		if err != nil {
			if first == nil {
				first = err
			}
			n++
		}
	}
	return fmt.Sprintf("%d of %d messages failed; first: %v", n, len(e), first)
}
