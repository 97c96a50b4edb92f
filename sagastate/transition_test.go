package sagastate

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/sagabox/sagabox/wire"
)

type testPayload struct {
	Amount int `json:"amount"`
}

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// harness drives the pure transition function and records what it produced.
type harness struct {
	t    *testing.T
	p    *plan
	s    Instance
	now  time.Time
	cmds []outCommand // every command so far
	evs  []Event      // every event so far
	last result
}

func newHarness(t *testing.T, d Definition) *harness {
	t.Helper()
	if err := d.Err(); err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, p: d.plan(), now: t0}
	h.s = newInstance(h.p, uuid.MustParse("0195f0a4-0000-7000-8000-000000000001"), []byte(`{"amount":5}`))
	h.apply(input{kind: inStart})
	return h
}

func (h *harness) apply(in input) result {
	h.t.Helper()
	in.now = h.now
	r, err := transition(h.p, h.s, in)
	if err != nil {
		h.t.Fatalf("transition: %v", err)
	}
	if r.ignored == "" {
		h.s = r.state
	} else if len(r.commands)+len(r.events) > 0 {
		h.t.Fatalf("an ignored input produced output: %+v", r)
	}
	h.cmds = append(h.cmds, r.commands...)
	h.evs = append(h.evs, r.events...)
	h.last = r
	return r
}

func (h *harness) reply(step string, op wire.Op, attempt int, o wire.Outcome) result {
	h.t.Helper()
	return h.apply(input{kind: inReply, reply: wire.Reply{SagaID: h.s.ID, Step: step, Op: op, Attempt: attempt, Outcome: o, Reason: "because", Payload: []byte(`{"r":"` + step + `"}`)}})
}

func (h *harness) ok(step string) result {
	return h.reply(step, wire.OpForward, h.s.Step(step).Attempt, wire.OutcomeSuccess)
}
func (h *harness) undone(step string) result {
	return h.reply(step, wire.OpCompensate, h.s.Step(step).Attempt, wire.OutcomeSuccess)
}
func (h *harness) tick(d time.Duration) result {
	h.now = h.now.Add(d)
	return h.apply(input{kind: inTick})
}

// sent lists the commands of the last transition as "step:op:attempt".
func (h *harness) sent() []string {
	var out []string
	for _, c := range h.last.commands {
		out = append(out, fmt.Sprintf("%s:%s:%d", c.Cmd.Step, c.Cmd.Op, c.Cmd.Attempt))
	}
	return out
}

func (h *harness) expectSent(want ...string) {
	h.t.Helper()
	if got := h.sent(); !slices.Equal(got, want) {
		h.t.Fatalf("sent %v, want %v", got, want)
	}
}

func (h *harness) expectStatus(saga SagaStatus, steps ...StepStatus) {
	h.t.Helper()
	if h.s.Status != saga {
		h.t.Fatalf("saga status %s, want %s (last error %q)", h.s.Status, saga, h.s.LastError)
	}
	for i, want := range steps {
		if got := h.s.Steps[i].Status; got != want {
			h.t.Fatalf("step %s status %s, want %s", h.s.Steps[i].Name, got, want)
		}
	}
}

// compensations lists the steps compensated, in the order their compensation was sent.
func (h *harness) compensations() []string {
	var out []string
	for _, c := range h.cmds {
		if c.Cmd.Op == wire.OpCompensate && !slices.Contains(out, c.Cmd.Step) {
			out = append(out, c.Cmd.Step)
		}
	}
	return out
}

func (h *harness) eventTypes() []string {
	var out []string
	for _, e := range h.evs {
		s := string(e.Type)
		if e.Step != "" {
			s += ":" + e.Step
		}
		out = append(out, s)
	}
	return out
}

func threeSteps() *Saga[testPayload] {
	return Define[testPayload]("order",
		Step("a", "a.commands").Do("a.do").Undo("a.undo").Timeout(time.Second),
		Step("b", "b.commands").Do("b.do").Undo("b.undo").Timeout(time.Second),
		Step("c", "c.commands").Do("c.do").Undo("c.undo").Timeout(time.Second),
	)
}

var noJitter = RetryPolicy{MaxAttempts: 3, Backoff: 100 * time.Millisecond, Multiplier: 2, Jitter: -1}

func TestTransitionHappyPath(t *testing.T) {
	t.Parallel()
	h := newHarness(t, threeSteps())
	h.expectSent("a:forward:1")
	h.expectStatus(SagaRunning, StepExecuting, StepPending, StepPending)
	if c := h.last.commands[0]; c.Topic != "a.commands" || c.Cmd.Name != "a.do" || string(c.Cmd.Payload) != `{"amount":5}` || c.Cmd.SagaType != "order" {
		t.Fatalf("first command %+v", c)
	}
	if !h.s.WakeAt.Equal(t0.Add(time.Second)) {
		t.Fatalf("wake at %v, want the first deadline", h.s.WakeAt)
	}
	h.ok("a")
	h.expectSent("b:forward:1")
	h.ok("b")
	h.expectSent("c:forward:1")
	h.ok("c")
	h.expectSent()
	h.expectStatus(SagaCompleted, StepCompleted, StepCompleted, StepCompleted)
	if !h.s.WakeAt.IsZero() || h.s.FinishedAt.IsZero() {
		t.Fatalf("finished saga: wake %v finished %v", h.s.WakeAt, h.s.FinishedAt)
	}
	want := "saga_started step_started:a step_completed:a step_started:b step_completed:b step_started:c step_completed:c saga_completed"
	if got := strings.Join(h.eventTypes(), " "); got != want {
		t.Fatalf("events\n got %s\nwant %s", got, want)
	}
	if string(h.s.Step("b").Result) != `{"r":"b"}` {
		t.Fatalf("result not stored: %s", h.s.Step("b").Result)
	}
}

func TestTransitionFailureCompensatesCompletedStepsInReverse(t *testing.T) {
	t.Parallel()
	for failAt, want := range map[string][]string{"a": nil, "b": {"a"}, "c": {"b", "a"}} {
		t.Run("FailAt"+strings.ToUpper(failAt), func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, threeSteps())
			for _, st := range []string{"a", "b", "c"} {
				if st == failAt {
					h.reply(st, wire.OpForward, 1, wire.OutcomeFailure)
					break
				}
				h.ok(st)
			}
			for _, st := range want {
				if h.s.Status != SagaCompensating {
					t.Fatalf("status %s while compensating %s", h.s.Status, st)
				}
				h.undone(st)
			}
			h.expectStatus(SagaCompensated)
			if got := h.compensations(); !slices.Equal(got, want) {
				t.Fatalf("compensated %v, want %v", got, want)
			}
			if h.s.Step(failAt).Status != StepFailed || h.s.Step(failAt).LastError != "because" {
				t.Fatalf("failed step: %+v", *h.s.Step(failAt))
			}
			for _, st := range want {
				if h.s.Step(st).Status != StepCompensated {
					t.Fatalf("step %s is %s", st, h.s.Step(st).Status)
				}
			}
		})
	}
}

// WakeAt stays where it is while the next deadline is later (the instance update then
// rewrites no indexed column); it moves earlier at once, and the sweeper's tick at the
// stored time, finding nothing due, moves it to the exact deadline without counting as
// a change of the saga.
func TestTransitionWakeAtMovesOnlyEarlierUntilATick(t *testing.T) {
	t.Parallel()
	h := newHarness(t, threeSteps())
	h.now = h.now.Add(300 * time.Millisecond)
	h.ok("a") // b's deadline is t0+1.3s
	if !h.s.WakeAt.Equal(t0.Add(time.Second)) {
		t.Fatalf("wake at %v after a later deadline, want it kept at %v", h.s.WakeAt, t0.Add(time.Second))
	}
	changed := h.s.UpdatedAt
	h.tick(700 * time.Millisecond) // at the stored time: nothing due
	h.expectSent()
	if len(h.last.events) != 0 || !h.s.WakeAt.Equal(t0.Add(1300*time.Millisecond)) || !h.s.UpdatedAt.Equal(changed) {
		t.Fatalf("tick with nothing due: events %v, wake %v (want %v), updated %v (want %v)",
			h.last.events, h.s.WakeAt, t0.Add(1300*time.Millisecond), h.s.UpdatedAt, changed)
	}
	h.reply("b", wire.OpForward, 1, wire.OutcomeRetryable) // retry of b at +200ms: earlier
	if st := h.s.Step("b"); !h.s.WakeAt.Equal(st.NextAttemptAt) {
		t.Fatalf("wake at %v, want the earlier retry %v", h.s.WakeAt, st.NextAttemptAt)
	}
	h.tick(time.Second)
	h.expectSent("b:forward:2")
	h.ok("b")
	h.ok("c")
	h.expectStatus(SagaCompleted, StepCompleted, StepCompleted, StepCompleted)
	if !h.s.WakeAt.IsZero() {
		t.Fatalf("finished saga wakes at %v", h.s.WakeAt)
	}
}

func TestTransitionRetryableThenSuccess(t *testing.T) {
	t.Parallel()
	d := Define[testPayload]("r", Step("a", "t").Do("x").Undo("y").Timeout(time.Second).Retry(noJitter))
	h := newHarness(t, d)
	h.reply("a", wire.OpForward, 1, wire.OutcomeRetryable)
	h.expectSent()
	st := h.s.Step("a")
	if st.Status != StepExecuting || !st.Deadline.IsZero() || !st.NextAttemptAt.Equal(t0.Add(100*time.Millisecond)) || !h.s.WakeAt.Equal(st.NextAttemptAt) {
		t.Fatalf("after retryable: %+v wake %v", *st, h.s.WakeAt)
	}
	h.tick(50 * time.Millisecond)
	h.expectSent() // not due yet
	h.tick(50 * time.Millisecond)
	h.expectSent("a:forward:2")
	h.reply("a", wire.OpForward, 1, wire.OutcomeRetryable) // stale: attempt 1 is not in flight
	if h.last.ignored == "" {
		t.Fatal("a retryable reply to an old attempt must be ignored")
	}
	h.reply("a", wire.OpForward, 2, wire.OutcomeRetryable)
	if got := h.s.Step("a").NextAttemptAt.Sub(h.now); got != 200*time.Millisecond {
		t.Fatalf("second backoff %v, want 200ms (exponential)", got)
	}
	h.tick(200 * time.Millisecond)
	h.expectSent("a:forward:3")
	h.ok("a")
	h.expectStatus(SagaCompleted, StepCompleted)
}

func TestTransitionRetriesExhaustedCompensatesTheStepToo(t *testing.T) {
	t.Parallel()
	d := Define[testPayload]("r",
		Step("a", "t").Do("x").Undo("y"),
		Step("b", "t").Do("x").Undo("y").Retry(RetryPolicy{MaxAttempts: 2, Backoff: time.Millisecond}))
	h := newHarness(t, d)
	h.ok("a")
	h.reply("b", wire.OpForward, 1, wire.OutcomeRetryable)
	h.tick(time.Second)
	h.expectSent("b:forward:2")
	h.reply("b", wire.OpForward, 2, wire.OutcomeRetryable)
	h.expectStatus(SagaCompensating, StepCompleted, StepCompensating)
	h.expectSent("b:compensate:1") // may have run in an earlier attempt: undone first
	h.undone("b")
	h.expectSent("a:compensate:1")
	h.undone("a")
	h.expectStatus(SagaCompensated, StepCompensated, StepCompensated)
}

func TestTransitionTimeout(t *testing.T) {
	t.Parallel()
	t.Run("RetriedThenLateSuccessOfFirstAttemptCounts", func(t *testing.T) {
		t.Parallel()
		d := Define[testPayload]("r", Step("a", "t").Do("x").Undo("y").Timeout(time.Second).Retry(noJitter))
		h := newHarness(t, d)
		h.tick(999 * time.Millisecond)
		h.expectSent()
		h.tick(time.Millisecond)
		h.expectSent()
		if st := h.s.Step("a"); st.Status != StepExecuting || st.NextAttemptAt.IsZero() {
			t.Fatalf("after timeout with attempts left: %+v", *st)
		}
		h.tick(100 * time.Millisecond)
		h.expectSent("a:forward:2")
		h.reply("a", wire.OpForward, 1, wire.OutcomeSuccess) // the barrier makes every attempt's answer the same
		h.expectStatus(SagaCompleted, StepCompleted)
	})
	t.Run("ExhaustedCompensatesTimedOutStepFirst", func(t *testing.T) {
		t.Parallel()
		d := Define[testPayload]("r",
			Step("a", "t").Do("x").Undo("y"),
			Step("b", "t").Do("x").Undo("y").Timeout(time.Second).Retry(RetryPolicy{MaxAttempts: 1}))
		h := newHarness(t, d)
		h.ok("a")
		h.tick(time.Second)
		h.expectStatus(SagaTimeout, StepCompleted, StepCompensating)
		if !strings.Contains(h.evs[len(h.evs)-3].Detail, "timeout") {
			t.Fatalf("no timeout in the log: %+v", h.evs)
		}
		h.expectSent("b:compensate:1")
		// The late success of the timed-out forward is ignored: b is being compensated.
		h.reply("b", wire.OpForward, 1, wire.OutcomeSuccess)
		if h.last.ignored == "" {
			t.Fatal("late success after timeout must be ignored")
		}
		h.undone("b")
		h.expectSent("a:compensate:1")
		h.undone("a")
		h.expectStatus(SagaCompensated, StepCompensated, StepCompensated)
	})
	t.Run("CompensationTimeoutIsRetried", func(t *testing.T) {
		t.Parallel()
		d := Define[testPayload]("r", Step("a", "t").Do("x").Undo("y").Timeout(time.Second).
			UndoRetry(RetryPolicy{MaxAttempts: 2, Backoff: 10 * time.Millisecond, Jitter: -1}),
			Step("b", "t").Do("x").Undo("y"))
		h := newHarness(t, d)
		h.ok("a")
		h.reply("b", wire.OpForward, 1, wire.OutcomeFailure)
		h.expectSent("a:compensate:1")
		h.tick(time.Second)
		h.expectSent()
		h.tick(10 * time.Millisecond)
		h.expectSent("a:compensate:2")
		h.undone("a")
		h.expectStatus(SagaCompensated, StepCompensated, StepFailed)
	})
}

func TestTransitionParallelStage(t *testing.T) {
	t.Parallel()
	d := Define[testPayload]("p",
		Step("a", "t").Do("x").Undo("y"),
		Parallel(Step("b", "t").Do("x").Undo("y"), Step("c", "t").Do("x").Undo("y"), Step("d", "t").Do("x").Undo("y").Retry(noJitter)),
		Step("e", "t").Do("x").Undo("y"))
	t.Run("AllSucceed", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t, d)
		h.ok("a")
		h.expectSent("b:forward:1", "c:forward:1", "d:forward:1")
		h.ok("c")
		h.ok("d")
		h.expectSent()
		h.ok("b")
		h.expectSent("e:forward:1")
		h.ok("e")
		h.expectStatus(SagaCompleted)
	})
	t.Run("OneBranchFailsSiblingsFinishFirst", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t, d)
		h.ok("a")
		h.ok("c")
		h.reply("d", wire.OpForward, 1, wire.OutcomeRetryable) // waiting for a retry
		h.reply("b", wire.OpForward, 1, wire.OutcomeFailure)
		// d's retry is cancelled (it may have run: it gets compensated); c is done; nothing in flight.
		h.expectStatus(SagaCompensating, StepCompleted, StepFailed, StepCompleted, StepCompensating, StepPending)
		h.expectSent("d:compensate:1")
		h.undone("d")
		h.expectSent("c:compensate:1")
		h.undone("c")
		h.expectSent("a:compensate:1")
		h.undone("a")
		h.expectStatus(SagaCompensated, StepCompensated, StepFailed, StepCompensated, StepCompensated, StepPending)
	})
	t.Run("InFlightSiblingIsAwaited", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t, d)
		h.ok("a")
		h.ok("b")
		h.reply("c", wire.OpForward, 1, wire.OutcomeFailure)
		h.expectSent() // d still in flight
		h.ok("d")
		h.expectSent("d:compensate:1") // d completed last: undone first
		h.undone("d")
		h.expectSent("b:compensate:1")
		h.undone("b")
		h.undone("a")
		h.expectStatus(SagaCompensated)
		if got := h.compensations(); !slices.Equal(got, []string{"d", "b", "a"}) {
			t.Fatalf("compensation order %v", got)
		}
	})
}

func TestTransitionCompensationFailsTwiceThenSucceeds(t *testing.T) {
	t.Parallel()
	d := Define[testPayload]("c",
		Step("a", "t").Do("x").Undo("y").UndoRetry(RetryPolicy{MaxAttempts: 3, Backoff: 10 * time.Millisecond, Jitter: -1}),
		Step("b", "t").Do("x").Undo("y"))
	h := newHarness(t, d)
	h.ok("a")
	h.reply("b", wire.OpForward, 1, wire.OutcomeFailure)
	h.reply("a", wire.OpCompensate, 1, wire.OutcomeRetryable)
	h.tick(10 * time.Millisecond)
	h.expectSent("a:compensate:2")
	h.reply("a", wire.OpCompensate, 2, wire.OutcomeFailure)
	h.tick(20 * time.Millisecond)
	h.expectSent("a:compensate:3")
	h.undone("a")
	h.expectStatus(SagaCompensated, StepCompensated, StepFailed)
}

func TestTransitionCompensationGivesUpThenOperator(t *testing.T) {
	t.Parallel()
	d := Define[testPayload]("c",
		Step("a", "t").Do("x").Undo("y").UndoRetry(RetryPolicy{MaxAttempts: 2, Backoff: time.Millisecond}),
		Step("b", "t").Do("x").Undo("y"))
	fail := func(t *testing.T) *harness {
		h := newHarness(t, d)
		h.ok("a")
		h.reply("b", wire.OpForward, 1, wire.OutcomeFailure)
		h.reply("a", wire.OpCompensate, 1, wire.OutcomeRetryable)
		h.tick(time.Second)
		h.reply("a", wire.OpCompensate, 2, wire.OutcomeRetryable)
		h.expectStatus(SagaFailed, StepCompensating, StepFailed)
		if !h.s.WakeAt.IsZero() || !strings.Contains(h.s.LastError, "compensation of step a") {
			t.Fatalf("failed saga: wake %v error %q", h.s.WakeAt, h.s.LastError)
		}
		return h
	}
	t.Run("RetryResumesWithFreshAllowance", func(t *testing.T) {
		t.Parallel()
		h := fail(t)
		h.apply(input{kind: inRetry})
		h.expectSent("a:compensate:3")
		h.reply("a", wire.OpCompensate, 3, wire.OutcomeRetryable) // 1 of 2 in the new allowance
		h.expectStatus(SagaCompensating)
		h.tick(time.Second)
		h.expectSent("a:compensate:4")
		h.undone("a")
		h.expectStatus(SagaCompensated, StepCompensated)
	})
	t.Run("RetryWithoutTheDefinition", func(t *testing.T) {
		t.Parallel()
		h := fail(t)
		h.p = nil // an operator tool that knows no definitions can still resume compensation
		h.apply(input{kind: inRetry})
		h.expectSent("a:compensate:3")
		h.undone("a")
		h.expectStatus(SagaCompensated, StepCompensated)
	})
	t.Run("Abort", func(t *testing.T) {
		t.Parallel()
		h := fail(t)
		h.apply(input{kind: inAbort, reason: "refunded by hand"})
		if h.s.AbortedAt.IsZero() || h.s.Status != SagaFailed || h.evs[len(h.evs)-1].Detail != "aborted by operator: refunded by hand" {
			t.Fatalf("aborted saga %+v", h.s)
		}
		for _, k := range []inputKind{inRetry, inAbort} {
			if _, err := transition(h.p, h.s, input{kind: k, now: h.now}); !errors.Is(err, ErrNotFailed) {
				t.Fatalf("operator input %d on an aborted saga: %v", k, err)
			}
		}
	})
	t.Run("OnlyFailedSagas", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t, d)
		if _, err := transition(h.p, h.s, input{kind: inRetry, now: h.now}); !errors.Is(err, ErrNotFailed) {
			t.Fatalf("retry of a running saga: %v", err)
		}
	})
}

func TestTransitionIgnoresStaleReplies(t *testing.T) {
	t.Parallel()
	h := newHarness(t, threeSteps())
	for name, r := range map[string]wire.Reply{
		"WrongOp":        {Step: "a", Op: wire.OpCompensate, Attempt: 1, Outcome: wire.OutcomeSuccess},
		"FutureAttempt":  {Step: "a", Op: wire.OpForward, Attempt: 2, Outcome: wire.OutcomeSuccess},
		"NotStartedStep": {Step: "b", Op: wire.OpForward, Attempt: 0, Outcome: wire.OutcomeSuccess},
	} {
		r.SagaID = h.s.ID
		if res := h.apply(input{kind: inReply, reply: r}); res.ignored == "" {
			t.Errorf("%s: not ignored", name)
		}
	}
	h.ok("a")
	if res := h.reply("a", wire.OpForward, 1, wire.OutcomeSuccess); res.ignored == "" {
		t.Error("duplicate success not ignored")
	}
	if _, err := transition(h.p, h.s, input{kind: inReply, now: h.now, reply: wire.Reply{Step: "zzz", Op: wire.OpForward, Attempt: 1}}); !errors.Is(err, ErrUnknownStep) {
		t.Errorf("unknown step: %v", err)
	}
	h.ok("b")
	h.ok("c")
	if res := h.reply("c", wire.OpForward, 1, wire.OutcomeFailure); res.ignored == "" {
		t.Error("reply to a completed saga not ignored")
	}
}

func TestTransitionInputFromEarlierResults(t *testing.T) {
	t.Parallel()
	d := Define[testPayload]("i", Step("a", "t").Do("x").Undo("y"), Step("b", "t").Do("x").Undo("y")).
		Input("b", func(p testPayload, r Results) (any, error) {
			var ra struct{ R string }
			if err := r.Decode("a", &ra); err != nil {
				return nil, err
			}
			if p.Amount > 100 {
				return nil, errors.New("too much")
			}
			return map[string]any{"from_a": ra.R, "amount": p.Amount}, nil
		})
	h := newHarness(t, d)
	h.ok("a")
	if got := string(h.last.commands[0].Cmd.Payload); got != `{"amount":5,"from_a":"a"}` {
		t.Fatalf("input %s", got)
	}
	t.Run("InputErrorFailsAndCompensates", func(t *testing.T) {
		t.Parallel()
		h := &harness{t: t, p: d.plan(), now: t0}
		h.s = newInstance(h.p, uuid.New(), []byte(`{"amount":500}`))
		h.apply(input{kind: inStart})
		h.ok("a")
		h.expectStatus(SagaCompensating, StepCompensating, StepFailed)
		h.expectSent("a:compensate:1")
		if !strings.Contains(h.s.Step("b").LastError, "too much") {
			t.Fatalf("last error %q", h.s.Step("b").LastError)
		}
	})
}

func TestTransitionWithoutTheDefinitionRefusesToRunForward(t *testing.T) {
	t.Parallel()
	h := newHarness(t, threeSteps())
	s := h.s
	_, err := transition(nil, s, input{kind: inReply, now: h.now, reply: wire.Reply{SagaID: s.ID, Step: "a", Op: wire.OpForward, Attempt: 1, Outcome: wire.OutcomeSuccess}})
	if !errors.Is(err, ErrUnknownSagaType) {
		t.Fatalf("err = %v, want ErrUnknownSagaType (b's input needs the definition)", err)
	}
}

func TestBackoff(t *testing.T) {
	t.Parallel()
	p := RetryPolicy{Backoff: 100 * time.Millisecond, MaxBackoff: time.Second, Multiplier: 2, Jitter: 0.2}
	s := Instance{ID: uuid.New()}
	spread := map[time.Duration]bool{}
	for attempt := 1; attempt <= 8; attempt++ {
		st := &StepState{Name: "a", Op: wire.OpForward, Attempt: attempt}
		d := backoff(p, s, st)
		base := min(100*time.Millisecond<<(attempt-1), time.Second)
		if d < base*8/10 || d > base*12/10 {
			t.Fatalf("attempt %d: backoff %v outside %v ±20%%", attempt, d, base)
		}
		if d != backoff(p, s, st) {
			t.Fatal("backoff must be deterministic")
		}
		spread[d] = true
	}
	for i := 0; i < 20; i++ {
		spread[backoff(p, Instance{ID: uuid.New()}, &StepState{Name: "a", Attempt: 1})] = true
	}
	if len(spread) < 20 {
		t.Fatalf("jitter does not spread sagas: %d distinct delays", len(spread))
	}
}

func TestDefineErrors(t *testing.T) {
	t.Parallel()
	d := Define[testPayload]("bad name!",
		Step("a", "").Do("x"),
		Step("a", "t"),
		Parallel(),
		Step("b", "t").Do("x").Timeout(-time.Second).Retry(RetryPolicy{MaxAttempts: -1, Multiplier: 0.5, Backoff: time.Second, MaxBackoff: time.Millisecond}),
	).Input("nope", func(testPayload, Results) (any, error) { return nil, nil })
	err := d.Err()
	if !errors.Is(err, ErrInvalidDefinition) {
		t.Fatalf("err = %v", err)
	}
	for _, want := range []string{"saga type name", "topic is empty", "declared twice", "no Do command", "Parallel needs", "Timeout", "MaxAttempts", "Multiplier", "below Backoff", `Input for step "nope"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %q:\n%v", want, err)
		}
	}
}

func TestTransitionAbortRunningSagaCompensatesIt(t *testing.T) {
	t.Parallel()
	d := Define[testPayload]("c", Step("a", "t").Do("x").Undo("y"), Parallel(Step("b", "t").Do("x").Undo("y"), Step("c", "t").Do("x").Undo("y")))
	h := newHarness(t, d)
	h.ok("a")
	h.ok("b") // c still in flight
	h.apply(input{kind: inAbort, reason: "customer called"})
	h.expectStatus(SagaCompensating, StepCompleted, StepCompleted, StepExecuting)
	h.expectSent() // waits for c's answer before undoing anything
	if h.s.AbortedAt.IsZero() || !h.s.FinishedAt.IsZero() || h.evs[len(h.evs)-1].Detail != "aborted by operator: customer called" {
		t.Fatalf("aborted running saga: %+v, last event %+v", h.s, h.evs[len(h.evs)-1])
	}
	h.ok("c")
	h.expectSent("c:compensate:1")
	h.undone("c")
	h.undone("b")
	h.undone("a")
	h.expectStatus(SagaCompensated, StepCompensated, StepCompensated, StepCompensated)
	if _, err := transition(h.p, h.s, input{kind: inAbort, now: h.now}); !errors.Is(err, ErrNotFailed) {
		t.Fatalf("abort of a compensated saga: %v", err)
	}
}

// A timed-out saga whose compensation keeps failing used to refuse both operator
// actions ("only a failed saga") while it compensated on and on.
func TestTimeoutSagaWithFailingCompensationAcceptsRetryAndAbort(t *testing.T) {
	t.Parallel()
	d := Define[testPayload]("c",
		Step("a", "t").Do("x").Undo("y").UndoRetry(RetryPolicy{MaxAttempts: 100, Backoff: time.Minute, Jitter: -1}),
		Step("b", "t").Do("x").Undo("y").Timeout(time.Second).Retry(RetryPolicy{MaxAttempts: 1}))
	stuck := func(t *testing.T) *harness {
		h := newHarness(t, d)
		h.ok("a")
		h.tick(time.Second) // b times out: the saga compensates b, then a
		h.undone("b")
		h.reply("a", wire.OpCompensate, 1, wire.OutcomeRetryable)
		h.expectStatus(SagaTimeout, StepCompensating, StepCompensated)
		return h
	}
	t.Run("RetrySendsTheCompensationNow", func(t *testing.T) {
		t.Parallel()
		h := stuck(t)
		h.apply(input{kind: inRetry, reason: "participant fixed"})
		h.expectSent("a:compensate:2")
		if e := h.evs[len(h.evs)-2]; e.Type != EventSagaCompensating || e.Detail != "operator retry: participant fixed" {
			t.Fatalf("retry event %+v", e)
		}
		h.undone("a")
		h.expectStatus(SagaCompensated, StepCompensated, StepCompensated)
	})
	t.Run("AbortGivesUp", func(t *testing.T) {
		t.Parallel()
		h := stuck(t)
		h.apply(input{kind: inAbort, reason: "refunded by hand"})
		h.expectStatus(SagaFailed, StepCompensating)
		h.expectSent()
		if h.s.AbortedAt.IsZero() || h.s.FinishedAt.IsZero() || !h.s.WakeAt.IsZero() {
			t.Fatalf("aborted saga %+v", h.s)
		}
		if e := h.evs[len(h.evs)-1]; e.Type != EventSagaFailed || e.Detail != "aborted by operator: refunded by hand" {
			t.Fatalf("abort event %+v", e)
		}
		if r := h.reply("a", wire.OpCompensate, 1, wire.OutcomeRetryable); r.ignored == "" {
			t.Fatal("a reply to an aborted saga was applied")
		}
		if _, err := transition(h.p, h.s, input{kind: inRetry, now: h.now}); !errors.Is(err, ErrNotFailed) {
			t.Fatalf("retry of an aborted saga: %v", err)
		}
	})
}

func TestTransitionReportsAttemptsForHooks(t *testing.T) {
	t.Parallel()
	h := newHarness(t, threeSteps())
	h.now = h.now.Add(300 * time.Millisecond)
	r := h.ok("a")
	if len(r.attempts) != 1 || r.attempts[0] != (StepInfo{Step: "a", Op: wire.OpForward, Attempt: 1, Outcome: AttemptSucceeded, Duration: 300 * time.Millisecond}) {
		t.Fatalf("attempts %+v", r.attempts)
	}
	r = h.tick(time.Second) // b times out
	if len(r.attempts) != 1 || r.attempts[0].Outcome != AttemptTimedOut || r.attempts[0].Duration != time.Second {
		t.Fatalf("attempts %+v", r.attempts)
	}
}

// A panicking Input function used to crash the process (and every restart, once the
// saga's reply was redelivered).
func TestInputPanicFailsTheStepAndKeepsTheProcess(t *testing.T) {
	t.Parallel()
	d := Define[testPayload]("p", Step("a", "t").Do("x").Undo("y"), Step("b", "t").Do("x").Undo("y"))
	d.Input("b", func(p testPayload, r Results) (any, error) {
		panic(fmt.Sprintf("boom %d", p.Amount))
	})
	h := newHarness(t, d)
	h.ok("a")
	h.expectStatus(SagaCompensating, StepCompensating, StepFailed)
	h.expectSent("a:compensate:1")
	b := h.s.Step("b")
	if !strings.Contains(b.LastError, ErrInputPanic.Error()) || !strings.Contains(b.LastError, "boom ") ||
		!strings.Contains(b.LastError, "goroutine") {
		t.Fatalf("step b's error lacks the panic and its stack: %q", b.LastError)
	}
	var logged bool
	for _, e := range h.evs {
		logged = logged || e.Type == EventStepFailed && e.Step == "b" && strings.Contains(e.Detail, "boom")
	}
	if !logged {
		t.Fatalf("no step_failed event with the panic: %v", h.eventTypes())
	}
	h.undone("a")
	h.expectStatus(SagaCompensated, StepCompensated, StepFailed)
}
