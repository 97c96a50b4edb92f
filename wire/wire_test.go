package wire_test

import (
	"errors"
	"testing"

	"github.com/google/uuid"

	"github.com/sagabox/sagabox/wire"
)

func TestCommandRoundTrip(t *testing.T) {
	t.Parallel()
	c := wire.Command{
		SagaID: uuid.New(), SagaType: "order", Step: "payment", Op: wire.OpForward, Attempt: 2,
		Name: "payment.charge", ReplyTo: "order.replies", Payload: []byte(`{"amount":10}`),
		Headers: map[string]string{"traceparent": "00-x"},
	}
	m := c.Message("payment.commands")
	if m.Key != c.SagaID.String() || m.Topic != "payment.commands" {
		t.Fatalf("message key/topic = %q/%q", m.Key, m.Topic)
	}
	got, err := wire.ParseCommand(m.Headers, m.Payload)
	if err != nil {
		t.Fatal(err)
	}
	if got.SagaID != c.SagaID || got.Step != c.Step || got.Op != c.Op || got.Attempt != 2 ||
		got.Name != c.Name || got.ReplyTo != c.ReplyTo || string(got.Payload) != string(c.Payload) ||
		got.Headers["traceparent"] != "00-x" || len(got.Headers) != 1 {
		t.Fatalf("round trip: got %+v", got)
	}

	r := got.ReplyFor(wire.OutcomeFailure, "declined", nil)
	rm := r.Message(got.ReplyTo)
	back, err := wire.ParseReply(rm.Headers, rm.Payload)
	if err != nil {
		t.Fatal(err)
	}
	if back.SagaID != c.SagaID || back.Outcome != wire.OutcomeFailure || back.Reason != "declined" || back.Attempt != 2 {
		t.Fatalf("reply round trip: got %+v", back)
	}
}

func TestMalformed(t *testing.T) {
	t.Parallel()
	good := wire.Command{SagaID: uuid.New(), Step: "s", Op: wire.OpForward, Attempt: 1, ReplyTo: "r"}.Message("t").Headers
	mutate := func(k, v string) map[string]string {
		h := map[string]string{}
		for kk, vv := range good {
			h[kk] = vv
		}
		if v == "" {
			delete(h, k)
		} else {
			h[k] = v
		}
		return h
	}
	for name, h := range map[string]map[string]string{
		"NoSagaID":   mutate(wire.HeaderSagaID, ""),
		"BadSagaID":  mutate(wire.HeaderSagaID, "nope"),
		"NoStep":     mutate(wire.HeaderStep, ""),
		"BadOp":      mutate(wire.HeaderOp, "sideways"),
		"BadAttempt": mutate(wire.HeaderAttempt, "0"),
		"NoReplyTo":  mutate(wire.HeaderReplyTo, ""),
	} {
		if _, err := wire.ParseCommand(h, nil); !errors.Is(err, wire.ErrMalformed) {
			t.Errorf("%s: err = %v, want ErrMalformed", name, err)
		}
	}
	if _, err := wire.ParseReply(good, nil); !errors.Is(err, wire.ErrMalformed) {
		t.Errorf("reply without outcome: err = %v, want ErrMalformed", err)
	}
}
