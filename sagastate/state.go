package sagastate

import (
	"encoding/json"
	"errors"
	"time"

	"github.com/google/uuid"

	"github.com/sagabox/sagabox/wire"
)

// Errors. Each is wrapped with detail; test with errors.Is.
var (
	// ErrInvalidDefinition means a saga declaration is wrong (see Saga.Err).
	ErrInvalidDefinition = errors.New("invalid saga definition")
	// ErrInvalidConfig means a Config field is wrong.
	ErrInvalidConfig = errors.New("invalid orchestrator config")
	// ErrUnknownSagaType means Start was given a saga type no registered definition has.
	ErrUnknownSagaType = errors.New("unknown saga type")
	// ErrInvalidPayload means a saga payload is not JSON of the definition's payload type or
	// failed its Validate method.
	ErrInvalidPayload = errors.New("invalid saga payload")
	// ErrDuplicate means a saga with this id already exists.
	ErrDuplicate = errors.New("saga already exists")
	// ErrNotFound means no saga has this id (a reply for an unknown saga, or a query).
	ErrNotFound = errors.New("saga not found")
	// ErrUnknownStep means a reply names a step its saga does not have.
	ErrUnknownStep = errors.New("unknown saga step")
	// ErrConcurrentUpdate means the saga changed between reading and writing it (the
	// optimistic version check failed). Retrying the whole transaction is safe.
	ErrConcurrentUpdate = errors.New("saga changed concurrently")
	// ErrNotFailed means Retry or Abort does not apply to the saga's status: either is
	// refused for a finished saga, and Retry for a running one.
	ErrNotFailed = errors.New("saga is not failed")
	// ErrAlreadyRunning means Run was called on an Orchestrator that is already running
	// (the one name every package with a Run uses).
	ErrAlreadyRunning = errors.New("orchestrator already running")
	// ErrRunning is the former name of ErrAlreadyRunning.
	//
	// Deprecated: use ErrAlreadyRunning; this is the same error.
	ErrRunning = ErrAlreadyRunning
	// ErrInputPanic means a step's Input function panicked; the step failed for good.
	ErrInputPanic = errors.New("input function panicked")
	// ErrNoResult means Results.Decode was asked for a step without a result.
	ErrNoResult = errors.New("no step result")
)

// SagaStatus is where a saga instance stands.
type SagaStatus string

// Saga statuses. completed and compensated are final; failed waits for an operator (Retry
// resumes compensation, Abort gives up and marks it finished).
const (
	SagaRunning      SagaStatus = "running"      // forward steps in progress
	SagaCompleted    SagaStatus = "completed"    // every step completed
	SagaFailed       SagaStatus = "failed"       // a compensation exhausted its retries
	SagaCompensating SagaStatus = "compensating" // a step failed; undoing completed steps
	SagaCompensated  SagaStatus = "compensated"  // every step that may have run was undone
	// SagaTimeout is SagaCompensating when the cause was a step that timed out (its effect
	// is unknown, so it is compensated too). It ends compensated (or failed).
	SagaTimeout SagaStatus = "timeout"
)

// Final reports whether no further transition happens without an operator.
func (s SagaStatus) Final() bool {
	return s == SagaCompleted || s == SagaCompensated || s == SagaFailed
}

// StepStatus is where one step of a saga stands.
type StepStatus string

// Step statuses.
const (
	StepPending      StepStatus = "pending"      // not started
	StepExecuting    StepStatus = "executing"    // forward command sent (or a retry scheduled)
	StepCompleted    StepStatus = "completed"    // the participant replied success
	StepFailed       StepStatus = "failed"       // business failure, or retries exhausted
	StepCompensating StepStatus = "compensating" // compensation sent (or a retry scheduled)
	StepCompensated  StepStatus = "compensated"  // the participant confirmed the undo
	StepTimeout      StepStatus = "timeout"      // no reply within the timeout, retries exhausted
)

// EventType names an entry of the execution log.
type EventType string

// Event types, persisted in saga_events and handed to listeners.
const (
	EventStepStarted      EventType = "step_started"     // a command was sent (Op says which)
	EventStepCompleted    EventType = "step_completed"   // forward success
	EventStepFailed       EventType = "step_failed"      // failure, retryable reply or timeout (Detail says)
	EventStepCompensated  EventType = "step_compensated" // compensation success
	EventSagaStarted      EventType = "saga_started"
	EventSagaCompleted    EventType = "saga_completed"
	EventSagaFailed       EventType = "saga_failed" // compensation gave up, or an operator aborted
	EventSagaCompensating EventType = "saga_compensating"
	EventSagaCompensated  EventType = "saga_compensated"
)

// Event is one entry of a saga's execution log.
type Event struct {
	ID      int64 // assigned when persisted; 0 in a listener called for an event not read back
	SagaID  uuid.UUID
	Type    EventType
	At      time.Time
	Step    string  // empty for saga events
	Op      wire.Op // empty for saga events
	Attempt int
	Detail  string
}

// Instance is a saga instance with its steps (and, from Get, its execution log).
type Instance struct {
	ID        uuid.UUID
	Type      string
	Status    SagaStatus
	Payload   json.RawMessage
	Version   int64
	LastError string
	// WakeAt is when the sweeper looks at the saga next: at or before its earliest step
	// deadline or scheduled retry (a later deadline leaves it where it was, so that most
	// transitions rewrite no indexed column; the sweeper then moves it on); zero when no
	// step waits for a deadline or retry, or the saga has finished.
	WakeAt     time.Time
	CreatedAt  time.Time
	UpdatedAt  time.Time
	FinishedAt time.Time // zero until completed, compensated or aborted
	AbortedAt  time.Time // set by Abort
	Steps      []StepState
	Events     []Event // filled by Get only
}

// Step returns the step named name, or nil.
func (s *Instance) Step(name string) *StepState {
	for i := range s.Steps {
		if s.Steps[i].Name == name {
			return &s.Steps[i]
		}
	}
	return nil
}

// StepState is the persisted state of one step.
type StepState struct {
	Name     string
	Position int // declaration order, from 0
	Stage    int // stage index, from 0; steps of a Parallel stage share it
	// The plan, copied from the definition at Start.
	Topic, Do, Undo  string
	Timeout          time.Duration
	Retry, UndoRetry RetryPolicy

	Status StepStatus
	Op     wire.Op // the op of the latest command
	// Attempt numbers the commands of the current op from 1; replies carry it back.
	Attempt int
	// AttemptBase: attempts up to it do not count against the retry limit (Retry resets it).
	AttemptBase   int
	Deadline      time.Time // when the in-flight attempt times out; zero if none in flight
	NextAttemptAt time.Time // when a scheduled retry is sent; zero if none
	// MustUndo: the step may have taken effect, so compensation must reach it.
	MustUndo bool
	// DoneSeq orders completions (and timeouts): compensation runs in reverse of it.
	DoneSeq    int
	Input      []byte // the command payload, computed once at the first attempt
	Result     []byte // the success reply's payload
	LastError  string
	StartedAt  time.Time
	FinishedAt time.Time
}
