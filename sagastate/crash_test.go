package sagastate_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagabox/sagabox/internal/testenv"
	"github.com/sagabox/sagabox/participants"
	"github.com/sagabox/sagabox/relay"
	"github.com/sagabox/sagabox/relay/kafkapub"
	"github.com/sagabox/sagabox/sagastate"
	"github.com/sagabox/sagabox/sagastate/sagatest"
	"github.com/sagabox/sagabox/wire"
)

var errCrash = errors.New("crash injected by the test")

// crashy is the saga of the crash tests: a, then b and c in parallel, then d.
var crashy = sagastate.Define[script]("crashy",
	sagastate.Step("a", topic).Do("a.do").Undo("a.undo"),
	sagastate.Parallel(sagastate.Step("b", topic).Do("b.do").Undo("b.undo"), sagastate.Step("c", topic).Do("c.do").Undo("c.undo")),
	sagastate.Step("d", topic).Do("d.do").Undo("d.undo"),
)

func crashConfig(brokers []string) sagastate.Config {
	return sagastate.Config{Sagas: []sagastate.Definition{crashy}, Brokers: brokers, SweepInterval: 50 * time.Millisecond, Consumer: sagatest.FastConsumer()}
}

// crashRig runs everything but the orchestrator: a participant recording its effects,
// and the relay. The test runs (and kills) the orchestrator itself.
type crashRig struct {
	db      *testenv.DB
	brokers []string
	stop    context.Context
	wg      sync.WaitGroup
}

func newCrashRig(t *testing.T) *crashRig {
	t.Helper()
	r := &crashRig{db: testenv.NewDB(t), brokers: testenv.NewKafka(t).Brokers}
	ctx := context.Background()
	if _, err := r.db.Pool.Exec(ctx, `CREATE TABLE "effects" ("seq" bigserial, "saga_id" uuid, "step" text, "op" text)`); err != nil {
		t.Fatal(err)
	}
	p, err := participants.New(r.db.Pool, participants.Config{Brokers: r.brokers, GroupID: "svc", CommandTopics: []string{topic}, Consumer: sagatest.FastConsumer()})
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range []string{"a", "b", "c", "d"} {
		for _, op := range []wire.Op{wire.OpForward, wire.OpCompensate} {
			name := st + ".do"
			if op == wire.OpCompensate {
				name = st + ".undo"
			}
			p.Handle(name, func(ctx context.Context, tx pgx.Tx, cmd wire.Command) ([]byte, error) {
				var sc script
				if err := json.Unmarshal(cmd.Payload, &sc); err != nil {
					return nil, participants.Fail(err.Error())
				}
				if op == wire.OpForward && sc.Fail == st {
					return nil, participants.Fail("refused")
				}
				_, err := tx.Exec(ctx, `INSERT INTO "effects" ("saga_id", "step", "op") VALUES ($1, $2, $3)`, cmd.SagaID, st, string(op))
				return nil, err
			})
		}
	}
	if err := sagatest.CreateTopics(r.brokers, 4, topic, sagastate.DefaultReplyTopic); err != nil {
		t.Fatal(err)
	}
	pub, err := kafkapub.New(kafkapub.Config{Brokers: r.brokers})
	if err != nil {
		t.Fatal(err)
	}
	rl, err := relay.New(r.db.Pool, pub, relay.Config{PollInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	stop, cancel := context.WithCancel(ctx)
	r.stop = stop
	t.Cleanup(func() { cancel(); r.wg.Wait(); _ = pub.Close() })
	r.background(t, rl.Run)
	r.background(t, p.Run)
	return r
}

func (r *crashRig) background(t *testing.T, fn func(context.Context) error) {
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		if err := fn(r.stop); err != nil && r.stop.Err() == nil {
			t.Error(err)
		}
	}()
}

// start starts n sagas in transactions of 50; one in seven fails at each step.
func (r *crashRig) start(t *testing.T, n int) {
	t.Helper()
	ctx := context.Background()
	o, err := sagastate.New(r.db.Pool, crashConfig(r.brokers))
	if err != nil {
		t.Fatal(err)
	}
	steps := []string{"", "", "", "a", "b", "c", "d"}
	for i := 0; i < n; i += 50 {
		err := pgx.BeginFunc(ctx, r.db.Pool, func(tx pgx.Tx) error {
			for j := i; j < min(i+50, n); j++ {
				if err := o.Start(ctx, tx, "crashy", uuid.New(), script{Fail: steps[j%len(steps)]}); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}

// await polls the database until all n sagas are completed or compensated.
func (r *crashRig) await(t *testing.T, n int, timeout time.Duration, crashes func() int64) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		done := scalar[int](t, r.db, `SELECT count(*) FROM sagabox.saga_instances WHERE status IN ('completed', 'compensated')`)
		if done == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v only %d of %d sagas finished (%d crashes)", timeout, done, n, crashes())
		}
		time.Sleep(100 * time.Millisecond) // polling the database for the condition
	}
}

// check verifies that no effect happened twice, that a compensated saga undid every
// effect it had and a completed one none, and that no saga finished twice.
func (r *crashRig) check(t *testing.T, n int) (completed int) {
	t.Helper()
	rows, err := r.db.Pool.Query(context.Background(), `
SELECT i.id, i.status, e.step, count(*) FILTER (WHERE e.op = 'forward'), count(*) FILTER (WHERE e.op = 'compensate')
FROM sagabox.saga_instances i JOIN "effects" e ON e.saga_id = i.id GROUP BY 1, 2, 3`)
	if err != nil {
		t.Fatal(err)
	}
	var id uuid.UUID
	var status, step string
	var fwd, comp, bad int
	_, err = pgx.ForEachRow(rows, []any{&id, &status, &step, &fwd, &comp}, func() error {
		if ok := fwd <= 1 && comp <= 1 && (status == "completed" && comp == 0 && fwd == 1 || status == "compensated" && comp == fwd); !ok {
			if bad++; bad <= 5 {
				t.Errorf("saga %s (%s) step %s: %d forward, %d compensate", id, status, step, fwd, comp)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	finals := scalar[int](t, r.db, `SELECT count(*) FROM sagabox.saga_events WHERE type IN ('saga_completed', 'saga_compensated')`)
	twice := scalar[int](t, r.db, `SELECT count(*) FROM (SELECT saga_id FROM sagabox.saga_events WHERE type IN ('saga_completed', 'saga_compensated') GROUP BY 1 HAVING count(*) > 1) d`)
	if finals != n || twice != 0 {
		t.Fatalf("%d final events for %d sagas (%d sagas finished twice)", finals, n, twice)
	}
	completed = scalar[int](t, r.db, `SELECT count(*) FROM sagabox.saga_instances WHERE status = 'completed'`)
	if want := n * 3 / 7; completed < want-10 || completed > want+10 {
		t.Errorf("%d sagas completed; about %d should have (the others fail on purpose)", completed, want)
	}
	return completed
}

// TestCrashRecoveryKill9 runs 1,000 sagas while the orchestrator, a child process (this
// test binary re-executed), is killed with SIGKILL at random moments — in or between
// transactions — and restarted. It knows nothing but what is in PostgreSQL. Every saga
// must end completed or compensated, every participant effect applied once and undone at
// most once, no saga finished twice.
func TestCrashRecoveryKill9(t *testing.T) {
	t.Parallel()
	sagas := 1000
	if raceEnabled {
		sagas = 200
	}
	r := newCrashRig(t)
	var kills atomic.Int64
	var outMu sync.Mutex
	var lastOutput string
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		for r.stop.Err() == nil {
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), childEnv+"=1", "SAGABOX_CHILD_DATABASE_URL="+r.db.URL, "SAGABOX_CHILD_BROKERS="+strings.Join(r.brokers, ","))
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			if err := cmd.Start(); err != nil {
				t.Error(err)
				return
			}
			select {
			case <-time.After(time.Duration(1500+rand.IntN(2500)) * time.Millisecond):
				_ = cmd.Process.Kill() // SIGKILL: no cleanup of any kind
				kills.Add(1)
			case <-r.stop.Done():
				_ = cmd.Process.Signal(syscall.SIGTERM)
			}
			_ = cmd.Wait()
			outMu.Lock()
			lastOutput = out.String()
			outMu.Unlock()
		}
	}()
	// Sagas start in four waves, each after one more kill, so at least three kills
	// hit sagas in flight however fast the machine finishes them.
	const waves = 4
	for w := range waves {
		deadline := time.Now().Add(60 * time.Second)
		for kills.Load() < int64(w) && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond) // waiting for the killer goroutine's next kill
		}
		r.start(t, sagas/waves)
	}
	r.await(t, sagas, 150*time.Second, kills.Load)
	completed := r.check(t, sagas)
	if kills.Load() < 3 {
		t.Errorf("only %d kills; the test proves little", kills.Load())
	}
	if t.Failed() {
		outMu.Lock()
		t.Logf("output of the last orchestrator process:\n%s", lastOutput)
		outMu.Unlock()
	}
	t.Logf("%d sagas: %d completed, %d compensated; orchestrator process killed -9 %d times", sagas, completed, sagas-completed, kills.Load())
}

// childEnv makes the test binary run as an orchestrator process (see TestMain).
const childEnv = "SAGABOX_SAGASTATE_ORCHESTRATOR_CHILD"

// runOrchestratorChild is the body of the orchestrator child process: it runs until
// SIGTERM, or until the parent kills it.
func runOrchestratorChild() int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	pool, err := pgxpool.New(ctx, os.Getenv("SAGABOX_CHILD_DATABASE_URL"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer pool.Close()
	o, err := sagastate.New(pool, crashConfig(strings.Split(os.Getenv("SAGABOX_CHILD_BROKERS"), ",")))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := o.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// TestCrashRecoveryMidTransaction abandons the orchestrator at chosen points inside its
// transactions — before or after writing the new state, so the transaction never commits —
// and between transactions, replacing it with a fresh Orchestrator each time. It aims at
// the points kill -9 hits only by chance.
func TestCrashRecoveryMidTransaction(t *testing.T) {
	t.Parallel()
	sagas := 300
	if raceEnabled {
		sagas = 100
	}
	r := newCrashRig(t)
	var crashes, midTx atomic.Int64
	r.wg.Add(1)
	go func() { // the orchestrator "process", replaced after every crash
		defer r.wg.Done()
		for r.stop.Err() == nil {
			o, err := sagastate.New(r.db.Pool, crashConfig(r.brokers))
			if err != nil {
				t.Error(err)
				return
			}
			life, die := context.WithCancel(r.stop)
			var once sync.Once
			kill := func() { once.Do(func() { crashes.Add(1); die() }) }
			sagastate.SetCrashHook(o, func(point string) error {
				if rand.IntN(sagas*3/5) == 0 { // a few dozen crashes per run
					midTx.Add(1)
					kill()
					return fmt.Errorf("%w at %s", errCrash, point)
				}
				return nil
			})
			timer := time.AfterFunc(time.Duration(1000+rand.IntN(2000))*time.Millisecond, kill)
			if err := o.Run(life); err != nil && life.Err() == nil {
				t.Errorf("orchestrator: %v", err)
			}
			timer.Stop()
			die()
		}
	}()
	r.start(t, sagas)
	r.await(t, sagas, 120*time.Second, crashes.Load)
	completed := r.check(t, sagas)
	if midTx.Load() < 3 {
		t.Errorf("only %d mid-transaction crashes; the test proves little", midTx.Load())
	}
	t.Logf("%d sagas: %d completed, %d compensated; orchestrator crashed %d times (%d transactions abandoned mid-way)",
		sagas, completed, sagas-completed, crashes.Load(), midTx.Load())
}
