package sagastate

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"math"
	"slices"
	"time"

	"github.com/sagabox/sagabox/wire"
)

// The transition function. Everything the orchestrator does to a saga is one call of
// transition(plan, state, input) → (new state, commands, log events): no I/O, no clock, no
// randomness (jitter is a hash of saga, step, op and attempt), so it is tested with tables
// and replays identically. Persisting its output is the orchestrator's job.

type inputKind int

const (
	inStart inputKind = iota + 1 // a new saga: start the first stage
	inReply                      // a participant's reply
	inTick                       // the sweeper: deadlines and scheduled retries due at now
	inRetry                      // operator: resume or hurry a saga's compensation
	inAbort                      // operator: compensate a running saga, give up a compensating one
)

type input struct {
	kind   inputKind
	now    time.Time
	reply  wire.Reply // inReply
	reason string     // inRetry, inAbort: the operator's reason
}

// outCommand is a command and the topic it goes to; ReplyTo is filled by the orchestrator.
type outCommand struct {
	Topic string
	Cmd   wire.Command
}

type result struct {
	state    Instance
	commands []outCommand
	events   []Event
	// attempts are the step attempts that ended, for Hooks.StepEnded.
	attempts []StepInfo
	// ignored says why the input changed nothing (a stale or duplicate reply); the state is
	// then unchanged and nothing must be written.
	ignored string
}

type machine struct {
	p   *plan // nil when the saga type is not registered: only compensation can proceed
	s   Instance
	now time.Time
	out result
	err error // set when the transition cannot be computed at all
}

func transition(p *plan, s Instance, in input) (result, error) {
	s.Steps = slices.Clone(s.Steps)
	m := &machine{p: p, s: s, now: in.now}
	var err error
	switch in.kind {
	case inStart:
		err = m.start()
	case inReply:
		err = m.onReply(in.reply)
	case inTick:
		m.onTick()
	case inRetry:
		err = m.onRetry(in.reason)
	case inAbort:
		err = m.onAbort(in.reason)
	default:
		err = fmt.Errorf("sagastate: unknown input kind %d", in.kind)
	}
	if err == nil {
		err = m.err
	}
	if err != nil {
		return result{}, err
	}
	if m.out.ignored == "" {
		m.s.WakeAt = nextWake(s.WakeAt, m.wakeAt(), in.kind)
		if in.kind != inTick || len(m.out.events) > 0 {
			m.s.UpdatedAt = m.now // a tick that found nothing due only moved WakeAt on
		}
	}
	m.out.state = m.s
	return m.out, nil
}

func (m *machine) event(t EventType, st *StepState, detail string) {
	e := Event{SagaID: m.s.ID, Type: t, At: m.now, Detail: detail}
	if st != nil {
		e.Step, e.Op, e.Attempt = st.Name, st.Op, st.Attempt
	}
	m.out.events = append(m.out.events, e)
}

// attemptEnded records the end of st's current attempt for the hooks; call it before the
// attempt's deadline is cleared.
func (m *machine) attemptEnded(st *StepState, replyAttempt int, o AttemptOutcome) {
	a := StepInfo{Step: st.Name, Op: st.Op, Attempt: replyAttempt, Outcome: o}
	if !st.Deadline.IsZero() && replyAttempt == st.Attempt {
		a.Duration = m.now.Sub(st.Deadline.Add(-st.Timeout))
	}
	m.out.attempts = append(m.out.attempts, a)
}

func (m *machine) start() error {
	m.s.Status = SagaRunning
	m.s.CreatedAt = m.now
	m.event(EventSagaStarted, nil, "")
	m.startStage(0)
	return nil
}

func (m *machine) startStage(stage int) {
	for i := range m.s.Steps {
		if st := &m.s.Steps[i]; st.Stage == stage && st.Status == StepPending {
			m.sendForward(st)
			if m.s.Status != SagaRunning {
				return // the step could not even be sent (its input failed)
			}
		}
	}
}

func (m *machine) sendForward(st *StepState) {
	if st.Input == nil && m.p == nil {
		// Not a step failure: an orchestrator that lacks the definition must not decide
		// the fate of sagas it cannot run. The whole transition is refused.
		m.err = fmt.Errorf("%w: saga %s is of type %q, not registered with this orchestrator; add its definition to Config.Sagas",
			ErrUnknownSagaType, m.s.ID, m.s.Type)
		return
	}
	if st.Input == nil {
		in, err := m.computeInput(st)
		if err != nil {
			st.Status, st.Op, st.LastError, st.FinishedAt = StepFailed, wire.OpForward, err.Error(), m.now
			m.attemptEnded(st, st.Attempt, AttemptFailed)
			m.event(EventStepFailed, st, "input: "+err.Error())
			m.beginCompensation(fmt.Sprintf("step %s: input: %v", st.Name, err), false)
			return
		}
		st.Input = in
	}
	if st.StartedAt.IsZero() {
		st.StartedAt = m.now
	}
	st.Status, st.Op = StepExecuting, wire.OpForward
	st.Attempt++
	st.Deadline, st.NextAttemptAt = m.now.Add(st.Timeout), time.Time{}
	m.event(EventStepStarted, st, "")
	m.command(st, st.Do)
}

func (m *machine) sendCompensate(st *StepState) {
	if st.Op != wire.OpCompensate {
		st.Op, st.Attempt, st.AttemptBase = wire.OpCompensate, 0, 0
	}
	st.Status = StepCompensating
	st.Attempt++
	st.Deadline, st.NextAttemptAt = m.now.Add(st.Timeout), time.Time{}
	m.event(EventStepStarted, st, "compensation")
	m.command(st, st.Undo)
}

func (m *machine) command(st *StepState, name string) {
	m.out.commands = append(m.out.commands, outCommand{Topic: st.Topic, Cmd: wire.Command{
		SagaID: m.s.ID, SagaType: m.s.Type, Step: st.Name, Op: st.Op, Attempt: st.Attempt,
		Name: name, Payload: st.Input,
	}})
}

func (m *machine) computeInput(st *StepState) ([]byte, error) {
	fn, ok := m.p.inputs[st.Name]
	if !ok {
		return []byte(m.s.Payload), nil
	}
	results := Results{}
	for _, o := range m.s.Steps {
		if o.Status == StepCompleted {
			results[o.Name] = o.Result
		}
	}
	return fn(m.s.Payload, results)
}

func (m *machine) ignore(format string, args ...any) error {
	m.out.ignored = fmt.Sprintf(format, args...)
	return nil
}

func (m *machine) onReply(r wire.Reply) error {
	st := m.s.Step(r.Step)
	if st == nil {
		return fmt.Errorf("%w: saga %s (type %s) has no step %q", ErrUnknownStep, m.s.ID, m.s.Type, r.Step)
	}
	if m.s.Status.Final() {
		return m.ignore("saga is %s", m.s.Status)
	}
	if r.Op != st.Op {
		return m.ignore("reply to %s but the step is at %s (status %s)", r.Op, st.Op, st.Status)
	}
	if r.Attempt > st.Attempt {
		return m.ignore("reply to attempt %d but only %d sent", r.Attempt, st.Attempt)
	}
	inFlight := !st.Deadline.IsZero() && r.Attempt == st.Attempt
	switch {
	case r.Op == wire.OpForward && st.Status == StepExecuting:
		// Success and failure are definitive whatever attempt they answer: the participant's
		// barrier runs a step once per (saga, step, op), so every attempt gets the same answer.
		switch r.Outcome {
		case wire.OutcomeSuccess:
			m.attemptEnded(st, r.Attempt, AttemptSucceeded)
			m.forwardDone(st, r.Payload)
		case wire.OutcomeFailure, wire.OutcomeIgnored:
			m.attemptEnded(st, r.Attempt, AttemptFailed)
			// Ignored: the barrier saw a compensation first, so nothing ran and nothing will.
			st.Status, st.LastError, st.FinishedAt = StepFailed, r.Reason, m.now
			st.Deadline, st.NextAttemptAt = time.Time{}, time.Time{}
			m.event(EventStepFailed, st, string(r.Outcome)+": "+r.Reason)
			m.beginCompensation(fmt.Sprintf("step %s failed: %s", st.Name, r.Reason), false)
		case wire.OutcomeRetryable:
			if !inFlight {
				return m.ignore("retryable reply to attempt %d, not the one in flight", r.Attempt)
			}
			m.attemptEnded(st, r.Attempt, AttemptRetryable)
			m.forwardAttemptFailed(st, "retryable: "+r.Reason, false)
		}
	case r.Op == wire.OpCompensate && st.Status == StepCompensating:
		switch r.Outcome {
		case wire.OutcomeSuccess, wire.OutcomeIgnored:
			m.attemptEnded(st, r.Attempt, AttemptSucceeded)
			st.Status, st.FinishedAt, st.LastError = StepCompensated, m.now, ""
			st.Deadline, st.NextAttemptAt = time.Time{}, time.Time{}
			m.event(EventStepCompensated, st, "")
			m.advanceCompensation()
		default:
			if !inFlight {
				return m.ignore("%s reply to compensation attempt %d, not the one in flight", r.Outcome, r.Attempt)
			}
			o := AttemptRetryable
			if r.Outcome == wire.OutcomeFailure {
				o = AttemptFailed
			}
			m.attemptEnded(st, r.Attempt, o)
			m.compensationAttemptFailed(st, string(r.Outcome)+": "+r.Reason)
		}
	default:
		return m.ignore("%s reply to %s attempt %d but the step is %s", r.Outcome, r.Op, r.Attempt, st.Status)
	}
	return nil
}

func (m *machine) nextDoneSeq() int {
	n := 0
	for _, o := range m.s.Steps {
		n = max(n, o.DoneSeq)
	}
	return n + 1
}

func (m *machine) forwardDone(st *StepState, payload []byte) {
	st.Status, st.Result, st.MustUndo, st.LastError = StepCompleted, payload, true, ""
	st.DoneSeq, st.FinishedAt = m.nextDoneSeq(), m.now
	st.Deadline, st.NextAttemptAt = time.Time{}, time.Time{}
	m.event(EventStepCompleted, st, "")
	if m.s.Status != SagaRunning {
		m.advanceCompensation() // a sibling failed meanwhile; this one is undone too
		return
	}
	for _, o := range m.s.Steps {
		if o.Stage == st.Stage && o.Status != StepCompleted {
			return // siblings still running
		}
	}
	if st.Stage+1 < m.stages() {
		m.startStage(st.Stage + 1)
		return
	}
	m.s.Status, m.s.FinishedAt = SagaCompleted, m.now
	m.event(EventSagaCompleted, nil, "")
}

func (m *machine) stages() int {
	n := 0
	for _, o := range m.s.Steps {
		n = max(n, o.Stage+1)
	}
	return n
}

// forwardAttemptFailed handles a retryable reply or a timeout of a forward attempt.
func (m *machine) forwardAttemptFailed(st *StepState, why string, timedOut bool) {
	st.Deadline, st.LastError = time.Time{}, why
	left := st.Attempt-st.AttemptBase < st.Retry.MaxAttempts
	if m.s.Status == SagaRunning && left {
		st.NextAttemptAt = m.now.Add(backoff(st.Retry, m.s, st))
		m.event(EventStepFailed, st, fmt.Sprintf("%s; retry at %s", why, st.NextAttemptAt.UTC().Format(time.RFC3339Nano)))
		return
	}
	// Give up. The effect of a timed-out attempt is unknown, and a retryable reply may
	// have been preceded by attempts that timed out: compensate either way. The barrier
	// turns the compensation into a no-op if nothing ran, and makes a late forward a no-op.
	st.MustUndo, st.DoneSeq, st.FinishedAt = true, m.nextDoneSeq(), m.now
	st.Status = StepFailed
	if timedOut {
		st.Status = StepTimeout
	}
	detail := why
	if m.s.Status == SagaRunning {
		detail += fmt.Sprintf("; gave up after %d attempt(s)", st.Attempt-st.AttemptBase)
	} else {
		detail += "; not retried, the saga is compensating"
	}
	m.event(EventStepFailed, st, detail)
	if m.s.Status == SagaRunning {
		m.beginCompensation(fmt.Sprintf("step %s: %s", st.Name, detail), timedOut)
		return
	}
	m.advanceCompensation()
}

func (m *machine) compensationAttemptFailed(st *StepState, why string) {
	st.Deadline, st.LastError = time.Time{}, why
	if st.Attempt-st.AttemptBase < st.UndoRetry.MaxAttempts {
		st.NextAttemptAt = m.now.Add(backoff(st.UndoRetry, m.s, st))
		m.event(EventStepFailed, st, fmt.Sprintf("compensation %s; retry at %s", why, st.NextAttemptAt.UTC().Format(time.RFC3339Nano)))
		return
	}
	st.NextAttemptAt = time.Time{}
	m.event(EventStepFailed, st, fmt.Sprintf("compensation %s; gave up after %d attempt(s)", why, st.Attempt-st.AttemptBase))
	m.s.Status = SagaFailed
	m.s.LastError = fmt.Sprintf("compensation of step %s gave up: %s", st.Name, why)
	m.event(EventSagaFailed, nil, m.s.LastError+"; an operator can Retry or Abort")
}

func (m *machine) beginCompensation(cause string, timedOut bool) {
	if m.s.Status != SagaRunning {
		return
	}
	m.s.Status, m.s.LastError = SagaCompensating, cause
	if timedOut {
		m.s.Status = SagaTimeout
	}
	m.event(EventSagaCompensating, nil, cause)
	// Siblings waiting for a retry are not retried: nothing of theirs is in flight. They
	// may have run in an attempt that timed out, so they are undone too.
	for i := range m.s.Steps {
		if o := &m.s.Steps[i]; o.Status == StepExecuting && o.Deadline.IsZero() {
			o.Status, o.NextAttemptAt, o.MustUndo = StepFailed, time.Time{}, true
			o.DoneSeq, o.FinishedAt = m.nextDoneSeq(), m.now
			m.event(EventStepFailed, o, "retry cancelled, the saga is compensating")
		}
	}
	m.advanceCompensation()
}

// advanceCompensation undoes one step at a time, latest completion first, after every
// in-flight forward command has been answered or timed out.
func (m *machine) advanceCompensation() {
	var next *StepState
	for i := range m.s.Steps {
		o := &m.s.Steps[i]
		switch {
		case o.Status == StepExecuting, o.Status == StepCompensating:
			return // wait: a sibling is in flight, or a compensation is running
		case o.MustUndo && o.Undo != "" && (o.Status == StepCompleted || o.Status == StepFailed || o.Status == StepTimeout):
			if next == nil || o.DoneSeq > next.DoneSeq {
				next = o
			}
		}
	}
	if next != nil {
		m.sendCompensate(next)
		return
	}
	m.s.Status, m.s.FinishedAt = SagaCompensated, m.now
	m.event(EventSagaCompensated, nil, m.s.LastError)
}

func (m *machine) onTick() {
	if m.s.Status.Final() {
		return
	}
	for i := range m.s.Steps {
		st := &m.s.Steps[i]
		if m.s.Status.Final() {
			return // a compensation gave up while handling an earlier step
		}
		switch {
		case !st.Deadline.IsZero() && !m.now.Before(st.Deadline):
			why := fmt.Sprintf("timeout: no reply within %v", st.Timeout)
			m.attemptEnded(st, st.Attempt, AttemptTimedOut)
			if st.Status == StepCompensating {
				m.compensationAttemptFailed(st, why)
			} else {
				m.forwardAttemptFailed(st, why, true)
			}
		case !st.NextAttemptAt.IsZero() && !m.now.Before(st.NextAttemptAt):
			if st.Status == StepCompensating {
				m.sendCompensate(st)
			} else {
				m.sendForward(st)
			}
		}
	}
}

// onRetry is an operator's Retry: a failed saga resumes compensating; a compensating or
// timed-out one sends its stuck compensation again now, without waiting for its backoff.
// Either way the compensation gets a fresh retry allowance.
func (m *machine) onRetry(reason string) error {
	switch {
	case !m.s.FinishedAt.IsZero() || m.s.Status == SagaRunning:
		return fmt.Errorf("%w: saga %s is %s%s; only a failed, compensating or timed-out saga can be retried",
			ErrNotFailed, m.s.ID, m.s.Status, abortedNote(m.s))
	case m.s.Status == SagaFailed:
		m.s.Status = SagaCompensating
	}
	m.event(EventSagaCompensating, nil, operatorNote("operator retry", reason))
	for i := range m.s.Steps {
		if st := &m.s.Steps[i]; st.Status == StepCompensating {
			st.AttemptBase = st.Attempt // a fresh allowance; attempt numbers keep growing
			m.sendCompensate(st)
			return nil
		}
	}
	m.advanceCompensation()
	return nil
}

// onAbort is an operator's Abort. A running saga stops going forward and compensates what
// it did (it waits for forward commands in flight, as for a failed step). A saga that is
// compensating, timed out or failed gives up: it is marked failed, finished and aborted,
// and whatever its compensation had not undone must be settled by hand.
func (m *machine) onAbort(reason string) error {
	if !m.s.FinishedAt.IsZero() {
		return fmt.Errorf("%w: saga %s is %s%s; a finished saga cannot be aborted", ErrNotFailed, m.s.ID, m.s.Status, abortedNote(m.s))
	}
	m.s.AbortedAt = m.now
	if m.s.Status == SagaRunning {
		m.beginCompensation(operatorNote("aborted by operator", reason), false)
		return nil
	}
	m.s.Status, m.s.FinishedAt = SagaFailed, m.now
	for i := range m.s.Steps {
		m.s.Steps[i].Deadline, m.s.Steps[i].NextAttemptAt = time.Time{}, time.Time{}
	}
	m.event(EventSagaFailed, nil, operatorNote("aborted by operator", reason))
	return nil
}

func operatorNote(what, reason string) string {
	if reason == "" {
		return what
	}
	return what + ": " + reason
}

func abortedNote(s Instance) string {
	if !s.AbortedAt.IsZero() {
		return " (aborted)"
	}
	return ""
}

// nextWake is the WakeAt to store: the earliest deadline or retry time (exact), or,
// while that is not earlier than the one stored, the one stored. The stored time is then
// at or before the saga's next deadline, and a transition in mid-saga changes no indexed
// column of the instance row (the update stays on its page, HOT, with no new index
// entries). The sweeper finds the saga at the stored time, and its tick, finding nothing
// due, stores the exact time.
func nextWake(stored, exact time.Time, kind inputKind) time.Time {
	if kind == inTick || exact.IsZero() || stored.IsZero() || exact.Before(stored) {
		return exact
	}
	return stored
}

// wakeAt is the earliest deadline or scheduled retry of the saga's steps.
func (m *machine) wakeAt() time.Time {
	var w time.Time
	for _, st := range m.s.Steps {
		for _, t := range []time.Time{st.Deadline, st.NextAttemptAt} {
			if !t.IsZero() && (w.IsZero() || t.Before(w)) {
				w = t
			}
		}
	}
	return w
}

// backoff is the delay before the attempt after st's current one: Backoff·Multiplier^(n-1),
// capped at MaxBackoff, spread by ±Jitter with a hash of (saga, step, op, attempt) so the
// function stays pure and sagas failing together still spread out.
func backoff(p RetryPolicy, s Instance, st *StepState) time.Duration {
	n := st.Attempt - st.AttemptBase
	d := float64(p.Backoff) * math.Pow(p.Multiplier, float64(max(n-1, 0)))
	d = min(d, float64(p.MaxBackoff))
	if p.Jitter > 0 {
		h := fnv.New64a()
		h.Write(s.ID[:])
		h.Write([]byte(st.Name))
		h.Write([]byte(st.Op))
		var b [8]byte
		binary.LittleEndian.PutUint64(b[:], uint64(st.Attempt))
		h.Write(b[:])
		u := float64(h.Sum64()>>11) / float64(1<<53) // [0, 1)
		d *= 1 + p.Jitter*(2*u-1)
	}
	return time.Duration(d)
}
