package sagabench_test

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagabox/sagabox/inbox/consumer"
	"github.com/sagabox/sagabox/internal/demo"
	"github.com/sagabox/sagabox/internal/sagabench"
	"github.com/sagabox/sagabox/internal/testenv"
	"github.com/sagabox/sagabox/migrations"
	"github.com/sagabox/sagabox/outbox"
	"github.com/sagabox/sagabox/participants"
	"github.com/sagabox/sagabox/sagastate"
	"github.com/sagabox/sagabox/sagastate/sagatest"
	"github.com/sagabox/sagabox/wire"
)

func TestMain(m *testing.M) { os.Exit(testenv.Run(m)) }

// Closed-loop levels: flows kept in flight.
var levels = []int{8, 64, 256}

// Flags that run part of BenchmarkSagaLoad, to profile one load of one kind:
//
//	go test -run '^$' -bench BenchmarkSagaLoad -benchtime 1x ./internal/sagabench/ \
//	    -cpuprofile /tmp/x.cpu -args -sagaload.kinds baseline -sagaload.levels 8
var (
	onlyKinds  = flag.String("sagaload.kinds", "", "comma-separated kinds to run (baseline, no-op, order); empty: all")
	onlyLevels = flag.String("sagaload.levels", "", "comma-separated loads to run (8, 64, 256, open); empty: all")
	openRate   = flag.Float64("sagaload.rate", 0, "open-loop rate in flows/s; 0: half the closed-loop peak of the kind (of the levels run)")
	window     = flag.Duration("sagaload.window", 3*time.Second, "how long each closed-loop level is measured, after its warm-up")
)

// selected reports whether the comma-separated list sel is empty or holds v.
func selected(sel, v string) bool { return sel == "" || slices.Contains(strings.Split(sel, ","), v) }

// warmUp is how long a closed-loop level runs before its window: its first wave, which
// starts at once, has finished (256 no-op sagas in flight: p99 0.7-1.3 s at the start).
const warmUp = 1500 * time.Millisecond

// openSeconds is how long the open-loop level offers flows.
const openSeconds = 5

// BenchmarkSagaLoad loads three kinds of flow at 8, 64 and 256 in flight (each level
// measured over -sagaload.window of steady load, after warmUp), then open loop at half
// the peak throughput the closed-loop levels reached:
//
//   - baseline: four command/reply round trips through the outbox, the relay, kfake and a
//     participant with its barrier (no-op handlers), driven by a bare reply consumer
//     that enqueues the next commands with its COMMIT, as the orchestrator does — the
//     plumbing, without saga state;
//   - the no-op 4-step saga through the sagastate orchestrator, same participant;
//   - the demo's order saga (create order → reserve inventory → charge payment → schedule
//     shipping; every 5th declined and compensated) on its real tables, three hot SKUs.
//
// Each kind runs in a fresh database and broker, stopped once measured; PostgreSQL
// runs with fsync off. The services run with the intervals a deployment has (relay
// poll 1s, orchestrator sweep 500ms, offset commits 500ms, group heartbeats 3s), not
// the shorter ones sagatest gives tests: those cost CPU a deployment does not spend.
func BenchmarkSagaLoad(b *testing.B) {
	var base, rows []sagabench.Result
	for range b.N {
		if selected(*onlyKinds, "baseline") {
			base = measure(b, "baseline: raw outbox + consumer", rawEnv)
		}
		rows = nil
		if selected(*onlyKinds, "no-op") {
			rows = append(rows, measure(b, "no-op 4-step saga", noopEnv)...)
		}
		if selected(*onlyKinds, "order") {
			rows = append(rows, measure(b, "order saga (demo tables)", orderEnv)...)
		}
	}
	load, _ := exec.Command("uptime").Output()
	fmt.Fprintf(os.Stderr, "\nsaga load (kfake in-process, PostgreSQL fsync=off; load: %s)\n", strings.TrimSpace(string(load)))
	sagabench.Print(os.Stderr, base, rows)
	fmt.Fprintln(os.Stderr, "local-rt: transactions the consumers ran again after a transient database error; saga-rt: step commands the orchestrator sent again; deadlock: steps failed by a deadlock or serialization failure")
	fmt.Fprintln(os.Stderr, "rt/flow, stmt/flow: database round trips and statements per flow, of everything on the env's pool (starts, relay, consumers)")
	fmt.Fprintln(os.Stderr, "cpu/flow: CPU time of this process (services, relays, kfake) and the PostgreSQL server per finished flow (each kind stopped once measured); pg part: the server's share of it; ×base cpu: the baseline's cpu/flow over this row's, the throughput ratio where the benchmark has the CPU to itself")
	for _, r := range rows {
		if r.InFlight == 64 || r.InFlight == 256 {
			name := strings.Fields(r.Name)[0]
			b.ReportMetric(r.PerSec, fmt.Sprintf("%s-%d-sagas/s", name, r.InFlight))
		}
		if r.Rate > 0 {
			b.ReportMetric(float64(r.P99.Milliseconds()), strings.Fields(r.Name)[0]+"-open-p99-ms")
		}
		b.ReportMetric(float64(r.Deadlocks), "deadlock-retries")
	}
	for _, r := range append(base, rows...) {
		if r.Unfinished > 0 {
			b.Errorf("%s (%d in flight, open %.0f/s): %d flows unfinished (%d counted finished); first: %v", r.Name, r.InFlight, r.Rate, r.Unfinished, r.Flows, r.FirstError)
		}
	}
}

// env is one kind of flow, running.
type env struct {
	driver *sagabench.Driver
	pool   *pgxpool.Pool
	// sagaRetries reads the saga-level retries of ids; nil for the baseline.
	sagaRetries func(ids []uuid.UUID) (demo.Retries, error)
}

// measure runs the closed-loop levels and the open-loop one on a fresh env.
func measure(b testing.TB, name string, start func(testing.TB) env) []sagabench.Result {
	// The kind stops when it has been measured: its idle services must not count
	// in the next kind's CPU per flow.
	scope := sagabench.NewScope(b)
	defer scope.Close()
	e := start(scope)
	var backend int
	if err := e.pool.QueryRow(context.Background(), "SELECT pg_backend_pid()").Scan(&backend); err != nil {
		b.Fatal(err)
	}
	e.driver.CPU = sagabench.CPUMeter(backend)
	if t, ok := e.pool.Config().ConnConfig.Tracer.(*sagabench.Trips); ok {
		e.driver.Trips = t.Counts
	}
	e.driver.Closed(b, name+" (warm-up)", 1, 1) // groups joined, topics warm
	var out []sagabench.Result
	peak := 0.0
	add := func(r sagabench.Result, ids []uuid.UUID) {
		if e.sagaRetries != nil {
			got, err := e.sagaRetries(ids)
			if err != nil {
				b.Fatal(err)
			}
			r.SagaRetries, r.Deadlocks = got.Attempts, got.Deadlocks
		}
		out = append(out, r)
	}
	for _, n := range levels {
		if !selected(*onlyLevels, fmt.Sprint(n)) {
			continue
		}
		r, ids := e.driver.Steady(b, name, n, warmUp, *window)
		peak = max(peak, r.PerSec)
		add(r, ids)
	}
	if selected(*onlyLevels, "open") {
		rate := max(peak/2, 1)
		if *openRate > 0 {
			rate = *openRate
		}
		add(e.driver.Open(b, name, max(50, int(rate*openSeconds)), rate))
	}
	return out
}

// newDB is a fresh database with a pool large enough for the relay, the consumers and
// 256 starts in flight, counting its round trips and statements (sagabench.Trips).
func newDB(b testing.TB) *pgxpool.Pool {
	db := testenv.NewDB(b)
	cfg, err := pgxpool.ParseConfig(db.URL)
	if err != nil {
		b.Fatal(err)
	}
	cfg.MaxConns = 64
	cfg.ConnConfig.Tracer = &sagabench.Trips{}
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(pool.Close)
	return pool
}

// consumerConfig is sagatest's fast consumer with d counting local retries, and the
// consumer's own defaults for what a test shortens only to finish sooner: offsets
// committed every 500ms (not 100ms) and group heartbeats every 3s (not 200ms), as a
// deployment runs them. It joins its group as fast as a test's.
func consumerConfig(d *sagabench.Driver) consumer.Config {
	cc := sagatest.FastConsumer()
	cc.CommitInterval, cc.HeartbeatInterval, cc.SessionTimeout = 500*time.Millisecond, 3*time.Second, 10*time.Second
	cc.Hooks.LocalRetry = d.LocalRetry
	return cc
}

var steps = []string{"s1", "s2", "s3", "s4"}

const commands = "bench.commands"

// noopParticipant answers every step with a trivial local transaction behind the barrier.
func noopParticipant(b testing.TB, pool *pgxpool.Pool, brokers []string, cc consumer.Config) *participants.Participant {
	p, err := participants.New(pool, participants.Config{Brokers: brokers, GroupID: "svc", CommandTopics: []string{commands}, Consumer: cc})
	if err != nil {
		b.Fatal(err)
	}
	noop := func(context.Context, pgx.Tx, wire.Command) ([]byte, error) { return []byte(`{"ok":true}`), nil }
	for _, s := range steps {
		p.Step(s+".do", noop, s+".undo", noop)
	}
	return p
}

// startSaga returns a StartFunc that starts a saga of sagaType with payload(i).
func startSaga(pool *pgxpool.Pool, o **sagastate.Orchestrator, sagaType string, payload func(id uuid.UUID, i int) any) sagabench.StartFunc {
	return func(ctx context.Context, id uuid.UUID, i int) error {
		return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return (*o).Start(ctx, tx, sagaType, id, payload(id, i)) })
	}
}

// sagaEnv runs def's orchestrator beside runners; h, if not nil, traces its hops.
func sagaEnv(b testing.TB, pool *pgxpool.Pool, brokers []string, d *sagabench.Driver, o **sagastate.Orchestrator, def sagastate.Definition, runners []sagatest.Runner, topics []string, h *hopTracer) env {
	e := sagatest.Start(b, pool, brokers, sagatest.Config{
		Orchestrator: sagastate.Config{Sagas: []sagastate.Definition{def}, Consumer: h.consumer(consumerConfig(d)),
			SweepInterval: 500 * time.Millisecond, // sagastate's default; sagatest's 50ms is for tests whose timeouts must fire soon
			Hooks:         sagastate.Hooks{SagaFinished: func(s sagastate.SagaInfo) { d.Finished(s.ID) }}},
		Participants: runners, Topics: topics, Partitions: 8, Relay: h.relay(),
	})
	*o = e.Orchestrator
	return env{driver: d, pool: pool, sagaRetries: func(ids []uuid.UUID) (demo.Retries, error) {
		return demo.CountRetries(context.Background(), pool, migrations.DefaultSchema, ids)
	}}
}

func noopEnv(b testing.TB) env { return noopFlow(b, nil) }

// noopFlow is the no-op 4-step saga; h, if not nil, traces its hops.
func noopFlow(b testing.TB, h *hopTracer) env {
	pool, k := newDB(b), testenv.NewKafka(b)
	var o *sagastate.Orchestrator
	d := sagabench.NewDriver(h.starts(startSaga(pool, &o, "bench", func(_ uuid.UUID, i int) any { return map[string]int{"n": i} })))
	var stages []sagastate.Stage
	for _, s := range steps {
		stages = append(stages, sagastate.Step(s, commands).Do(s+".do").Undo(s+".undo"))
	}
	return sagaEnv(b, pool, k.Brokers, d, &o, sagastate.Define[map[string]int]("bench", stages...),
		[]sagatest.Runner{noopParticipant(b, pool, k.Brokers, h.consumer(consumerConfig(d)))}, []string{commands}, h)
}

var skus = []string{"widget", "gadget", "gizmo"}

func orderEnv(b testing.TB) env {
	pool, k := newDB(b), testenv.NewKafka(b)
	ctx := context.Background()
	svc, err := demo.NewServices(demo.Schemas{})
	if err != nil {
		b.Fatal(err)
	}
	if err := svc.Setup(ctx, pool); err != nil {
		b.Fatal(err)
	}
	stock := map[string]int{}
	for _, s := range skus {
		stock[s] = 1_000_000
	}
	if err := svc.SeedStock(ctx, pool, stock); err != nil {
		b.Fatal(err)
	}
	var o *sagastate.Orchestrator
	d := sagabench.NewDriver(startSaga(pool, &o, demo.SagaType, func(id uuid.UUID, i int) any {
		amount := int64(20 + (i*37)%900)
		if i%5 == 4 {
			amount = demo.PaymentLimit + 50 // declined: the saga compensates
		}
		return demo.Order{ID: id, Customer: fmt.Sprintf("customer-%d", i%17), SKU: skus[i%len(skus)], Qty: 1 + i%3,
			Amount: amount, Address: fmt.Sprintf("%d Saga Street", i)}
	}))
	topics := demo.Topics{}.WithDefaults()
	var runners []sagatest.Runner
	for _, role := range demo.Roles {
		p, err := svc.Participant(pool, role, topics, participants.Config{Brokers: k.Brokers, Consumer: consumerConfig(d)})
		if err != nil {
			b.Fatal(err)
		}
		runners = append(runners, p)
	}
	return sagaEnv(b, pool, k.Brokers, d, &o, demo.OrderSaga(topics), runners, topics.All(), nil)
}

// rawEnv drives the same four round trips as the no-op saga without sagastate: a
// consumer of the replies enqueues the next step's command in the reply's inbox
// transaction (sent with its COMMIT) and signals the flow finished once the last
// reply committed.
func rawEnv(b testing.TB) env { return rawFlow(b, nil) }

// rawFlow is rawEnv's flow; h, if not nil, traces its hops.
func rawFlow(b testing.TB, h *hopTracer) env {
	pool, k := newDB(b), testenv.NewKafka(b)
	const replies = "raw.replies"
	out, err := outbox.New(outbox.Config{})
	if err != nil {
		b.Fatal(err)
	}
	command := func(id uuid.UUID, step int) outbox.Message {
		cmd := wire.Command{SagaID: id, SagaType: "raw", Step: steps[step], Op: wire.OpForward, Attempt: 1,
			Name: steps[step] + ".do", ReplyTo: replies, Payload: []byte(`{}`)}
		return cmd.Message(commands)
	}
	d := sagabench.NewDriver(h.starts(func(ctx context.Context, id uuid.UUID, _ int) error {
		return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return out.Enqueue(ctx, tx, command(id, 0)) })
	}))
	cc := consumerConfig(d)
	cc.Brokers, cc.GroupID, cc.Topics = k.Brokers, "driver", []string{replies}
	cc.Concurrency = sagastate.DefaultConcurrency // as the orchestrator's reply consumer
	cc.Hooks.Handled = func(m consumer.Message, duplicate bool) {
		if r, err := wire.ParseReply(m.Headers, m.Value); err == nil && !duplicate && r.Step == steps[len(steps)-1] {
			d.Finished(r.SagaID)
		}
	}
	// The plumbing at its best, as the orchestrator and the participant use it: the
	// next commands of a transaction's replies in one INSERT, sent with the COMMIT
	// (consumer.QueueAtCommit), not one round trip per reply.
	driver, err := consumer.NewBatch(pool, h.consumer(cc), func(ctx context.Context, tx pgx.Tx, msgs []consumer.Message) error {
		var next []outbox.Message
		for _, m := range msgs {
			_, end := consumer.Trace(ctx, m)
			r, err := wire.ParseReply(m.Headers, m.Value)
			end(err)
			if err != nil {
				return consumer.Permanent(err)
			}
			if i := slices.Index(steps, r.Step) + 1; i < len(steps) {
				next = append(next, command(r.SagaID, i))
			}
		}
		batch := &pgx.Batch{}
		if err := out.Enqueue(ctx, queueOnly{batch}, next...); err != nil {
			return consumer.Permanent(err)
		}
		if batch.Len() == 0 || consumer.QueueAtCommit(ctx, batch, nil) {
			return nil
		}
		return tx.SendBatch(ctx, batch).Close()
	})
	if err != nil {
		b.Fatal(err)
	}
	sagatest.Start(b, pool, k.Brokers, sagatest.Config{
		Participants: []sagatest.Runner{noopParticipant(b, pool, k.Brokers, h.consumer(consumerConfig(d))), driver},
		Topics:       []string{commands, replies}, Partitions: 8, Relay: h.relay(),
	})
	return env{driver: d, pool: pool}
}

// queueOnly is an outbox.Execer that queues the statement in b instead of running it.
type queueOnly struct{ b *pgx.Batch }

func (q queueOnly) Exec(_ context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	q.b.Queue(sql, args...)
	return pgconn.CommandTag{}, nil
}
