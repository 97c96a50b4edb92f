package timeline

import (
	"fmt"
	"time"

	"github.com/sagabox/sagabox/sagastate"
	"github.com/sagabox/sagabox/wire"
)

// Outcome is how a bar ended.
type Outcome string

// Bar outcomes.
const (
	OK       Outcome = "ok"       // the step (or its compensation) succeeded
	Failed   Outcome = "failed"   // business failure, retryable error or timeout (Detail says)
	Ignored  Outcome = "ignored"  // the participant ignored it (a hanging forward)
	Open     Outcome = "open"     // no outcome in the log (still running, or aborted)
	Replaced Outcome = "replaced" // a new attempt started before an outcome was logged
)

// Bar is one attempt of a step's forward or compensation command.
type Bar struct {
	Op      wire.Op
	Attempt int
	Start   time.Time
	End     time.Time
	Outcome Outcome
	Detail  string
}

// Lane is one step with its bars in log order.
type Lane struct {
	Step string
	Bars []Bar
}

// Mark is a saga-level event drawn as a vertical line.
type Mark struct {
	At     time.Time
	Label  string // e.g. "compensating"
	Detail string
	Bad    bool // compensating, failed: drawn in red
}

// Timeline is what the renderers draw.
type Timeline struct {
	Title  string
	Status string
	Start  time.Time
	End    time.Time
	Lanes  []Lane
	Marks  []Mark
}

// FromSaga builds the timeline of s from s.Events (as returned by sagastate's Get),
// with one lane per step in declaration order.
func FromSaga(s *sagastate.Instance) Timeline {
	tl := Timeline{
		Title:  fmt.Sprintf("%s saga %s", s.Type, s.ID),
		Status: string(s.Status),
		Start:  s.CreatedAt,
		End:    s.FinishedAt,
	}
	index := map[string]int{}
	for _, st := range s.Steps {
		index[st.Name] = len(tl.Lanes)
		tl.Lanes = append(tl.Lanes, Lane{Step: st.Name})
	}
	lane := func(step string) *Lane {
		i, ok := index[step]
		if !ok {
			index[step] = len(tl.Lanes)
			tl.Lanes = append(tl.Lanes, Lane{Step: step})
			i = len(tl.Lanes) - 1
		}
		return &tl.Lanes[i]
	}
	// open finds the bar of (step, op) still waiting for an outcome.
	open := func(l *Lane, op wire.Op) *Bar {
		for i := len(l.Bars) - 1; i >= 0; i-- {
			if l.Bars[i].Op == op && l.Bars[i].Outcome == Open {
				return &l.Bars[i]
			}
		}
		return nil
	}
	var last time.Time
	for _, e := range s.Events {
		if tl.Start.IsZero() || e.At.Before(tl.Start) {
			tl.Start = e.At
		}
		if e.At.After(last) {
			last = e.At
		}
		switch e.Type {
		case sagastate.EventStepStarted:
			l := lane(e.Step)
			if b := open(l, e.Op); b != nil {
				b.End, b.Outcome = e.At, Replaced
			}
			l.Bars = append(l.Bars, Bar{Op: e.Op, Attempt: e.Attempt, Start: e.At, Outcome: Open})
		case sagastate.EventStepCompleted, sagastate.EventStepCompensated, sagastate.EventStepFailed:
			l := lane(e.Step)
			op := e.Op
			if op == "" {
				op = wire.OpForward
				if e.Type == sagastate.EventStepCompensated {
					op = wire.OpCompensate
				}
			}
			b := open(l, op)
			if b == nil { // an outcome without a logged start: draw it as an instant
				l.Bars = append(l.Bars, Bar{Op: op, Attempt: e.Attempt, Start: e.At})
				b = &l.Bars[len(l.Bars)-1]
			}
			b.End, b.Detail = e.At, e.Detail
			b.Outcome = OK
			if e.Type == sagastate.EventStepFailed {
				b.Outcome = Failed
			}
		case sagastate.EventSagaStarted:
			tl.Marks = append(tl.Marks, Mark{At: e.At, Label: "started", Detail: e.Detail})
		case sagastate.EventSagaCompleted:
			tl.Marks = append(tl.Marks, Mark{At: e.At, Label: "completed", Detail: e.Detail})
		case sagastate.EventSagaCompensating:
			tl.Marks = append(tl.Marks, Mark{At: e.At, Label: "compensating", Detail: e.Detail, Bad: true})
		case sagastate.EventSagaCompensated:
			tl.Marks = append(tl.Marks, Mark{At: e.At, Label: "compensated", Detail: e.Detail})
		case sagastate.EventSagaFailed:
			tl.Marks = append(tl.Marks, Mark{At: e.At, Label: "failed", Detail: e.Detail, Bad: true})
		}
	}
	if tl.End.IsZero() || last.After(tl.End) {
		tl.End = last
	}
	for i := range tl.Lanes {
		for j := range tl.Lanes[i].Bars {
			if b := &tl.Lanes[i].Bars[j]; b.Outcome == Open {
				b.End = tl.End
			}
		}
	}
	return tl
}

// Duration is the span the axis covers.
func (tl Timeline) Duration() time.Duration {
	if d := tl.End.Sub(tl.Start); d > 0 {
		return d
	}
	return time.Millisecond
}

// tick picks an axis step giving about n ticks: 1, 2 or 5 times a power of ten.
func tick(d time.Duration, n int) time.Duration {
	raw := d / time.Duration(n)
	step := time.Microsecond
	for step*10 <= raw {
		step *= 10
	}
	for _, m := range []time.Duration{1, 2, 5, 10} {
		if step*m >= raw {
			return step * m
		}
	}
	return step * 10
}

// fmtOffset prints an offset from the start with a unit that suits step.
func fmtOffset(d, step time.Duration) string {
	switch {
	case step >= time.Second:
		return fmt.Sprintf("%gs", d.Seconds())
	case step >= time.Millisecond:
		return fmt.Sprintf("%gms", float64(d.Microseconds())/1000)
	default:
		return fmt.Sprintf("%dµs", d.Microseconds())
	}
}
