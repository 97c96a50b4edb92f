package sagastate_test

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
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagabox/sagabox/inbox/consumer"
	"github.com/sagabox/sagabox/internal/testenv"
	"github.com/sagabox/sagabox/outbox"
	"github.com/sagabox/sagabox/participants"
	"github.com/sagabox/sagabox/sagastate"
	"github.com/sagabox/sagabox/sagastate/sagatest"
	"github.com/sagabox/sagabox/wire"
)

const benchSagas = 500

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

type benchResult struct {
	perSec   float64
	p50, p99 time.Duration // under load: benchSagas started at once
	idle     time.Duration // p50 of flows run one at a time
}

const idleFlows = 20

// BenchmarkSaga4Steps measures sagas/s and time to consistency (start → final state) for
// a 4-step saga with in-process participants, and, as the baseline in the same run, the
// same four command/reply round trips driven by a bare reply consumer that enqueues the
// next command through the outbox with no saga state at all. Both use the same relay,
// participants (with their barrier) and broker. PostgreSQL runs with fsync off.
func BenchmarkSaga4Steps(b *testing.B) {
	var raw, saga benchResult
	for i := 0; i < b.N; i++ {
		raw = benchRaw(b)
		saga = benchSaga(b)
	}
	b.ReportMetric(saga.perSec, "sagas/s")
	b.ReportMetric(float64(saga.p50.Milliseconds()), "p50-ms")
	b.ReportMetric(float64(saga.p99.Milliseconds()), "p99-ms")
	b.ReportMetric(float64(saga.idle.Milliseconds()), "idle-p50-ms")
	b.ReportMetric(float64(raw.idle.Milliseconds()), "baseline-idle-p50-ms")
	b.ReportMetric(raw.perSec, "baseline-flows/s")
	b.ReportMetric(saga.perSec/raw.perSec, "saga/baseline")
	fmt.Fprintf(os.Stderr, "\n%d flows of 4 command/reply round trips (kfake, relay, participants with barrier; PostgreSQL fsync=off)\n", benchSagas)
	fmt.Fprintf(os.Stderr, "%-34s %9s %11s %11s %14s\n", "", "flows/s", "p50 (load)", "p99 (load)", "p50 (1 at a time)")
	for _, r := range []struct {
		name string
		r    benchResult
	}{{"baseline: raw outbox + consumer", raw}, {"sagastate orchestrator", saga}} {
		fmt.Fprintf(os.Stderr, "%-34s %9.0f %11v %11v %14v\n", r.name, r.r.perSec, r.r.p50.Round(time.Millisecond), r.r.p99.Round(time.Millisecond), r.r.idle.Round(time.Millisecond))
	}
}

// benchDB is a fresh database with a pool large enough for the relay, the participant's
// and the orchestrator's consumers (the default pool has max(4, CPUs) connections).
func benchDB(b *testing.B) *testenv.DB {
	db := testenv.NewDB(b)
	cfg, err := pgxpool.ParseConfig(db.URL)
	if err != nil {
		b.Fatal(err)
	}
	cfg.MaxConns = 24
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
	env := sagatest.Start(b, db.Pool, k.Brokers, sagatest.Config{
		Orchestrator: sagastate.Config{Sagas: []sagastate.Definition{def}},
		Participants: []sagatest.Runner{benchParticipant(b, db, k.Brokers)},
		Topics:       []string{topic},
	})
	defer env.Stop()
	warmup := env.StartSaga(b, "bench", map[string]any{"warmup": true}) // groups joined, topics warm
	env.Await(b, warmup, time.Minute)

	var idle []time.Duration
	for i := 0; i < idleFlows; i++ {
		s := env.Await(b, env.StartSaga(b, "bench", map[string]any{"idle": i}), time.Minute)
		idle = append(idle, s.FinishedAt.Sub(s.CreatedAt))
	}
	slices.Sort(idle)

	ctx := context.Background()
	begin := time.Now()
	for i := 0; i < benchSagas; i += 50 {
		err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
			for j := 0; j < 50; j++ {
				if err := env.Orchestrator.Start(ctx, tx, "bench", uuid.New(), map[string]any{"n": i + j}); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	for {
		st, err := env.Orchestrator.Stats(ctx, "bench", begin)
		if err != nil {
			b.Fatal(err)
		}
		if st.Counts[sagastate.SagaCompleted] == benchSagas {
			return benchResult{perSec: benchSagas / time.Since(begin).Seconds(), p50: st.TimeToConsistencyP50, p99: st.TimeToConsistencyP99, idle: idle[len(idle)/2]}
		}
		if time.Since(begin) > 2*time.Minute {
			b.Fatalf("sagas not finished after 2 minutes: %+v", st.Counts)
		}
		time.Sleep(10 * time.Millisecond) // polling for completion
	}
}

// benchRaw drives the same round trips without sagastate: a consumer of the replies
// enqueues the next step's command, in the reply's inbox transaction.
func benchRaw(b *testing.B) benchResult {
	db, k := benchDB(b), testenv.NewKafka(b)
	const replies = "raw.replies"
	var mu sync.Mutex
	started := map[uuid.UUID]time.Time{}
	finished := make(chan time.Duration, benchSagas+idleFlows+1)
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
			finished <- time.Since(t0) // at most once: a redelivered reply is skipped by the inbox
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
	ctx := context.Background()
	one := func() time.Duration {
		id := uuid.New()
		mu.Lock()
		started[id] = time.Now()
		mu.Unlock()
		if err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error { return send(ctx, tx, id, 0) }); err != nil {
			b.Fatal(err)
		}
		select {
		case d := <-finished:
			return d
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
	begin := time.Now()
	for i := 0; i < benchSagas; i += 50 {
		err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
			for j := 0; j < 50; j++ {
				id := uuid.New()
				mu.Lock()
				started[id] = time.Now()
				mu.Unlock()
				if err := send(ctx, tx, id, 0); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	var took []time.Duration
	timeout := time.After(2 * time.Minute)
	for len(took) < benchSagas {
		select {
		case d := <-finished:
			took = append(took, d)
		case <-timeout:
			b.Fatalf("only %d of %d raw flows finished after 2 minutes", len(took), benchSagas)
		}
	}
	elapsed := time.Since(begin)
	slices.Sort(took)
	return benchResult{perSec: benchSagas / elapsed.Seconds(), p50: took[len(took)/2], p99: took[len(took)*99/100], idle: idle[len(idle)/2]}
}
