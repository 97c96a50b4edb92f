package sagabench_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/sagabox/sagabox/inbox/consumer"
	"github.com/sagabox/sagabox/internal/sagabench"
	"github.com/sagabox/sagabox/outbox"
	"github.com/sagabox/sagabox/relay"
	"github.com/sagabox/sagabox/wire"
)

// hopKey names one message of a flow: step s's command or reply.
type hopKey struct {
	flow  uuid.UUID
	step  string
	reply bool
}

// hopTimes are the moments one message passed.
type hopTimes struct{ committed, pubStart, pubEnd, handlerStart, handled time.Time }

// hopTracer collects hopTimes from the relay's and the consumers' hooks.
type hopTracer struct {
	mu sync.Mutex
	m  map[hopKey]*hopTimes
}

func (h *hopTracer) at(k hopKey) *hopTimes {
	t := h.m[k]
	if t == nil {
		t = &hopTimes{}
		h.m[k] = t
	}
	return t
}

func (h *hopTracer) set(k hopKey, f func(t *hopTimes)) {
	h.mu.Lock()
	defer h.mu.Unlock()
	f(h.at(k))
}

func keyOf(headers map[string]string, value []byte) (hopKey, bool) {
	if c, err := wire.ParseCommand(headers, value); err == nil {
		return hopKey{c.SagaID, c.Step, false}, true
	}
	if r, err := wire.ParseReply(headers, value); err == nil {
		return hopKey{r.SagaID, r.Step, true}, true
	}
	return hopKey{}, false
}

// next is the message a handled message's transaction enqueued.
func next(k hopKey) (hopKey, bool) {
	if !k.reply {
		return hopKey{k.flow, k.step, true}, true
	}
	i := slices.Index(steps, k.step) + 1
	if i == len(steps) {
		return hopKey{}, false
	}
	return hopKey{k.flow, steps[i], false}, true
}

// starts wraps start to record when each flow's first command committed; a nil
// tracer returns start as it is.
func (h *hopTracer) starts(start sagabench.StartFunc) sagabench.StartFunc {
	if h == nil {
		return start
	}
	return func(ctx context.Context, id uuid.UUID, i int) error {
		err := start(ctx, id, i)
		now := time.Now()
		h.set(hopKey{id, steps[0], false}, func(t *hopTimes) { t.committed = now })
		return err
	}
}

// consumer adds the tracer's hooks to cc; a nil tracer adds none.
func (h *hopTracer) consumer(cc consumer.Config) consumer.Config {
	if h == nil {
		return cc
	}
	handled := cc.Hooks.Handled
	cc.Hooks.Trace = func(ctx context.Context, m consumer.Message) (context.Context, func(error)) {
		if k, ok := keyOf(m.Headers, m.Value); ok {
			now := time.Now()
			h.set(k, func(t *hopTimes) { t.handlerStart = now })
		}
		return ctx, nil
	}
	cc.Hooks.Handled = func(m consumer.Message, dup bool) {
		now := time.Now()
		if k, ok := keyOf(m.Headers, m.Value); ok && !dup {
			h.set(k, func(t *hopTimes) { t.handled = now })
			if n, ok := next(k); ok {
				h.set(n, func(t *hopTimes) { t.committed = now })
			}
		}
		if handled != nil {
			handled(m, dup)
		}
	}
	return cc
}

// relay is a relay configuration whose Publish hook feeds the tracer; a nil tracer's
// is the default one.
// Its PollInterval is the relay's default, not sagatest's 100ms for tests.
func (h *hopTracer) relay() relay.Config {
	if h == nil {
		return relay.Config{PollInterval: relay.PollIntervalDefault}
	}
	return relay.Config{PollInterval: relay.PollIntervalDefault, Hooks: relay.Hooks{Publish: func(msgs []outbox.Message) func(error) {
		start := time.Now()
		return func(error) {
			end := time.Now()
			for _, m := range msgs {
				if k, ok := keyOf(m.Headers, m.Payload); ok {
					h.set(k, func(t *hopTimes) { t.pubStart, t.pubEnd = start, end })
				}
			}
		}
	}}}
}

// BenchmarkHopLatency shows where one hop of a flow spends its time, with timestamps
// taken by the relay's and the consumers' hooks, at 1, 8 and 64 flows in flight: the
// raw flow (four command/reply round trips, the baseline of BenchmarkSagaLoad) and
// the no-op 4-step saga, whose replies go through the orchestrator. Replies are the
// orchestrator's hops (its "handler → committed" is the transition), commands the
// participant's.
func BenchmarkHopLatency(b *testing.B) {
	b.Run("raw", func(b *testing.B) { rawHops(b) })
	b.Run("saga", func(b *testing.B) { sagaHops(b) })
}

func rawHops(b *testing.B) {
	h := &hopTracer{m: map[hopKey]*hopTimes{}}
	h.report(b, "raw flow", rawFlow(b, h).driver)
}

func sagaHops(b *testing.B) {
	h := &hopTracer{m: map[hopKey]*hopTimes{}}
	h.report(b, "no-op saga", noopFlow(b, h).driver)
}

// report runs 200 flows at each load and prints each segment's percentiles, for
// commands and replies apart.
func (h *hopTracer) report(b *testing.B, name string, d *sagabench.Driver) {
	d.Closed(b, "warm-up", 1, 1)
	for _, inFlight := range []int{1, 8, 64} {
		h.mu.Lock()
		h.m = map[hopKey]*hopTimes{}
		h.mu.Unlock()
		r, _ := d.Closed(b, name, 200, inFlight)
		h.mu.Lock()
		var segs [2][5][]time.Duration
		for k, t := range h.m {
			if t.committed.IsZero() || t.pubStart.IsZero() || t.handlerStart.IsZero() || t.handled.IsZero() {
				continue
			}
			s := &segs[0]
			if k.reply {
				s = &segs[1]
			}
			s[0] = append(s[0], t.pubStart.Sub(t.committed))
			s[1] = append(s[1], t.pubEnd.Sub(t.pubStart))
			s[2] = append(s[2], t.handlerStart.Sub(t.pubEnd))
			s[3] = append(s[3], t.handled.Sub(t.handlerStart))
			s[4] = append(s[4], t.handled.Sub(t.committed))
		}
		h.mu.Unlock()
		fmt.Fprintf(os.Stderr, "\nhop latency, %s, %d in flight (%.0f flows/s, ttc p50 %v)\n", name, inFlight, r.PerSec, r.P50.Round(100*time.Microsecond))
		for kind, label := range []string{"commands", "replies"} {
			fmt.Fprintf(os.Stderr, "  %s (%d hops)\n", label, len(segs[kind][0]))
			for i, seg := range []string{"commit → publish start (relay finds, claims)", "publish (produce, acks)", "published → handler (fetch, queue, begin, inbox)", "handler → committed (handler, batch, commit)", "whole hop"} {
				s := segs[kind][i]
				slices.Sort(s)
				if len(s) == 0 {
					continue
				}
				fmt.Fprintf(os.Stderr, "    %-50s p50 %8v  p90 %8v  p99 %8v\n", seg, s[len(s)/2].Round(10*time.Microsecond), s[len(s)*9/10].Round(10*time.Microsecond), s[len(s)*99/100].Round(10*time.Microsecond))
			}
		}
	}
}
