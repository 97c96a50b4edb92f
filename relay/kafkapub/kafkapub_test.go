package kafkapub_test

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/segmentio/kafka-go"

	"github.com/sagabox/sagabox/internal/embedkafka"
	"github.com/sagabox/sagabox/internal/kafkatest"
	"github.com/sagabox/sagabox/internal/testenv"
	"github.com/sagabox/sagabox/outbox"
	"github.com/sagabox/sagabox/relay"
	"github.com/sagabox/sagabox/relay/kafkapub"
)

func TestMain(m *testing.M) { os.Exit(testenv.Run(m)) }

func newPub(t *testing.T, cfg kafkapub.Config) *kafkapub.Publisher {
	t.Helper()
	p, err := kafkapub.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

func msg(topic, key, value string) outbox.Message {
	return outbox.Message{ID: uuid.Must(uuid.NewV7()), Topic: topic, Key: key, Payload: []byte(value)}
}

// readAll reads want records from every partition of topic.
func readAll(t *testing.T, brokers []string, topic string, want int) []kafka.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var out []kafka.Message
	for p, last := range kafkatest.Ends(t, brokers, topic, kafkatest.Partitions(t, brokers, topic)) {
		rd := kafka.NewReader(kafka.ReaderConfig{Brokers: brokers, Topic: topic, Partition: p, MaxWait: 20 * time.Millisecond})
		for i := int64(0); i < last; i++ {
			m, err := rd.ReadMessage(ctx)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, m)
		}
		rd.Close()
	}
	if len(out) != want {
		t.Fatalf("topic %s holds %d records, want %d", topic, len(out), want)
	}
	return out
}

func TestPublish(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("AcknowledgedWithHeadersAndKeyOrder", func(t *testing.T) {
		t.Parallel()
		k := testenv.NewKafka(t)
		topic := testenv.Topic("pub")
		k.CreateTopic(t, topic, 3)
		p := newPub(t, kafkapub.Config{Brokers: k.Brokers})
		var msgs []outbox.Message
		for i := range 60 {
			m := msg(topic, []string{"a", "b", "c"}[i%3], string(rune('0'+i/3)))
			m.Headers = map[string]string{"n": m.ID.String()}
			msgs = append(msgs, m)
		}
		if err := p.Publish(ctx, msgs); err != nil {
			t.Fatal(err)
		}
		last := map[string]string{}
		for _, r := range readAll(t, k.Brokers, topic, len(msgs)) {
			var id, n string
			for _, h := range r.Headers {
				switch h.Key {
				case outbox.HeaderMessageID:
					id = string(h.Value)
				case "n":
					n = string(h.Value)
				}
			}
			if id == "" || id != n {
				t.Fatalf("record headers %v: want message-id and the message's own headers", r.Headers)
			}
			if prev := last[string(r.Key)]; string(r.Value) <= prev {
				t.Fatalf("key %s: %q after %q", r.Key, r.Value, prev)
			}
			last[string(r.Key)] = string(r.Value)
		}
	})

	t.Run("OversizedRefusedAndItsKeyHeldBack", func(t *testing.T) {
		t.Parallel()
		k := testenv.NewKafka(t)
		topic := testenv.Topic("big")
		k.CreateTopic(t, topic, 1)
		p := newPub(t, kafkapub.Config{Brokers: k.Brokers, MaxMessageBytes: 1000})
		msgs := []outbox.Message{msg(topic, "a", "1"), msg(topic, "a", strings.Repeat("x", 2000)), msg(topic, "a", "3"), msg(topic, "b", "1")}
		err := p.Publish(ctx, msgs)
		var me relay.MessageErrors
		if !errors.As(err, &me) || len(me) != 4 {
			t.Fatalf("err = %v, want MessageErrors for 4 messages", err)
		}
		if me[0] != nil || !errors.Is(me[1], kafkapub.ErrMessageTooLarge) || !errors.Is(me[2], relay.ErrHeldBack) || me[3] != nil {
			t.Fatalf("per-message errors = %v; want nil, too large, held back, nil", []error(me))
		}
		if errors.Is(me[1], relay.ErrUnavailable) {
			t.Fatal("a too-large message must not count as a broker outage")
		}
		readAll(t, k.Brokers, topic, 2)
	})

	t.Run("MissingTopicNamedInTheError", func(t *testing.T) {
		t.Parallel()
		c, err := embedkafka.Start(embedkafka.Options{NoAutoCreateTopics: true})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(c.Close)
		p := newPub(t, kafkapub.Config{Brokers: c.Addrs()})
		err = p.Publish(ctx, []outbox.Message{msg("nope", "k", "v")})
		var me relay.MessageErrors
		if !errors.As(err, &me) || !errors.Is(me[0], kafkapub.ErrTopicMissing) || !strings.Contains(me[0].Error(), `"nope"`) {
			t.Fatalf("err = %v, want a per-message ErrTopicMissing naming the topic", err)
		}
	})

	t.Run("CreateTopicsWithBrokerDefaults", func(t *testing.T) {
		t.Parallel()
		c, err := embedkafka.Start(embedkafka.Options{NoAutoCreateTopics: true})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(c.Close)
		topic := testenv.Topic("created")
		p := newPub(t, kafkapub.Config{Brokers: c.Addrs(), CreateTopics: true})
		if err := p.Publish(ctx, []outbox.Message{msg(topic, "k", "v"), msg(topic, "k", "w")}); err != nil {
			t.Fatal(err)
		}
		readAll(t, c.Addrs(), topic, 2)
	})

	t.Run("HealthReportsTheBroker", func(t *testing.T) {
		t.Parallel()
		k := testenv.NewKafka(t)
		if err := newPub(t, kafkapub.Config{Brokers: k.Brokers}).Health(ctx); err != nil {
			t.Fatalf("Health with a running broker: %v", err)
		}
		down := newPub(t, kafkapub.Config{Brokers: []string{"127.0.0.1:1"}})
		if err := down.Health(ctx); err == nil || !strings.Contains(err.Error(), "127.0.0.1:1") {
			t.Fatalf("Health with no broker = %v; want an error naming the address", err)
		}
	})

	t.Run("UnreachableBrokerFailsTheWholeBatch", func(t *testing.T) {
		t.Parallel()
		p := newPub(t, kafkapub.Config{Brokers: []string{"127.0.0.1:1"}, WriteTimeout: time.Second})
		err := p.Publish(ctx, []outbox.Message{msg("t", "k", "v"), msg("u", "k", "w")})
		var me relay.MessageErrors
		if !errors.Is(err, relay.ErrUnavailable) || errors.As(err, &me) {
			t.Fatalf("err = %v, want one ErrUnavailable for the batch", err)
		}
	})
}

func TestConfig(t *testing.T) {
	t.Parallel()
	_, err := kafkapub.New(kafkapub.Config{MaxMessageBytes: -1, TopicPartitions: 3})
	if !errors.Is(err, kafkapub.ErrInvalidConfig) {
		t.Fatalf("err = %v, want ErrInvalidConfig", err)
	}
	for _, want := range []string{"Brokers is empty", "MaxMessageBytes", "only with CreateTopics"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %q:\n%v", want, err)
		}
	}
}

// TestHealthReportsABrokerThatWentAway: an idle relay's broker stops after it
// was seen. Health must report it within a few probes; the metadata request it
// probed with was answered from kafka-go's cache of the last layout, so Health
// stayed nil for as long as the relay was idle.
func TestHealthReportsABrokerThatWentAway(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	c, err := embedkafka.Start(embedkafka.Options{})
	if err != nil {
		t.Fatal(err)
	}
	p := newPub(t, kafkapub.Config{Brokers: c.Addrs()})
	if err := p.Health(ctx); err != nil {
		t.Fatalf("Health with a running broker: %v", err)
	}
	c.Close()
	deadline := time.Now().Add(20 * time.Second)
	for p.Health(ctx) == nil {
		if time.Now().After(deadline) {
			t.Fatal("Health still nil 20s after the broker stopped")
		}
		time.Sleep(100 * time.Millisecond)
	}
}
