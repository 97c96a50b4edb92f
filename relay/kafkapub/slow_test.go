package kafkapub_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/sagabox/sagabox/internal/embedkafka"
	"github.com/sagabox/sagabox/internal/testenv"
	"github.com/sagabox/sagabox/outbox"
	"github.com/sagabox/sagabox/relay"
	"github.com/sagabox/sagabox/relay/kafkapub"
)

// TestSlowBrokerDoesNotMultiplyDuplicates: the broker holds the first produce
// request's answer past the relay's deadline. Publishing the message again (as the
// relay does after a timeout) must not send another copy while the first may still
// be in flight, and once the broker answers, the late acknowledgement counts: the
// topic holds the message once, not once per attempt.
func TestSlowBrokerDoesNotMultiplyDuplicates(t *testing.T) {
	t.Parallel()
	c, err := embedkafka.Start(embedkafka.Options{Partitions: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	release := make(chan struct{})
	var once sync.Once
	c.Kfake().ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		c.Kfake().KeepControl()
		once.Do(func() { c.Kfake().SleepControl(func() { <-release }) })
		return nil, nil, false
	})
	topic := testenv.Topic("slow")
	p := newPub(t, kafkapub.Config{Brokers: c.Addrs(), CreateTopics: true})
	m := []outbox.Message{msg(topic, "k", "v")}

	for range 2 { // the relay's deadline passes while the broker sits on the first copy
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		err := p.Publish(ctx, m)
		cancel()
		if !errors.Is(err, relay.ErrUnavailable) {
			t.Fatalf("publish to a broker that does not answer: err = %v, want ErrUnavailable", err)
		}
	}
	close(release)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := p.Publish(ctx, m); err != nil {
		t.Fatalf("publish once the broker answers: %v", err)
	}
	readAll(t, c.Addrs(), topic, 1)
}

// TestSlowLeaderDoesNotFailOtherLeadersAckedMessages: topic ha is led by one
// broker, hb by the other, whose produce request sits past the Publish deadline.
// ha's message, acknowledged at once, is published (nil in the MessageErrors);
// only hb's fails as ErrUnavailable, stays in flight, and its late
// acknowledgement counts for its next Publish, which sends no second copy. (The
// whole Publish failed with the slow leader before.)
func TestSlowLeaderDoesNotFailOtherLeadersAckedMessages(t *testing.T) {
	t.Parallel()
	c := twoBrokers(t, 1, "ha", "hb")
	if c.LeaderFor("ha", 0) == c.LeaderFor("hb", 0) {
		if err := c.MoveTopicPartition("hb", 0, 1-c.LeaderFor("ha", 0)); err != nil {
			t.Fatal(err)
		}
	}
	slow := c.LeaderFor("hb", 0)
	p := newPub(t, kafkapub.Config{Brokers: c.ListenAddrs()})
	if err := p.Publish(context.Background(), []outbox.Message{msg("ha", "w", "0"), msg("hb", "w", "0")}); err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	releaseOnce := sync.OnceFunc(func() { close(release) })
	t.Cleanup(releaseOnce) // before the publisher's and the cluster's
	var once sync.Once
	c.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		if c.CurrentNode() == slow {
			once.Do(func() { c.SleepControl(func() { <-release }) })
		}
		return nil, nil, false
	})
	msgs := []outbox.Message{msg("ha", "a", "fast"), msg("hb", "b", "slow")}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	err := p.Publish(ctx, msgs)
	cancel()
	var me relay.MessageErrors
	if !errors.As(err, &me) || me[0] != nil || !errors.Is(me[1], relay.ErrUnavailable) {
		t.Fatalf("publish with hb's leader sitting on its request: %v; want ha's message published, hb's ErrUnavailable", err)
	}
	releaseOnce()
	ctx, cancel = context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := p.Publish(ctx, msgs[1:]); err != nil {
		t.Fatalf("publish of hb's message once its leader answers: %v", err)
	}
	readAll(t, c.ListenAddrs(), "ha", 2)
	readAll(t, c.ListenAddrs(), "hb", 2)
}

// TestPublishThatGaveUpStartsNoNewRounds: the broker sits on a produce request
// past the Publish deadline, then answers it with a retriable error. The write
// keeps the request it sent (its answer counts) but starts no retry round once
// its Publish has returned: those ran on for up to (MaxAttempts+1)×WriteTimeout,
// past the relay's lease on the rows, which the next Publish sends anyway.
func TestPublishThatGaveUpStartsNoNewRounds(t *testing.T) {
	t.Parallel()
	c := brokers(t, 1, 1, "gaveup")
	release := make(chan struct{})
	releaseOnce := sync.OnceFunc(func() { close(release) })
	t.Cleanup(releaseOnce)
	var mu sync.Mutex
	n := 0
	c.ControlKey(int16(kmsg.Produce), func(r kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		mu.Lock()
		n++
		first := n == 1
		mu.Unlock()
		if !first {
			return nil, nil, false
		}
		c.SleepControl(func() { <-release })
		return produceError(r.(*kmsg.ProduceRequest), kerr.NotEnoughReplicas.Code), nil, true
	})
	p, err := kafkapub.New(kafkapub.Config{Brokers: c.ListenAddrs()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	err = p.Publish(ctx, []outbox.Message{msg("gaveup", "k", "v")})
	cancel()
	if !errors.Is(err, relay.ErrUnavailable) {
		t.Fatalf("publish to a broker sitting on the request: %v, want ErrUnavailable", err)
	}
	releaseOnce()
	_ = p.Close() // waits for the write to end
	mu.Lock()
	defer mu.Unlock()
	if n != 1 {
		t.Fatalf("%d produce requests; want 1: no retry after the Publish gave up", n)
	}
}
