package sagastate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"runtime/debug"
	"time"

	"github.com/google/uuid"
)

// Defaults for a step's plan when its declaration leaves them out.
const (
	DefaultStepTimeout = 30 * time.Second
)

// DefaultRetry is the forward retry policy of a step declared without Retry.
var DefaultRetry = RetryPolicy{MaxAttempts: 3, Backoff: 200 * time.Millisecond, MaxBackoff: 30 * time.Second, Multiplier: 2, Jitter: 0.2}

// DefaultUndoRetry is the compensation retry policy of a step declared without UndoRetry.
// It is more patient than DefaultRetry: a compensation that gives up leaves the saga failed
// and needs an operator.
var DefaultUndoRetry = RetryPolicy{MaxAttempts: 8, Backoff: 500 * time.Millisecond, MaxBackoff: time.Minute, Multiplier: 2, Jitter: 0.2}

// RetryPolicy says how often and how soon a step (or its compensation) is tried again
// after a retryable reply or a timeout. Zero fields take the value of the default policy.
type RetryPolicy struct {
	// MaxAttempts counts every attempt, the first included. Defaults to 3 (8 for compensations).
	MaxAttempts int `json:"max_attempts"`
	// Backoff is the delay before the second attempt. Defaults to 200ms (500ms for compensations).
	Backoff time.Duration `json:"backoff"`
	// MaxBackoff caps the delay. Defaults to 30s (1m for compensations).
	MaxBackoff time.Duration `json:"max_backoff"`
	// Multiplier grows the delay after each attempt. Defaults to 2.
	Multiplier float64 `json:"multiplier"`
	// Jitter spreads each delay by ±Jitter of itself (0.2 = ±20%) so that sagas failing
	// together do not retry together. Negative means none. Defaults to 0.2.
	Jitter float64 `json:"jitter"`
}

func (p RetryPolicy) withDefaults(d RetryPolicy) RetryPolicy {
	if p.MaxAttempts == 0 {
		p.MaxAttempts = d.MaxAttempts
	}
	if p.Backoff == 0 {
		p.Backoff = d.Backoff
	}
	if p.MaxBackoff == 0 {
		p.MaxBackoff = d.MaxBackoff
	}
	if p.Multiplier == 0 {
		p.Multiplier = d.Multiplier
	}
	if p.Jitter == 0 {
		p.Jitter = d.Jitter
	}
	if p.Jitter < 0 {
		p.Jitter = 0
	}
	if p.MaxBackoff < p.Backoff {
		p.MaxBackoff = p.Backoff
	}
	return p
}

func (p RetryPolicy) validate(what string) error {
	var errs []error
	if p.MaxAttempts < 0 {
		errs = append(errs, fmt.Errorf("%s: MaxAttempts is %d; it must be at least 1 (or 0 for the default)", what, p.MaxAttempts))
	}
	if p.Backoff < 0 || p.MaxBackoff < 0 {
		errs = append(errs, fmt.Errorf("%s: Backoff and MaxBackoff must not be negative", what))
	}
	if p.Multiplier != 0 && p.Multiplier < 1 {
		errs = append(errs, fmt.Errorf("%s: Multiplier is %g; it must be at least 1 (or 0 for the default)", what, p.Multiplier))
	}
	if p.Backoff > 0 && p.MaxBackoff > 0 && p.MaxBackoff < p.Backoff {
		errs = append(errs, fmt.Errorf("%s: MaxBackoff %v is below Backoff %v", what, p.MaxBackoff, p.Backoff))
	}
	if p.Jitter > 1 {
		errs = append(errs, fmt.Errorf("%s: Jitter is %g; it must be at most 1", what, p.Jitter))
	}
	return errors.Join(errs...)
}

// StepSpec declares one step: the participant's command topic, the command that does the
// step and the one that undoes it, a timeout per attempt and retry policies. Build it with
// Step and its chained methods.
type StepSpec struct {
	name, topic string
	do, undo    string
	timeout     time.Duration
	retry       RetryPolicy
	undoRetry   RetryPolicy
}

// Step starts the declaration of a step named name whose commands go to topic.
func Step(name, topic string) *StepSpec {
	return &StepSpec{name: name, topic: topic}
}

// Do names the command that performs the step (e.g. "payment.charge"). Required.
func (s *StepSpec) Do(command string) *StepSpec { s.do = command; return s }

// Undo names the compensation command (e.g. "payment.refund"). A step without one is not
// compensated (use it for steps whose effect needs no undoing, like a notification).
func (s *StepSpec) Undo(command string) *StepSpec { s.undo = command; return s }

// Timeout bounds each attempt: no reply within d counts as a failed attempt whose effect
// is unknown. Defaults to 30s.
func (s *StepSpec) Timeout(d time.Duration) *StepSpec { s.timeout = d; return s }

// Retry sets the forward retry policy. Defaults to DefaultRetry.
func (s *StepSpec) Retry(p RetryPolicy) *StepSpec { s.retry = p; return s }

// UndoRetry sets the compensation retry policy. Defaults to DefaultUndoRetry.
func (s *StepSpec) UndoRetry(p RetryPolicy) *StepSpec { s.undoRetry = p; return s }

func (s *StepSpec) stageSteps() []*StepSpec { return []*StepSpec{s} }

// Stage is a step or a group of steps run in parallel; see Parallel.
type Stage interface{ stageSteps() []*StepSpec }

type parallel []*StepSpec

func (p parallel) stageSteps() []*StepSpec { return p }

// Parallel groups steps that start together; the next stage starts when all of them
// completed. If one fails, the saga waits for its in-flight siblings before compensating.
func Parallel(steps ...*StepSpec) Stage { return parallel(steps) }

// Results holds the results (reply payloads) of a saga's completed steps, by step name.
type Results map[string]json.RawMessage

// Decode unmarshals the result of step into v.
func (r Results) Decode(step string, v any) error {
	raw, ok := r[step]
	if !ok {
		return fmt.Errorf("%w: step %q has no result (has it completed before this step?)", ErrNoResult, step)
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return fmt.Errorf("sagastate: result of step %q: %w", step, err)
	}
	return nil
}

// Definition is a saga type known to an orchestrator. *Saga[P] implements it.
type Definition interface {
	// Name is the saga type, as passed to Start.
	Name() string
	// Err reports what is wrong with the declaration, or nil.
	Err() error
	plan() *plan
}

// inputFunc computes a step's command payload from the saga payload and earlier results.
type inputFunc func(payload []byte, results Results) ([]byte, error)

// plan is the untyped form of a definition the transition function works with.
type plan struct {
	name   string
	steps  []stepPlan
	stages int
	inputs map[string]inputFunc
	decode func(payload []byte) error // validates a payload
	errs   []error
	byName map[string]int
}

type stepPlan struct {
	Name, Topic, Do, Undo string
	Stage                 int
	Timeout               time.Duration
	Retry, UndoRetry      RetryPolicy
}

// Saga is a typed saga definition: P is the payload every instance carries, given to
// Start and, as JSON, to each step's command unless Input says otherwise.
type Saga[P any] struct{ p *plan }

var stepName = regexp.MustCompile(`^[A-Za-z0-9._-]{1,100}$`)

// Define declares a saga type named name whose stages run in order. Mistakes in the
// declaration (duplicate step names, a step without Do, ...) are reported by Err and by New.
func Define[P any](name string, stages ...Stage) *Saga[P] {
	p := &plan{name: name, inputs: map[string]inputFunc{}, byName: map[string]int{}}
	if !stepName.MatchString(name) {
		p.errs = append(p.errs, fmt.Errorf("saga type name %q: use 1-100 ASCII letters, digits, '.', '_' or '-'", name))
	}
	if len(stages) == 0 {
		p.errs = append(p.errs, errors.New("no steps: declare at least one Step"))
	}
	for i, st := range stages {
		if st == nil {
			p.errs = append(p.errs, fmt.Errorf("stage %d is nil", i+1))
			continue
		}
		steps := st.stageSteps()
		if len(steps) == 0 {
			p.errs = append(p.errs, fmt.Errorf("stage %d: Parallel needs at least one step", i+1))
		}
		for _, s := range steps {
			if s == nil {
				p.errs = append(p.errs, fmt.Errorf("stage %d: a step is nil", i+1))
				continue
			}
			p.add(s, i)
		}
	}
	p.stages = len(stages)
	p.decode = func(payload []byte) error {
		var v P
		if err := json.Unmarshal(payload, &v); err != nil {
			return err
		}
		if val, ok := any(&v).(interface{ Validate() error }); ok {
			return val.Validate()
		}
		if val, ok := any(v).(interface{ Validate() error }); ok {
			return val.Validate()
		}
		return nil
	}
	return &Saga[P]{p: p}
}

func (p *plan) add(s *StepSpec, stage int) {
	what := fmt.Sprintf("step %q", s.name)
	if !stepName.MatchString(s.name) {
		p.errs = append(p.errs, fmt.Errorf("%s: a step name is 1-100 ASCII letters, digits, '.', '_' or '-'", what))
	}
	if _, dup := p.byName[s.name]; dup {
		p.errs = append(p.errs, fmt.Errorf("%s is declared twice; step names must be unique within a saga", what))
	}
	if s.topic == "" {
		p.errs = append(p.errs, fmt.Errorf("%s: the command topic is empty", what))
	}
	if s.do == "" {
		p.errs = append(p.errs, fmt.Errorf("%s: no Do command; name the command the participant runs", what))
	}
	if s.timeout < 0 {
		p.errs = append(p.errs, fmt.Errorf("%s: Timeout is %v; it must be positive", what, s.timeout))
	}
	if err := s.retry.validate(what + " Retry"); err != nil {
		p.errs = append(p.errs, err)
	}
	if err := s.undoRetry.validate(what + " UndoRetry"); err != nil {
		p.errs = append(p.errs, err)
	}
	timeout := s.timeout
	if timeout == 0 {
		timeout = DefaultStepTimeout
	}
	p.byName[s.name] = len(p.steps)
	p.steps = append(p.steps, stepPlan{
		Name: s.name, Topic: s.topic, Do: s.do, Undo: s.undo, Stage: stage, Timeout: timeout,
		Retry: s.retry.withDefaults(DefaultRetry), UndoRetry: s.undoRetry.withDefaults(DefaultUndoRetry),
	})
}

// Input makes step's command payload fn(payload, results of earlier steps), marshalled to
// JSON ([]byte and json.RawMessage are sent as they are). An error fails the step without
// retrying, and the saga compensates; so does a panic, recovered as an ErrInputPanic with
// its stack recorded in the step's error and the saga's log.
func (s *Saga[P]) Input(step string, fn func(p P, r Results) (any, error)) *Saga[P] {
	if _, ok := s.p.byName[step]; !ok {
		s.p.errs = append(s.p.errs, fmt.Errorf("Input for step %q: no such step", step))
		return s
	}
	s.p.inputs[step] = func(payload []byte, r Results) (_ []byte, err error) {
		defer func() {
			// A panic is this saga's fault, not the process's: the step fails (the saga
			// compensates) with the panic and its stack in the log.
			if p := recover(); p != nil {
				err = fmt.Errorf("%w: %v\n%s", ErrInputPanic, p, debug.Stack())
			}
		}()
		var v P
		if err := json.Unmarshal(payload, &v); err != nil {
			return nil, fmt.Errorf("decode saga payload: %w", err)
		}
		out, err := fn(v, r)
		if err != nil {
			return nil, err
		}
		switch b := out.(type) {
		case []byte:
			return b, nil
		case json.RawMessage:
			return b, nil
		}
		return json.Marshal(out)
	}
	return s
}

// Start begins a saga of this type with id and payload inside tx, the caller's
// transaction, on o, which must have a definition of this type in Config.Sagas: the
// typed form of Orchestrator.Start, so a payload of the wrong type does not compile.
//
//	err := orderSaga.Start(ctx, tx, orch, order.ID, order)
func (s *Saga[P]) Start(ctx context.Context, tx DB, o *Orchestrator, id uuid.UUID, payload P) error {
	return o.Start(ctx, tx, s.p.name, id, payload)
}

// Name returns the saga type.
func (s *Saga[P]) Name() string { return s.p.name }

// Err reports every mistake in the declaration, joined, or nil.
func (s *Saga[P]) Err() error {
	if len(s.p.errs) == 0 {
		return nil
	}
	return fmt.Errorf("%w: saga %q: %w", ErrInvalidDefinition, s.p.name, errors.Join(s.p.errs...))
}

func (s *Saga[P]) plan() *plan { return s.p }
