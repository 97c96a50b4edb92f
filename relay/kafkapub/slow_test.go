package kafkapub_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

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
