package relay

import (
	"time"

	"github.com/sagabox/sagabox/outbox"
)

// Hooks observe the relay. Every field is optional; a hook must be fast and must not
// block, since the relay calls it inline. Package relayprom implements them.
type Hooks struct {
	// Published is called after Kafka acknowledged n messages of topic.
	Published func(topic string, n int)
	// Failed is called for a message whose publish failed; it will be retried.
	Failed func(topic string, err error)
	// DeadLettered is called for a message that used its last attempt.
	DeadLettered func(topic string, err error)
	// Batch is called after a batch of n messages was claimed, published and
	// settled, with the time that took.
	Batch func(n int, d time.Duration)
	// Lag is called after every heartbeat with the age of the oldest unpublished,
	// not dead-lettered row (0 when there is none).
	Lag func(age time.Duration)
	// HeldBack is called after every heartbeat with the age of the oldest
	// transaction running on the server that holds a transaction id (0 when none).
	// It holds back no publishing, but vacuum cannot remove the outbox rows deleted
	// since it began, so every claim reads past them (see doc.go, "Commit order").
	// The relay logs which backend it is once it is older than Config.HoldWarnAfter.
	HeldBack func(age time.Duration)
	// Shards is called after every heartbeat with the number of shards this relay owns.
	Shards func(owned int)
	// Publish is called before a batch goes to the Publisher; done, if not nil, is
	// called with the Publisher's answer (nil: all acknowledged; a MessageErrors: per
	// message). For tracing spans and publish latency: a message's ID is a UUIDv7
	// carrying its enqueue time, its Headers the producer's trace context.
	Publish func(msgs []outbox.Message) (done func(err error))
}

func (h *Hooks) publish(msgs []outbox.Message) func(error) {
	if h.Publish == nil {
		return nil
	}
	return h.Publish(msgs)
}

func (h *Hooks) published(topic string, n int) {
	if h.Published != nil {
		h.Published(topic, n)
	}
}

func (h *Hooks) failed(topic string, err error) {
	if h.Failed != nil {
		h.Failed(topic, err)
	}
}

func (h *Hooks) deadLettered(topic string, err error) {
	if h.DeadLettered != nil {
		h.DeadLettered(topic, err)
	}
}

func (h *Hooks) batch(n int, d time.Duration) {
	if h.Batch != nil {
		h.Batch(n, d)
	}
}

func (h *Hooks) lag(d time.Duration) {
	if h.Lag != nil {
		h.Lag(d)
	}
}

func (h *Hooks) shards(n int) {
	if h.Shards != nil {
		h.Shards(n)
	}
}

func (h *Hooks) heldBack(d time.Duration) {
	if h.HeldBack != nil {
		h.HeldBack(d)
	}
}
