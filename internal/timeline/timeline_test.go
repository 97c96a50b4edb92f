package timeline_test

import (
	"bytes"
	"encoding/xml"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/sagabox/sagabox/internal/timeline"
	"github.com/sagabox/sagabox/sagastate"
	"github.com/sagabox/sagabox/wire"
)

var t0 = time.Date(2026, 11, 26, 1, 0, 0, 0, time.UTC)

func at(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }

// compensatedSaga is an order saga whose payment was declined after inventory timed
// out once and was retried.
func compensatedSaga() *sagastate.Instance {
	id := uuid.MustParse("0193a000-0000-7000-8000-000000000001")
	ev := func(ms int, typ sagastate.EventType, step string, op wire.Op, attempt int, detail string) sagastate.Event {
		return sagastate.Event{SagaID: id, Type: typ, At: at(ms), Step: step, Op: op, Attempt: attempt, Detail: detail}
	}
	f, c := wire.OpForward, wire.OpCompensate
	return &sagastate.Instance{
		ID: id, Type: "order", Status: sagastate.SagaCompensated, CreatedAt: at(0), FinishedAt: at(120),
		Steps: []sagastate.StepState{{Name: "create_order"}, {Name: "reserve_inventory"}, {Name: "charge_payment"}, {Name: "schedule_shipping"}},
		Events: []sagastate.Event{
			ev(0, sagastate.EventSagaStarted, "", "", 0, ""),
			ev(0, sagastate.EventStepStarted, "create_order", f, 1, ""),
			ev(10, sagastate.EventStepCompleted, "create_order", f, 1, ""),
			ev(10, sagastate.EventStepStarted, "reserve_inventory", f, 1, ""),
			ev(40, sagastate.EventStepFailed, "reserve_inventory", f, 1, "timeout after 30ms"),
			ev(45, sagastate.EventStepStarted, "reserve_inventory", f, 2, ""),
			ev(55, sagastate.EventStepCompleted, "reserve_inventory", f, 2, ""),
			ev(55, sagastate.EventStepStarted, "charge_payment", f, 1, ""),
			ev(70, sagastate.EventStepFailed, "charge_payment", f, 1, "payment declined: 1500 is above the limit of 1000"),
			ev(70, sagastate.EventSagaCompensating, "", "", 0, "charge_payment failed"),
			ev(70, sagastate.EventStepStarted, "reserve_inventory", c, 1, ""),
			ev(90, sagastate.EventStepCompensated, "reserve_inventory", c, 1, ""),
			ev(90, sagastate.EventStepStarted, "create_order", c, 1, ""),
			ev(120, sagastate.EventStepCompensated, "create_order", c, 1, ""),
			ev(120, sagastate.EventSagaCompensated, "", "", 0, ""),
		},
	}
}

func TestFromSaga(t *testing.T) {
	t.Parallel()
	tl := timeline.FromSaga(compensatedSaga())
	if len(tl.Lanes) != 4 || tl.Lanes[3].Step != "schedule_shipping" || len(tl.Lanes[3].Bars) != 0 {
		t.Fatalf("lanes %+v", tl.Lanes)
	}
	type want struct {
		op      wire.Op
		attempt int
		from    int
		to      int
		outcome timeline.Outcome
	}
	for lane, bars := range map[int][]want{
		0: {{wire.OpForward, 1, 0, 10, timeline.OK}, {wire.OpCompensate, 1, 90, 120, timeline.OK}},
		1: {{wire.OpForward, 1, 10, 40, timeline.Failed}, {wire.OpForward, 2, 45, 55, timeline.OK}, {wire.OpCompensate, 1, 70, 90, timeline.OK}},
		2: {{wire.OpForward, 1, 55, 70, timeline.Failed}},
	} {
		got := tl.Lanes[lane].Bars
		if len(got) != len(bars) {
			t.Fatalf("lane %d: %d bars, want %d: %+v", lane, len(got), len(bars), got)
		}
		for i, w := range bars {
			g := got[i]
			if g.Op != w.op || g.Attempt != w.attempt || !g.Start.Equal(at(w.from)) || !g.End.Equal(at(w.to)) || g.Outcome != w.outcome {
				t.Fatalf("lane %d bar %d: %+v, want %+v", lane, i, g, w)
			}
		}
	}
	if tl.Lanes[2].Bars[0].Detail != "payment declined: 1500 is above the limit of 1000" {
		t.Fatalf("failure detail lost: %q", tl.Lanes[2].Bars[0].Detail)
	}
	if len(tl.Marks) != 3 || tl.Marks[1].Label != "compensating" || !tl.Marks[1].Bad {
		t.Fatalf("marks %+v", tl.Marks)
	}
	if tl.Duration() != 120*time.Millisecond {
		t.Fatalf("duration %s", tl.Duration())
	}
}

func TestOpenBarsRunToTheEnd(t *testing.T) {
	t.Parallel()
	s := compensatedSaga()
	s.Status, s.FinishedAt = sagastate.SagaFailed, time.Time{}
	s.Events = s.Events[:11] // the release is in flight, nothing after it
	tl := timeline.FromSaga(s)
	b := tl.Lanes[1].Bars[2]
	if b.Op != wire.OpCompensate || b.Outcome != timeline.Open || !b.End.Equal(at(70)) {
		t.Fatalf("open bar %+v", b)
	}
}

func TestSVG(t *testing.T) {
	t.Parallel()
	tl := timeline.FromSaga(compensatedSaga())
	var buf bytes.Buffer
	if err := tl.SVG(&buf); err != nil {
		t.Fatal(err)
	}
	svg := buf.String()
	// Well-formed XML, root svg.
	dec := xml.NewDecoder(strings.NewReader(svg))
	var rects, crosses int
	var root string
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("SVG is not well-formed XML: %v\n%s", err, svg)
		}
		if se, ok := tok.(xml.StartElement); ok {
			if root == "" {
				root = se.Name.Local
			}
			switch se.Name.Local {
			case "rect":
				rects++
			case "path":
				crosses++
			}
		}
	}
	if root != "svg" {
		t.Fatalf("root element %q", root)
	}
	if crosses != 2 {
		t.Fatalf("%d failure crosses, want 2 (inventory timeout, payment declined)", crosses)
	}
	for _, want := range []string{"order saga 0193a000", "compensated", "payment declined: 1500", "timeout after 30ms", "reserve_inventory", ">compensating<", "120ms"} {
		if !strings.Contains(svg, want) {
			t.Fatalf("SVG lacks %q", want)
		}
	}
	if os.Getenv("TIMELINE_SVG_OUT") != "" {
		_ = os.WriteFile(os.Getenv("TIMELINE_SVG_OUT"), buf.Bytes(), 0o644)
	}

	var page bytes.Buffer
	if err := tl.HTML(&page, []timeline.EventRow{{At: at(70), Type: "step_failed", Step: "charge_payment", Op: "forward", Attempt: 1, Detail: "declined <b>"}}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(page.String(), "<svg") || !strings.Contains(page.String(), "declined &lt;b&gt;") || !strings.Contains(page.String(), `class="bad"`) {
		t.Fatalf("HTML page:\n%s", page.String())
	}
}

func TestText(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	if err := timeline.FromSaga(compensatedSaga()).Text(&buf, 60); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	lines := strings.Split(out, "\n")
	var pay string
	for _, l := range lines {
		if strings.HasPrefix(strings.TrimSpace(l), "charge_payment") {
			pay = l
		}
	}
	if !strings.Contains(pay, "X") || !strings.Contains(pay, "payment declined") {
		t.Fatalf("payment lane %q\n%s", pay, out)
	}
	if !strings.Contains(out, "~") || !strings.Contains(out, "saga compensating: charge_payment failed") {
		t.Fatalf("text:\n%s", out)
	}
	t.Log("\n" + out)
}
