package relay_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sagabox/sagabox/internal/kafkatest"
	"github.com/sagabox/sagabox/outbox"
	"github.com/sagabox/sagabox/relay"
)

// holdingPublisher holds the first publish that carries the message with payload
// first until release is closed, then fails it with fail; every other publish goes
// through. It logs the payloads the broker acknowledged, in order.
type holdingPublisher struct {
	relay.Publisher
	first   string
	fail    func(msgs []outbox.Message) error
	held    chan struct{} // closed when the first publish is being held
	release chan struct{}
	holding atomic.Bool

	mu    sync.Mutex
	acked []string
	ackC  chan string
}

func (h *holdingPublisher) Publish(ctx context.Context, msgs []outbox.Message) error {
	if slices.ContainsFunc(msgs, func(m outbox.Message) bool { return string(m.Payload) == h.first }) && h.holding.CompareAndSwap(false, true) {
		close(h.held)
		select {
		case <-h.release:
		case <-ctx.Done():
			return ctx.Err()
		}
		return h.fail(msgs)
	}
	err := h.Publisher.Publish(ctx, msgs)
	var perMsg relay.MessageErrors
	errors.As(err, &perMsg)
	h.mu.Lock()
	defer h.mu.Unlock()
	for i, m := range msgs {
		if err == nil || (perMsg != nil && perMsg[i] == nil) {
			h.acked = append(h.acked, string(m.Payload))
			select {
			case h.ackC <- string(m.Payload):
			default:
			}
		}
	}
	return err
}

func (h *holdingPublisher) ackedSoFar() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.acked)
}

// TestOverlappingPublishesKeepKeyOrderWhenOneFails: while a loop's batch is being
// published, the loop publishes the rows committed meanwhile (MaxPublishes 2)
// except those of the keys under way; when the held publish then fails, as a whole
// or for its message, its key's rows still reach Kafka in order, each once.
func TestOverlappingPublishesKeepKeyOrderWhenOneFails(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		fail func(msgs []outbox.Message) error
	}{
		{"WholeBatch", func([]outbox.Message) error { return errors.New("connection reset by broker") }},
		{"ItsMessage", func(msgs []outbox.Message) error {
			errs := make(relay.MessageErrors, len(msgs))
			for i := range errs {
				errs[i] = errors.New("refused by the broker")
			}
			return errs
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := setup(t, 1)
			pub := &holdingPublisher{Publisher: e.pub, first: string(payload("a", 1)), fail: tc.fail,
				held: make(chan struct{}), release: make(chan struct{}), ackC: make(chan string, 16)}
			cfg := fastConfig()
			cfg.Workers = 1
			cfg.MaxPublishes = 2
			// The held publish must not time out while the test looks at the other one.
			cfg.PublishTimeout, cfg.HeartbeatInterval, cfg.LeaseTTL = time.Minute, time.Second, 2*time.Minute
			enqueue(t, e.db.Pool, outbox.Message{Topic: e.topic, Key: "a", Payload: payload("a", 1)})
			startRelay(t, e.db.Pool, pub, cfg)
			release := sync.OnceFunc(func() { close(pub.release) })
			t.Cleanup(release) // before the relay stops: it waits for the held publish
			select {
			case <-pub.held:
			case <-time.After(30 * time.Second):
				t.Fatal("a:1 was not published within 30s")
			}

			// Committed while a:1's publish is under way: b:1 goes out at once, a:2 waits for a:1.
			enqueue(t, e.db.Pool,
				outbox.Message{Topic: e.topic, Key: "a", Payload: payload("a", 2)},
				outbox.Message{Topic: e.topic, Key: "b", Payload: payload("b", 1)})
			deadline := time.After(30 * time.Second)
			for b1 := false; !b1; {
				select {
				case p := <-pub.ackC:
					b1 = p == "b:1"
				case <-deadline:
					t.Fatalf("b:1 was not published while a:1's publish was under way (acknowledged: %v)", pub.ackedSoFar())
				}
			}
			if got := pub.ackedSoFar(); slices.Contains(got, "a:2") {
				t.Fatalf("a:2 was published while a:1's publish was under way: acknowledged %v", got)
			}

			release()
			checkOrder(t, kafkatest.ReadTopic(t, e.kafka.Brokers, e.topic, 3, 30*time.Second), map[string]int{"a": 2, "b": 1}, false)
			if got := pub.ackedSoFar(); !slices.Equal(got, []string{"b:1", "a:1", "a:2"}) {
				t.Errorf("acknowledged %v, want [b:1 a:1 a:2]", got)
			}
		})
	}
}

// TestLargeMessagesArePublishedInBatchesOfMaxBatchBytes: a batch of BatchSize rows
// held BatchSize of the largest messages in memory (2000 of 1 MiB: 2 GiB). With
// MaxBatchBytes a claim stops at the row that reaches it, so no publish carries
// more than MaxBatchBytes and one message; a claim the bound cut short counts as
// full, so a cycle's run goes on to the next batch at once; and the key's rows go
// out once each, in order.
func TestLargeMessagesArePublishedInBatchesOfMaxBatchBytes(t *testing.T) {
	t.Parallel()
	e := setup(t, 1)
	const n, size, budget = 12, 64 << 10, 160 << 10 // 3 rows a batch
	var mu sync.Mutex
	var publishes, largest int
	cfg := fastConfig()
	cfg.Workers, cfg.MaxBatchBytes = 1, budget
	// A run goes on for runLimit, min(PollInterval, 1 s): fastConfig's 50 ms ended
	// it after two batches under -race on a loaded machine.
	cfg.PollInterval = 10 * time.Second
	cfg.Hooks.Publish = func(msgs []outbox.Message) func(error) {
		bytes := 0
		for _, m := range msgs {
			bytes += len(m.Payload)
		}
		mu.Lock()
		publishes, largest = publishes+1, max(largest, bytes)
		mu.Unlock()
		return nil
	}
	r := steppedRelayConfig(t, e, cfg)
	var msgs []outbox.Message
	for i := range n {
		p := make([]byte, size)
		copy(p, payload("k", i+1))
		msgs = append(msgs, outbox.Message{Topic: e.topic, Key: "k", Payload: p})
	}
	enqueue(t, e.db.Pool, msgs...)
	got := cycleOnce(t, r)
	if got <= 3 {
		t.Fatalf("one cycle claimed %d rows, one batch: a claim the byte bound cut short did not count as full", got)
	}
	cycleUntil(t, r, n-got)
	parts := kafkatest.ReadTopic(t, e.kafka.Brokers, e.topic, n, 60*time.Second)
	for i, m := range parts[0] {
		if want := payload("k", i+1); string(m.Value[:len(want)]) != string(want) {
			t.Fatalf("record %d is %q..., want %q", i, m.Value[:len(want)], want)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if largest > budget+size || publishes != n/3 {
		t.Fatalf("%d publishes, the largest of %d bytes of payload; want %d of at most MaxBatchBytes %d and one message %d",
			publishes, largest, n/3, budget, size)
	}
}
