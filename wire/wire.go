package wire

import (
	"errors"
	"fmt"
	"strconv"

	"github.com/google/uuid"

	"github.com/sagabox/sagabox/outbox"
)

// Header names. They appear on every command and reply next to outbox.HeaderMessageID.
const (
	HeaderSagaID   = "saga-id"
	HeaderSagaType = "saga-type"
	HeaderStep     = "saga-step"
	HeaderOp       = "saga-op"
	HeaderAttempt  = "saga-attempt"
	HeaderCommand  = "saga-command"  // commands: what to do, e.g. "inventory.reserve"
	HeaderReplyTo  = "saga-reply-to" // commands: the topic the reply goes to
	HeaderOutcome  = "saga-outcome"  // replies: see Outcome
	HeaderReason   = "saga-reason"   // replies: why a step failed or was ignored
)

// ErrMalformed means a record lacks a saga header or has an invalid one. It is
// permanent: redelivering the record cannot fix it.
var ErrMalformed = errors.New("malformed saga message")

// Op says whether a command runs a step or undoes it.
type Op string

const (
	OpForward    Op = "forward"
	OpCompensate Op = "compensate"
)

// Valid reports whether o is a known op.
func (o Op) Valid() bool { return o == OpForward || o == OpCompensate }

// Outcome is a participant's answer to a command.
type Outcome string

const (
	// OutcomeSuccess: the step (or its compensation) took effect, or had already.
	OutcomeSuccess Outcome = "success"
	// OutcomeFailure: a business refusal (payment declined). Not retried; the saga compensates.
	OutcomeFailure Outcome = "failure"
	// OutcomeRetryable: a transient error; nothing took effect, the orchestrator may retry.
	OutcomeRetryable Outcome = "retryable"
	// OutcomeIgnored: a forward command arrived after its compensation (a hanging
	// request) and was not executed.
	OutcomeIgnored Outcome = "ignored"
)

// Valid reports whether o is a known outcome.
func (o Outcome) Valid() bool {
	switch o {
	case OutcomeSuccess, OutcomeFailure, OutcomeRetryable, OutcomeIgnored:
		return true
	}
	return false
}

// Command asks a participant to run or undo one step of one saga.
type Command struct {
	SagaID   uuid.UUID
	SagaType string
	Step     string
	Op       Op
	Attempt  int
	Name     string // what to do, e.g. "payment.charge"
	ReplyTo  string // topic of the reply
	Payload  []byte
	// Headers carries extra headers (e.g. traceparent) through to the participant.
	Headers map[string]string
}

// Reply is a participant's answer to a Command.
type Reply struct {
	SagaID  uuid.UUID
	Step    string
	Op      Op
	Attempt int
	Outcome Outcome
	Reason  string // why it failed or was ignored; empty on success
	Payload []byte // the step's result on success
	Headers map[string]string
}

// Message turns c into an outbox message to topic, keyed by saga id.
func (c Command) Message(topic string) outbox.Message {
	h := copyHeaders(c.Headers, 8)
	h[HeaderSagaID] = c.SagaID.String()
	h[HeaderSagaType] = c.SagaType
	h[HeaderStep] = c.Step
	h[HeaderOp] = string(c.Op)
	h[HeaderAttempt] = strconv.Itoa(c.Attempt)
	h[HeaderCommand] = c.Name
	h[HeaderReplyTo] = c.ReplyTo
	return outbox.Message{Topic: topic, Key: c.SagaID.String(), Payload: c.Payload, Headers: h}
}

// ReplyFor returns a reply to c with the given outcome.
func (c Command) ReplyFor(outcome Outcome, reason string, payload []byte) Reply {
	return Reply{SagaID: c.SagaID, Step: c.Step, Op: c.Op, Attempt: c.Attempt, Outcome: outcome, Reason: reason, Payload: payload}
}

// Message turns r into an outbox message to topic, keyed by saga id.
func (r Reply) Message(topic string) outbox.Message {
	h := copyHeaders(r.Headers, 6)
	h[HeaderSagaID] = r.SagaID.String()
	h[HeaderStep] = r.Step
	h[HeaderOp] = string(r.Op)
	h[HeaderAttempt] = strconv.Itoa(r.Attempt)
	h[HeaderOutcome] = string(r.Outcome)
	if r.Reason != "" {
		h[HeaderReason] = r.Reason
	}
	return outbox.Message{Topic: topic, Key: r.SagaID.String(), Payload: r.Payload, Headers: h}
}

// ParseCommand reads a command from a record's headers and value. Headers that are
// not saga headers are kept in Command.Headers. Errors wrap ErrMalformed.
func ParseCommand(headers map[string]string, payload []byte) (Command, error) {
	var c Command
	var err error
	if c.SagaID, c.Step, c.Op, c.Attempt, err = parseCommon(headers); err != nil {
		return Command{}, err
	}
	c.SagaType = headers[HeaderSagaType]
	c.Name = headers[HeaderCommand]
	c.ReplyTo = headers[HeaderReplyTo]
	if c.ReplyTo == "" {
		return Command{}, fmt.Errorf("%w: header %s is missing; the participant would not know where to reply", ErrMalformed, HeaderReplyTo)
	}
	c.Payload = payload
	c.Headers = extraHeaders(headers)
	return c, nil
}

// ParseReply reads a reply from a record's headers and value. Errors wrap ErrMalformed.
func ParseReply(headers map[string]string, payload []byte) (Reply, error) {
	var r Reply
	var err error
	if r.SagaID, r.Step, r.Op, r.Attempt, err = parseCommon(headers); err != nil {
		return Reply{}, err
	}
	r.Outcome = Outcome(headers[HeaderOutcome])
	if !r.Outcome.Valid() {
		return Reply{}, fmt.Errorf("%w: header %s is %q; want success, failure, retryable or ignored", ErrMalformed, HeaderOutcome, r.Outcome)
	}
	r.Reason = headers[HeaderReason]
	r.Payload = payload
	r.Headers = extraHeaders(headers)
	return r, nil
}

func parseCommon(h map[string]string) (id uuid.UUID, step string, op Op, attempt int, err error) {
	raw, ok := h[HeaderSagaID]
	if !ok {
		return id, "", "", 0, fmt.Errorf("%w: header %s is missing", ErrMalformed, HeaderSagaID)
	}
	if id, err = uuid.Parse(raw); err != nil {
		return id, "", "", 0, fmt.Errorf("%w: header %s is %q, not a UUID", ErrMalformed, HeaderSagaID, raw)
	}
	if step = h[HeaderStep]; step == "" {
		return id, "", "", 0, fmt.Errorf("%w: header %s is missing", ErrMalformed, HeaderStep)
	}
	if op = Op(h[HeaderOp]); !op.Valid() {
		return id, "", "", 0, fmt.Errorf("%w: header %s is %q; want forward or compensate", ErrMalformed, HeaderOp, op)
	}
	if attempt, err = strconv.Atoi(h[HeaderAttempt]); err != nil || attempt < 1 {
		return id, "", "", 0, fmt.Errorf("%w: header %s is %q; want a positive integer", ErrMalformed, HeaderAttempt, h[HeaderAttempt])
	}
	return id, step, op, attempt, nil
}

var sagaHeaders = map[string]bool{
	HeaderSagaID: true, HeaderSagaType: true, HeaderStep: true, HeaderOp: true, HeaderAttempt: true,
	HeaderCommand: true, HeaderReplyTo: true, HeaderOutcome: true, HeaderReason: true,
	outbox.HeaderMessageID: true,
}

func extraHeaders(h map[string]string) map[string]string {
	var out map[string]string
	for k, v := range h {
		if sagaHeaders[k] {
			continue
		}
		if out == nil {
			out = make(map[string]string)
		}
		out[k] = v
	}
	return out
}

func copyHeaders(h map[string]string, extra int) map[string]string {
	out := make(map[string]string, len(h)+extra)
	for k, v := range h {
		out[k] = v
	}
	return out
}
