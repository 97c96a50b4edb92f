package sagastate_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagabox/sagabox/inbox/consumer"
	"github.com/sagabox/sagabox/internal/testenv"
	"github.com/sagabox/sagabox/outbox"
	"github.com/sagabox/sagabox/participants"
	"github.com/sagabox/sagabox/sagastate"
	"github.com/sagabox/sagabox/sagastate/sagatest"
	"github.com/sagabox/sagabox/wire"
)

var benchSteps = []string{"s1", "s2", "s3", "s4"}

// benchParticipant answers every step with a trivial local transaction behind the barrier.
func benchParticipant(b *testing.B, db *testenv.DB, brokers []string) *participants.Participant {
	p, err := participants.New(db.Pool, participants.Config{Brokers: brokers, GroupID: "svc", CommandTopics: []string{topic}, Consumer: sagatest.FastConsumer()})
	if err != nil {
		b.Fatal(err)
	}
	noop := func(context.Context, pgx.Tx, wire.Command) ([]byte, error) { return []byte(`{"ok":true}`), nil }
	for _, s := range benchSteps {
		p.Step(s+".do", noop, s+".undo", noop)
	}
	return p
}

// benchLevels are the numbers of flows kept in flight; benchFlows flows run at each.
var benchLevels = []int{8, 64, 256}

const benchFlows = 384

type levelResult struct {
	inFlight int
	perSec   float64
	p50, p99 time.Duration
}

type benchResult struct {
	idle   time.Duration // p50 of flows run one at a time
	levels []levelResult
}

const idleFlows = 20

// flowDriver starts one flow in a transaction of its own; done receives the duration
// (start to end, as the driver measured it) of every flow that ended.
type flowDriver struct {
	start func(ctx context.Context, id uuid.UUID) error
	done  chan time.Duration
}

// drive runs benchFlows flows keeping inFlight of them running, and measures them.
func (d *flowDriver) drive(b *testing.B, inFlight int) levelResult {
	ctx := context.Background()
	slots := make(chan struct{}, inFlight)
	errs := make(chan error, 1)
	begin := time.Now()
	// Several starters: one start transaction at a time would cap the rate on a loaded
	// machine before the saga path does.
	var left atomic.Int64
	left.Store(benchFlows)
	for range min(inFlight, 16) {
		go func() {
			for left.Add(-1) >= 0 {
				slots <- struct{}{}
				if err := d.start(ctx, uuid.New()); err != nil {
					select {
					case errs <- err:
					default:
					}
					return
				}
			}
		}()
	}
	took := make([]time.Duration, 0, benchFlows)
	timeout := time.After(3 * time.Minute)
	for len(took) < benchFlows {
		select {
		case t := <-d.done:
			took = append(took, t)
			<-slots
		case err := <-errs:
			b.Fatal(err)
		case <-timeout:
			b.Fatalf("%d in flight: only %d of %d flows finished after 3 minutes", inFlight, len(took), benchFlows)
		}
	}
	elapsed := time.Since(begin)
	slices.Sort(took)
	return levelResult{inFlight: inFlight, perSec: benchFlows / elapsed.Seconds(), p50: took[len(took)/2], p99: took[len(took)*99/100]}
}

// run measures the idle latency, then every level.
func (d *flowDriver) run(b *testing.B) benchResult {
	ctx := context.Background()
	one := func() time.Duration {
		if err := d.start(ctx, uuid.New()); err != nil {
			b.Fatal(err)
		}
		select {
		case t := <-d.done:
			return t
		case <-time.After(time.Minute):
			b.Fatal("a flow did not finish within a minute")
		}
		return 0
	}
	one() // warm up: groups joined, topics warm
	var idle []time.Duration
	for i := 0; i < idleFlows; i++ {
		idle = append(idle, one())
	}
	slices.Sort(idle)
	r := benchResult{idle: idle[len(idle)/2]}
	for _, n := range benchLevels {
		r.levels = append(r.levels, d.drive(b, n))
	}
	return r
}

// BenchmarkSaga4Steps measures flows/s and time to consistency (start → final state) of
// a no-op 4-step saga with in-process participants at 8, 64 and 256 sagas in flight
// (closed loop: a saga starts when one ends), and, as the baseline in the same run, the
// same four command/reply round trips driven by a bare reply consumer that enqueues the
// next command through the outbox with no saga state at all. Both use the same relay,
// participants (with their barrier) and broker. PostgreSQL runs with fsync off.
func BenchmarkSaga4Steps(b *testing.B) {
	var raw, saga benchResult
	for i := 0; i < b.N; i++ {
		raw = benchRaw(b)
		saga = benchSaga(b)
	}
	b.ReportMetric(float64(saga.idle.Microseconds())/1000, "idle-p50-ms")
	b.ReportMetric(float64(raw.idle.Microseconds())/1000, "baseline-idle-p50-ms")
	fmt.Fprintf(os.Stderr, "\n%d flows of 4 command/reply round trips per level (kfake, relay, participants with barrier; PostgreSQL fsync=off)\n", benchFlows)
	fmt.Fprintf(os.Stderr, "%-34s %9s %9s %9s %9s %9s\n", "", "in flight", "flows/s", "p50", "p99", "ratio")
	for i, n := range benchLevels {
		r, s := raw.levels[i], saga.levels[i]
		fmt.Fprintf(os.Stderr, "%-34s %9d %9.0f %9v %9v\n", "baseline: raw outbox + consumer", n, r.perSec, r.p50.Round(time.Millisecond), r.p99.Round(time.Millisecond))
		fmt.Fprintf(os.Stderr, "%-34s %9d %9.0f %9v %9v %9.2f\n", "sagastate orchestrator", n, s.perSec, s.p50.Round(time.Millisecond), s.p99.Round(time.Millisecond), s.perSec/r.perSec)
		b.ReportMetric(s.perSec, fmt.Sprintf("sagas/s@%d", n))
		b.ReportMetric(r.perSec, fmt.Sprintf("baseline-flows/s@%d", n))
		b.ReportMetric(s.perSec/r.perSec, fmt.Sprintf("saga/baseline@%d", n))
	}
	fmt.Fprintf(os.Stderr, "one at a time, p50: baseline %v, saga %v\n", raw.idle.Round(100*time.Microsecond), saga.idle.Round(100*time.Microsecond))
}

// benchDB is a fresh database with a pool large enough for the relay, the participant's
// and the orchestrator's consumers and the driver (the default pool has max(4, CPUs)
// connections).
func benchDB(b *testing.B) *testenv.DB {
	db := testenv.NewDB(b)
	cfg, err := pgxpool.ParseConfig(db.URL)
	if err != nil {
		b.Fatal(err)
	}
	cfg.MaxConns = 40
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(pool.Close)
	db.Pool = pool
	return db
}

func benchSaga(b *testing.B) benchResult {
	db, k := benchDB(b), testenv.NewKafka(b)
	var stages []sagastate.Stage
	for _, s := range benchSteps {
		stages = append(stages, sagastate.Step(s, topic).Do(s+".do").Undo(s+".undo"))
	}
	def := sagastate.Define[map[string]any]("bench", stages...)
	d := &flowDriver{done: make(chan time.Duration, benchFlows)}
	env := sagatest.Start(b, db.Pool, k.Brokers, sagatest.Config{
		Orchestrator: sagastate.Config{Sagas: []sagastate.Definition{def}, Hooks: sagastate.Hooks{
			SagaFinished: func(i sagastate.SagaInfo) { d.done <- i.Duration },
		}},
		Participants: []sagatest.Runner{benchParticipant(b, db, k.Brokers)},
		Topics:       []string{topic},
	})
	defer env.Stop()
	d.start = func(ctx context.Context, id uuid.UUID) error {
		return pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
			return env.Orchestrator.Start(ctx, tx, "bench", id, map[string]any{"n": id})
		})
	}
	return d.run(b)
}

// benchRaw drives the same round trips without sagastate: a consumer of the replies
// enqueues the next step's command, in the reply's inbox transaction.
func benchRaw(b *testing.B) benchResult {
	db, k := benchDB(b), testenv.NewKafka(b)
	const replies = "raw.replies"
	var mu sync.Mutex
	started := map[uuid.UUID]time.Time{}
	d := &flowDriver{done: make(chan time.Duration, benchFlows)}
	out, _ := outbox.New(outbox.Config{})
	send := func(ctx context.Context, tx outbox.Execer, id uuid.UUID, step int) error {
		cmd := wire.Command{SagaID: id, SagaType: "raw", Step: benchSteps[step], Op: wire.OpForward, Attempt: 1,
			Name: benchSteps[step] + ".do", ReplyTo: replies, Payload: []byte(`{}`)}
		return out.Enqueue(ctx, tx, cmd.Message(topic))
	}
	cc := sagatest.FastConsumer()
	cc.Brokers, cc.GroupID, cc.Topics = k.Brokers, "driver", []string{replies}
	driver, err := consumer.New(db.Pool, cc, func(ctx context.Context, tx pgx.Tx, msg consumer.Message) error {
		r, err := wire.ParseReply(msg.Headers, msg.Value)
		if err != nil {
			return consumer.Permanent(err)
		}
		next := slices.Index(benchSteps, r.Step) + 1
		if next < len(benchSteps) {
			return send(ctx, tx, r.SagaID, next)
		}
		mu.Lock()
		defer mu.Unlock()
		if t0, ok := started[r.SagaID]; ok {
			d.done <- time.Since(t0) // at most once: a redelivered reply is skipped by the inbox
			delete(started, r.SagaID)
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	env := sagatest.Start(b, db.Pool, k.Brokers, sagatest.Config{
		Participants: []sagatest.Runner{benchParticipant(b, db, k.Brokers), driver},
		Topics:       []string{topic, replies},
	})
	defer env.Stop()
	d.start = func(ctx context.Context, id uuid.UUID) error {
		mu.Lock()
		started[id] = time.Now()
		mu.Unlock()
		return pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error { return send(ctx, tx, id, 0) })
	}
	return d.run(b)
}
