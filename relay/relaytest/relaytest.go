package relaytest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/sagabox/sagabox/outbox"
	"github.com/sagabox/sagabox/relay"
)

// Setup is what the suite needs of an implementation and its broker.
type Setup struct {
	// New returns the Publisher under test, connected to a running broker. The
	// suite closes it.
	New func(t *testing.T) relay.Publisher
	// Topic returns a new topic of the broker that Publish may write to.
	Topic func(t *testing.T) string
	// Read returns the n records of topic as messages (ID from the message-id
	// header), each partition in its order; it fails t if there are not exactly n.
	Read func(t *testing.T, topic string, n int) []outbox.Message
	// Unpublishable returns a message to topic that the publisher refuses
	// (larger than its limit, say). Optional: without it that test is skipped.
	Unpublishable func(topic string) outbox.Message
	// Unreachable returns a Publisher whose broker cannot be reached. The suite
	// closes it.
	Unreachable func(t *testing.T) relay.Publisher
}

// Timeout bounds each Publish of the suite.
const Timeout = 30 * time.Second

// RunPublisherTests runs the suite as subtests of t.
func RunPublisherTests(t *testing.T, s Setup) {
	t.Run("EmptyBatch", func(t *testing.T) {
		p := open(t, s.New)
		if err := publish(p, nil); err != nil {
			t.Fatalf("Publish of no messages: %v", err)
		}
	})
	t.Run("OrderPerKey", func(t *testing.T) { orderPerKey(t, s) })
	t.Run("MessageErrorsAndHeldBack", func(t *testing.T) {
		if s.Unpublishable == nil {
			t.Skip("Setup.Unpublishable is nil")
		}
		messageErrors(t, s)
	})
	t.Run("Unavailable", func(t *testing.T) {
		p := open(t, s.Unreachable)
		err := publish(p, []outbox.Message{msg("any", "k", 1), msg("any", "j", 1)})
		if !allUnavailable(err, 2) {
			t.Fatalf("Publish to an unreachable broker: err = %v; want relay.ErrUnavailable for the batch (or for each message)", err)
		}
	})
}

func open(t *testing.T, newPub func(t *testing.T) relay.Publisher) relay.Publisher {
	t.Helper()
	p := newPub(t)
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return p
}

func publish(p relay.Publisher, msgs []outbox.Message) error {
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	return p.Publish(ctx, msgs)
}

// msg is message n of key, its payload "key:n".
func msg(topic, key string, n int) outbox.Message {
	return outbox.Message{ID: uuid.Must(uuid.NewV7()), Topic: topic, Key: key, Payload: fmt.Appendf(nil, "%s:%d", key, n),
		Headers: map[string]string{"n": fmt.Sprint(n)}}
}

func orderPerKey(t *testing.T, s Setup) {
	p := open(t, s.New)
	topic := s.Topic(t)
	keys := []string{"a", "b", "c", "d"}
	var sent []outbox.Message
	for batch := range 2 {
		var msgs []outbox.Message
		for n := range 25 {
			for _, k := range keys {
				msgs = append(msgs, msg(topic, k, batch*25+n+1))
			}
		}
		if err := publish(p, msgs); err != nil {
			t.Fatalf("batch %d: %v", batch, err)
		}
		sent = append(sent, msgs...)
	}
	byID := map[uuid.UUID]outbox.Message{}
	for _, m := range sent {
		byID[m.ID] = m
	}
	last := map[string]int{}
	for _, got := range s.Read(t, topic, len(sent)) {
		want, ok := byID[got.ID]
		switch {
		case !ok:
			t.Fatalf("record %q has message-id %s, which was never sent", got.Payload, got.ID)
		case got.Key != want.Key || string(got.Payload) != string(want.Payload) || got.Headers["n"] != want.Headers["n"]:
			t.Fatalf("record %s: key %q payload %q headers %v; sent key %q payload %q headers %v",
				got.ID, got.Key, got.Payload, got.Headers, want.Key, want.Payload, want.Headers)
		}
		var n int
		fmt.Sscan(want.Headers["n"], &n)
		if n != last[want.Key]+1 {
			t.Fatalf("key %s: message %d after %d; per-key order broken", want.Key, n, last[want.Key])
		}
		last[want.Key] = n
	}
}

func messageErrors(t *testing.T, s Setup) {
	p := open(t, s.New)
	topic := s.Topic(t)
	bad := s.Unpublishable(topic)
	bad.Key = "a"
	msgs := []outbox.Message{msg(topic, "a", 1), bad, msg(topic, "a", 3), msg(topic, "b", 1)}
	err := publish(p, msgs)
	var me relay.MessageErrors
	if !errors.As(err, &me) || len(me) != len(msgs) {
		t.Fatalf("err = %v; want a relay.MessageErrors with %d entries", err, len(msgs))
	}
	if me[0] != nil || me[3] != nil {
		t.Errorf("acknowledged messages have errors: %v, %v", me[0], me[3])
	}
	if me[1] == nil || errors.Is(me[1], relay.ErrUnavailable) || errors.Is(me[1], relay.ErrHeldBack) {
		t.Errorf("refused message: %v; want the message's own error, neither ErrUnavailable nor ErrHeldBack", me[1])
	}
	if !errors.Is(me[2], relay.ErrHeldBack) {
		t.Errorf("message after the refused one of its key: %v; want relay.ErrHeldBack", me[2])
	}
	var got []string
	for _, m := range s.Read(t, topic, 2) {
		got = append(got, string(m.Payload))
	}
	if strings.Join(got, ",") != "a:1,b:1" && strings.Join(got, ",") != "b:1,a:1" {
		t.Errorf("broker holds %v; want a:1 and b:1 only", got)
	}
}

// allUnavailable reports whether err fails a batch of n as relay.ErrUnavailable.
func allUnavailable(err error, n int) bool {
	var me relay.MessageErrors
	if !errors.As(err, &me) {
		return errors.Is(err, relay.ErrUnavailable)
	}
	if len(me) != n {
		return false
	}
	for _, e := range me {
		if !errors.Is(e, relay.ErrUnavailable) && !errors.Is(e, relay.ErrHeldBack) {
			return false
		}
	}
	return true
}
