package wire_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/sagabox/sagabox/wire"
)

// fuzzHeaders builds a record's headers from fuzzed values; an empty name leaves the
// header out, so the fuzzer also explores missing headers.
func fuzzHeaders(pairs ...string) map[string]string {
	h := map[string]string{}
	for i := 0; i+1 < len(pairs); i += 2 {
		if pairs[i] != "" {
			h[pairs[i]] = pairs[i+1]
		}
	}
	return h
}

// FuzzParseCommand: ParseCommand never panics, fails only with ErrMalformed, and
// what it accepts survives Message → ParseCommand unchanged.
func FuzzParseCommand(f *testing.F) {
	f.Add("0190a0c4-5b7e-7000-8000-000000000001", "order", "payment", "forward", "1", "payment.charge", "order.replies", "traceparent", "00-x", []byte(`{"amount":10}`))
	f.Add("{0190a0c4-5b7e-7000-8000-000000000001}", "", "s", "compensate", "+7", "c", "r", "saga-step", "other", []byte{0, 0xff})
	f.Add("not-a-uuid", "t", "", "sideways", "0", "", "", "", "", []byte(nil))
	f.Fuzz(func(t *testing.T, id, typ, step, op, attempt, name, replyTo, extraKey, extraValue string, payload []byte) {
		h := fuzzHeaders(wire.HeaderSagaID, id, wire.HeaderSagaType, typ, wire.HeaderStep, step, wire.HeaderOp, op,
			wire.HeaderAttempt, attempt, wire.HeaderCommand, name, wire.HeaderReplyTo, replyTo, extraKey, extraValue)
		c, err := wire.ParseCommand(h, payload)
		if err != nil {
			if !errors.Is(err, wire.ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		m := c.Message("t")
		again, err := wire.ParseCommand(m.Headers, m.Payload)
		if err != nil {
			t.Fatalf("a parsed command does not parse after Message: %v\n%+v", err, c)
		}
		if fmt.Sprintf("%+v", again) != fmt.Sprintf("%+v", c) {
			t.Fatalf("round trip changed the command:\n got %+v\nwant %+v", again, c)
		}
	})
}

// FuzzParseReply: ParseReply never panics, fails only with ErrMalformed, and what it
// accepts survives Message → ParseReply unchanged.
func FuzzParseReply(f *testing.F) {
	f.Add("0190a0c4-5b7e-7000-8000-000000000001", "payment", "forward", "2", "failure", "declined", "traceparent", "00-x", []byte("r"))
	f.Add("urn:uuid:0190a0c4-5b7e-7000-8000-000000000001", "s", "compensate", "1", "success", "", "saga-outcome", "x", []byte{0})
	f.Add("", "", "", "-1", "maybe", "\x00", "", "", []byte(nil))
	f.Fuzz(func(t *testing.T, id, step, op, attempt, outcome, reason, extraKey, extraValue string, payload []byte) {
		h := fuzzHeaders(wire.HeaderSagaID, id, wire.HeaderStep, step, wire.HeaderOp, op, wire.HeaderAttempt, attempt,
			wire.HeaderOutcome, outcome, wire.HeaderReason, reason, extraKey, extraValue)
		r, err := wire.ParseReply(h, payload)
		if err != nil {
			if !errors.Is(err, wire.ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		m := r.Message("t")
		again, err := wire.ParseReply(m.Headers, m.Payload)
		if err != nil {
			t.Fatalf("a parsed reply does not parse after Message: %v\n%+v", err, r)
		}
		if fmt.Sprintf("%+v", again) != fmt.Sprintf("%+v", r) {
			t.Fatalf("round trip changed the reply:\n got %+v\nwant %+v", again, r)
		}
	})
}
