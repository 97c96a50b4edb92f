package kafkapub_test

import (
	"strings"
	"testing"

	"github.com/google/uuid"

	"github.com/sagabox/sagabox/internal/testenv"
	"github.com/sagabox/sagabox/outbox"
	"github.com/sagabox/sagabox/relay"
	"github.com/sagabox/sagabox/relay/kafkapub"
	"github.com/sagabox/sagabox/relay/relaytest"
)

// TestConformance runs the relay.Publisher conformance suite against kafkapub.
func TestConformance(t *testing.T) {
	t.Parallel()
	k := testenv.NewKafka(t)
	relaytest.RunPublisherTests(t, relaytest.Setup{
		New: func(t *testing.T) relay.Publisher {
			p, err := kafkapub.New(kafkapub.Config{Brokers: k.Brokers, MaxMessageBytes: 4096})
			if err != nil {
				t.Fatal(err)
			}
			return p
		},
		Topic: func(t *testing.T) string {
			topic := testenv.Topic("conformance")
			k.CreateTopic(t, topic, 3)
			return topic
		},
		Read: func(t *testing.T, topic string, n int) []outbox.Message {
			var out []outbox.Message
			for _, r := range readAll(t, k.Brokers, topic, n) {
				m := outbox.Message{Topic: r.Topic, Key: string(r.Key), Payload: r.Value, Headers: map[string]string{}}
				for _, h := range r.Headers {
					if h.Key == outbox.HeaderMessageID {
						m.ID, _ = uuid.Parse(string(h.Value))
					} else {
						m.Headers[h.Key] = string(h.Value)
					}
				}
				out = append(out, m)
			}
			return out
		},
		Unpublishable: func(topic string) outbox.Message {
			return outbox.Message{ID: uuid.Must(uuid.NewV7()), Topic: topic, Payload: []byte(strings.Repeat("x", 8192))}
		},
		Unreachable: func(t *testing.T) relay.Publisher {
			p, err := kafkapub.New(kafkapub.Config{Brokers: []string{"127.0.0.1:1"}})
			if err != nil {
				t.Fatal(err)
			}
			return p
		},
	})
}
