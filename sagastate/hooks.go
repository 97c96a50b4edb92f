package sagastate

import (
	"time"

	"github.com/google/uuid"

	"github.com/sagabox/sagabox/wire"
)

// Hooks observe an orchestrator, e.g. for metrics; each is optional, runs on the goroutine
// that made the change and must return quickly. A hook reports a change after the
// transaction that made it committed, once: replies consumed by Run, the sweeper, Retry
// and Abort. Start and HandleReply write into the caller's transaction, so their hooks run
// when the change is written, before the caller commits (a rollback does not take a hook
// call back).
//
// The four indicators of a saga system read from them: response time (StepEnded's
// Duration), throughput (SagaFinished counts), compensation success rate (SagaFinished
// with SagaCompensated against SagaFailed) and time to consistency (SagaFinished's
// Duration for completed and compensated sagas).
type Hooks struct {
	// SagaStarted is called for every saga started.
	SagaStarted func(SagaInfo)
	// SagaCompensating is called when a saga begins to compensate: a step failed, timed
	// out or ran out of retries, or an operator aborted it (Reason says which).
	SagaCompensating func(SagaInfo)
	// SagaFinished is called when a saga reaches completed, compensated or failed (a
	// compensation gave up, or an operator aborted it). It is not called again when an
	// operator aborts a saga that had already failed.
	SagaFinished func(SagaInfo)
	// StepEnded is called when an attempt of a step's command (forward or compensation)
	// ended: with the participant's reply, a timeout, or an Input function's error.
	StepEnded func(StepInfo)
}

// SagaInfo describes a saga for a hook.
type SagaInfo struct {
	ID     uuid.UUID
	Type   string
	Status SagaStatus // the status it changed to
	// Duration is how long the saga has existed: for SagaFinished, created → finished,
	// its time to consistency when it completed or compensated.
	Duration time.Duration
	Aborted  bool   // an operator aborted it
	Reason   string // why it compensates or failed; empty otherwise
}

// AttemptOutcome is how one attempt of a step's command ended.
type AttemptOutcome string

// Attempt outcomes.
const (
	AttemptSucceeded AttemptOutcome = "success"   // the participant replied success (or, for a compensation, that nothing needed undoing)
	AttemptFailed    AttemptOutcome = "failure"   // a business failure, or the Input function failed
	AttemptRetryable AttemptOutcome = "retryable" // the participant replied retryable
	AttemptTimedOut  AttemptOutcome = "timeout"   // no reply within the step's timeout
)

// StepInfo describes the end of a step attempt for Hooks.StepEnded.
type StepInfo struct {
	SagaID   uuid.UUID
	SagaType string
	Step     string
	Op       wire.Op // forward or compensate
	Attempt  int
	Outcome  AttemptOutcome
	// Duration is command sent → reply (or timeout); 0 when unknown (a reply to an
	// attempt other than the last one sent, or an Input function's error).
	Duration time.Duration
}

// notifier returns a function that calls the hooks for the change from prev to res, or
// nil when there is nothing to call.
func (h *Hooks) notifier(prev *Instance, res *result) func() {
	if h.SagaStarted == nil && h.SagaCompensating == nil && h.SagaFinished == nil && h.StepEnded == nil {
		return nil
	}
	s := &res.state
	info := func() SagaInfo {
		return SagaInfo{ID: s.ID, Type: s.Type, Status: s.Status, Duration: s.UpdatedAt.Sub(s.CreatedAt), Aborted: !s.AbortedAt.IsZero()}
	}
	var calls []func()
	for _, a := range res.attempts {
		if h.StepEnded != nil {
			a.SagaID, a.SagaType = s.ID, s.Type
			calls = append(calls, func() { h.StepEnded(a) })
		}
	}
	if prev.Version == 0 && h.SagaStarted != nil {
		i := info()
		calls = append(calls, func() { h.SagaStarted(i) })
	}
	for _, e := range res.events {
		if e.Type == EventSagaCompensating && h.SagaCompensating != nil && prev.Status == SagaRunning {
			i := info()
			i.Reason = e.Detail
			calls = append(calls, func() { h.SagaCompensating(i) })
		}
	}
	if s.Status.Final() && !prev.Status.Final() && h.SagaFinished != nil {
		i := info()
		if s.Status == SagaFailed || s.Status == SagaCompensated {
			i.Reason = s.LastError
		}
		calls = append(calls, func() { h.SagaFinished(i) })
	}
	if len(calls) == 0 {
		return nil
	}
	return func() {
		for _, c := range calls {
			c()
		}
	}
}
