package kafkapub

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/sagabox/sagabox/outbox"
	"github.com/sagabox/sagabox/relay"
)

func rmsg(topic, key, value string) outbox.Message {
	return outbox.Message{ID: uuid.Must(uuid.NewV7()), Topic: topic, Key: key, Payload: []byte(value)}
}

// keyOn returns a key that Murmur2 puts on partition want of n.
func keyOn(prefix string, want, n int) string {
	all := make([]int, n)
	for j := range all {
		all[j] = j
	}
	for i := 0; ; i++ {
		k := fmt.Sprintf("%s%d", prefix, i)
		if (kafka.Murmur2Balancer{}).Balance(kafka.Message{Key: []byte(k)}, all...) == want {
			return k
		}
	}
}

func newTestPub(t *testing.T, cfg Config) *Publisher {
	t.Helper()
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

func newCluster(t *testing.T, opts ...kfake.Opt) *kfake.Cluster {
	t.Helper()
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// TestDeadlineInBackoffDoesNotFailNextBatchWithStaleError: the write's deadline
// passes during a retry backoff (partition 1 answers NOT_ENOUGH_REPLICAS) while
// partition 0, refused as too large, was split into single messages not yet
// sent. Those stay unsent (ErrUnavailable); they failed with the refusal of the
// batch they were part of, so a 7-byte message came back ErrMessageTooLarge (the
// message's fault: an attempt spent, dead-lettered at the last). Found by the
// review of 60e53f9, fixed by 24dd2b9.
func TestDeadlineInBackoffDoesNotFailNextBatchWithStaleError(t *testing.T) {
	t.Parallel()
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(2, "stale"))
	p := newTestPub(t, Config{Brokers: c.ListenAddrs(), MaxAttempts: 10})
	if err := p.Publish(context.Background(), []outbox.Message{rmsg("stale", "warm", "up")}); err != nil {
		t.Fatal(err)
	}
	a, b, cc := keyOn("a", 0, 2), keyOn("b", 0, 2), keyOn("c", 1, 2)
	msgs := []outbox.Message{rmsg("stale", a, "small-a"), rmsg("stale", b, "small-b"), rmsg("stale", cc, "c")}
	c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: "stale", Partitions: []int32{0}, Err: kerr.MessageTooLarge, Count: 1})
	h := c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: "stale", Partitions: []int32{1}, Err: kerr.NotEnoughReplicas, Count: -1})
	defer h.Remove()

	// The write's deadline passes during the first backoff (50ms).
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Millisecond)
	defer cancel()
	ans := newAnswers(len(msgs), []int{0, 1, 2})
	p.send(ctx, msgs, []int{0, 1, 2}, ans)
	for i, e := range ans.errs[:2] {
		if !errors.Is(e, relay.ErrUnavailable) || errors.Is(e, ErrMessageTooLarge) {
			t.Fatalf("message %d (a few bytes, not sent on its own before the deadline): %v; want ErrUnavailable", i, e)
		}
	}
}
