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
	"github.com/jackc/pgx/v5"

	"github.com/sagabox/sagabox/inbox/consumer"
	"github.com/sagabox/sagabox/internal/sagabench"
	"github.com/sagabox/sagabox/internal/testenv"
	"github.com/sagabox/sagabox/outbox"
	"github.com/sagabox/sagabox/relay"
	"github.com/sagabox/sagabox/sagastate"
	"github.com/sagabox/sagabox/sagastate/sagatest"
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

// started records that flow id's first command committed.
func (h *hopTracer) started(id uuid.UUID) {
	now := time.Now()
	h.set(hopKey{id, steps[0], false}, func(t *hopTimes) { t.committed = now })
}

// consumer adds the tracer's hooks to cc.
func (h *hopTracer) consumer(cc consumer.Config) consumer.Config {
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

// relay is a relay configuration whose Publish hook feeds the tracer.
func (h *hopTracer) relay() relay.Config {
	return relay.Config{Hooks: relay.Hooks{Publish: func(msgs []outbox.Message) func(error) {
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
	pool, k := newDB(b), testenv.NewKafka(b)
	const replies = "raw.replies"
	out, err := outbox.New(outbox.Config{})
	if err != nil {
		b.Fatal(err)
	}
	send := func(ctx context.Context, tx outbox.Execer, id uuid.UUID, step int) error {
		cmd := wire.Command{SagaID: id, SagaType: "raw", Step: steps[step], Op: wire.OpForward, Attempt: 1,
			Name: steps[step] + ".do", ReplyTo: replies, Payload: []byte(`{}`)}
		return out.Enqueue(ctx, tx, cmd.Message(commands))
	}
	d := sagabench.NewDriver(func(ctx context.Context, id uuid.UUID, _ int) error {
		err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return send(ctx, tx, id, 0) })
		h.started(id)
		return err
	})
	cc := consumerConfig(d)
	cc.Brokers, cc.GroupID, cc.Topics = k.Brokers, "driver", []string{replies}
	cc.Hooks.Handled = func(m consumer.Message, dup bool) {
		if r, err := wire.ParseReply(m.Headers, m.Value); err == nil && !dup && r.Step == steps[len(steps)-1] {
			d.Finished(r.SagaID)
		}
	}
	driver, err := consumer.New(pool, h.consumer(cc), func(ctx context.Context, tx pgx.Tx, msg consumer.Message) error {
		r, err := wire.ParseReply(msg.Headers, msg.Value)
		if err != nil {
			return consumer.Permanent(err)
		}
		if next := slices.Index(steps, r.Step) + 1; next < len(steps) {
			return send(ctx, tx, r.SagaID, next)
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	sagatest.Start(b, pool, k.Brokers, sagatest.Config{
		Participants: []sagatest.Runner{noopParticipant(b, pool, k.Brokers, h.consumer(consumerConfig(d))), driver},
		Topics:       []string{commands, replies}, Partitions: 8, Relay: h.relay(),
	})
	h.report(b, "raw flow", d)
}

func sagaHops(b *testing.B) {
	h := &hopTracer{m: map[hopKey]*hopTimes{}}
	pool, k := newDB(b), testenv.NewKafka(b)
	var o *sagastate.Orchestrator
	d := sagabench.NewDriver(func(ctx context.Context, id uuid.UUID, i int) error {
		err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return o.Start(ctx, tx, "bench", id, map[string]int{"n": i}) })
		h.started(id)
		return err
	})
	var stages []sagastate.Stage
	for _, s := range steps {
		stages = append(stages, sagastate.Step(s, commands).Do(s+".do").Undo(s+".undo"))
	}
	e := sagatest.Start(b, pool, k.Brokers, sagatest.Config{
		Orchestrator: sagastate.Config{Sagas: []sagastate.Definition{sagastate.Define[map[string]int]("bench", stages...)},
			Consumer: h.consumer(consumerConfig(d)),
			Hooks:    sagastate.Hooks{SagaFinished: func(s sagastate.SagaInfo) { d.Finished(s.ID) }}},
		Participants: []sagatest.Runner{noopParticipant(b, pool, k.Brokers, h.consumer(consumerConfig(d)))},
		Topics:       []string{commands}, Partitions: 8, Relay: h.relay(),
	})
	o = e.Orchestrator
	h.report(b, "no-op saga", d)
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
