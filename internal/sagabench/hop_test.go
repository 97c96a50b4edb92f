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

// BenchmarkHopLatency shows where one hop of the plumbing spends its time: the raw
// flow (four command/reply round trips) with timestamps taken by the relay's and the
// consumers' hooks, at 1 and 8 flows in flight.
func BenchmarkHopLatency(b *testing.B) {
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
		h.mu.Lock()
		h.at(hopKey{id, steps[0], false}).committed = time.Now()
		h.mu.Unlock()
		return err
	})
	hooks := func(cc consumer.Config) consumer.Config {
		handled := cc.Hooks.Handled
		cc.Hooks.Trace = func(ctx context.Context, m consumer.Message) (context.Context, func(error)) {
			if k, ok := keyOf(m.Headers, m.Value); ok {
				h.mu.Lock()
				h.at(k).handlerStart = time.Now()
				h.mu.Unlock()
			}
			return ctx, nil
		}
		cc.Hooks.Handled = func(m consumer.Message, dup bool) {
			now := time.Now()
			if k, ok := keyOf(m.Headers, m.Value); ok && !dup {
				h.mu.Lock()
				h.at(k).handled = now
				if n, ok := next(k); ok {
					h.at(n).committed = now
				}
				h.mu.Unlock()
			}
			if handled != nil {
				handled(m, dup)
			}
		}
		return cc
	}
	cc := hooks(consumerConfig(d))
	cc.Brokers, cc.GroupID, cc.Topics = k.Brokers, "driver", []string{replies}
	finished := cc.Hooks.Handled
	cc.Hooks.Handled = func(m consumer.Message, dup bool) {
		finished(m, dup)
		if r, err := wire.ParseReply(m.Headers, m.Value); err == nil && !dup && r.Step == steps[len(steps)-1] {
			d.Finished(r.SagaID)
		}
	}
	driver, err := consumer.New(pool, cc, func(ctx context.Context, tx pgx.Tx, msg consumer.Message) error {
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
	rc := relay.Config{Hooks: relay.Hooks{Publish: func(msgs []outbox.Message) func(error) {
		start := time.Now()
		return func(error) {
			end := time.Now()
			h.mu.Lock()
			defer h.mu.Unlock()
			for _, m := range msgs {
				if k, ok := keyOf(m.Headers, m.Payload); ok {
					t := h.at(k)
					t.pubStart, t.pubEnd = start, end
				}
			}
		}
	}}}
	sagatest.Start(b, pool, k.Brokers, sagatest.Config{
		Participants: []sagatest.Runner{noopParticipant(b, pool, k.Brokers, hooks(consumerConfig(d))), driver},
		Topics:       []string{commands, replies}, Partitions: 8, Relay: rc,
	})
	d.Closed(b, "warm-up", 1, 1)
	for _, inFlight := range []int{1, 8, 64} {
		h.mu.Lock()
		h.m = map[hopKey]*hopTimes{}
		h.mu.Unlock()
		r, _ := d.Closed(b, "raw", 200, inFlight)
		h.mu.Lock()
		var segs [5][]time.Duration
		for _, t := range h.m {
			if t.committed.IsZero() || t.pubStart.IsZero() || t.handlerStart.IsZero() || t.handled.IsZero() {
				continue
			}
			segs[0] = append(segs[0], t.pubStart.Sub(t.committed))
			segs[1] = append(segs[1], t.pubEnd.Sub(t.pubStart))
			segs[2] = append(segs[2], t.handlerStart.Sub(t.pubEnd))
			segs[3] = append(segs[3], t.handled.Sub(t.handlerStart))
			segs[4] = append(segs[4], t.handled.Sub(t.committed))
		}
		h.mu.Unlock()
		fmt.Fprintf(os.Stderr, "\nhop latency, %d in flight (%.0f flows/s, ttc p50 %v): %d hops\n", inFlight, r.PerSec, r.P50, len(segs[0]))
		for i, name := range []string{"commit → publish start (relay finds, claims)", "publish (produce, acks)", "published → handler (fetch, queue, begin, inbox)", "handler → committed (handler, batch, commit)", "whole hop"} {
			s := segs[i]
			slices.Sort(s)
			if len(s) == 0 {
				continue
			}
			fmt.Fprintf(os.Stderr, "  %-50s p50 %8v  p90 %8v  p99 %8v\n", name, s[len(s)/2].Round(10*time.Microsecond), s[len(s)*9/10].Round(10*time.Microsecond), s[len(s)*99/100].Round(10*time.Microsecond))
		}
	}
}
