package sagastate_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/sagabox/sagabox/internal/testenv"
	"github.com/sagabox/sagabox/participants"
	"github.com/sagabox/sagabox/relay"
	"github.com/sagabox/sagabox/relay/kafkapub"
	"github.com/sagabox/sagabox/sagastate"
	"github.com/sagabox/sagabox/sagastate/sagatest"
	"github.com/sagabox/sagabox/sagastate/wire"
)

var errCrash = errors.New("crash injected by the test")

// TestCrashRecovery runs 1,000 sagas while the orchestrator is abandoned at random points
// — in the middle of a reply or sweeper transaction (before or after writing the new
// state, so the transaction never commits) or between transactions — and replaced by a
// fresh Orchestrator that knows only what is in PostgreSQL. This is the in-process
// variant of kill -9: the abandoned orchestrator's goroutines stop and its
// uncommitted work is rolled back, like a dead process's. Every saga must end completed or
// compensated, with every participant effect applied once and undone at most once.
func TestCrashRecovery(t *testing.T) {
	t.Parallel()
	const sagas = 1000
	db := testenv.NewDB(t)
	k := testenv.NewKafka(t)
	ctx := context.Background()
	if _, err := db.Pool.Exec(ctx, `CREATE TABLE "effects" ("seq" bigserial, "saga_id" uuid, "step" text, "op" text)`); err != nil {
		t.Fatal(err)
	}
	def := sagastate.Define[script]("crashy",
		sagastate.Step("a", topic).Do("a.do").Undo("a.undo"),
		sagastate.Parallel(sagastate.Step("b", topic).Do("b.do").Undo("b.undo"), sagastate.Step("c", topic).Do("c.do").Undo("c.undo")),
		sagastate.Step("d", topic).Do("d.do").Undo("d.undo"),
	)
	p, err := participants.New(db.Pool, participants.Config{Brokers: k.Brokers, GroupID: "svc", CommandTopics: []string{topic}, Consumer: sagatest.FastConsumer()})
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
	if err := sagatest.CreateTopics(k.Brokers, 4, topic, sagastate.DefaultReplyTopic); err != nil {
		t.Fatal(err)
	}
	pub, err := kafkapub.New(kafkapub.Config{Brokers: k.Brokers})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	rl, err := relay.New(db.Pool, pub, relay.Config{PollInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}

	stop, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	background := func(fn func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := fn(stop); err != nil && stop.Err() == nil {
				t.Error(err)
			}
		}()
	}
	background(rl.Run)
	background(p.Run)

	var crashes, midTx atomic.Int64
	cfg := sagastate.Config{Sagas: []sagastate.Definition{def}, Brokers: k.Brokers, SweepInterval: 50 * time.Millisecond, Consumer: sagatest.FastConsumer()}
	wg.Add(1)
	go func() { // the orchestrator "process", restarted after every crash
		defer wg.Done()
		for stop.Err() == nil {
			o, err := sagastate.New(db.Pool, cfg)
			if err != nil {
				t.Error(err)
				return
			}
			life, die := context.WithCancel(stop)
			var once sync.Once
			kill := func() { once.Do(func() { crashes.Add(1); die() }) }
			sagastate.SetCrashHook(o, func(point string) error {
				if rand.IntN(400) == 0 {
					midTx.Add(1)
					kill()
					return fmt.Errorf("%w at %s", errCrash, point)
				}
				return nil
			})
			timer := time.AfterFunc(time.Duration(1000+rand.IntN(2000))*time.Millisecond, kill) // between transactions
			if err := o.Run(life); err != nil && life.Err() == nil {
				t.Errorf("orchestrator: %v", err)
			}
			timer.Stop()
			die()
		}
	}()

	// Start the sagas in batches while the orchestrator keeps dying.
	o, err := sagastate.New(db.Pool, cfg)
	if err != nil {
		t.Fatal(err)
	}
	steps := []string{"", "", "", "a", "b", "c", "d"}
	for i := 0; i < sagas; i += 50 {
		err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
			for j := i; j < i+50; j++ {
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

	deadline := time.Now().Add(100 * time.Second)
	for {
		var done int
		if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM sagabox.saga_instances WHERE status IN ('completed', 'compensated')`).Scan(&done); err != nil {
			t.Fatal(err)
		}
		if done == sagas {
			break
		}
		if time.Now().After(deadline) {
			st, _ := o.Stats(ctx, "", time.Time{})
			t.Fatalf("after 100s only %d of %d sagas finished: %+v (crashes %d)", done, sagas, st.Counts, crashes.Load())
		}
		time.Sleep(100 * time.Millisecond) // polling the database for the condition, not waiting for time to pass
	}
	cancel()
	wg.Wait()

	// No effect twice; a compensated saga undid every effect; a completed one undid none.
	var bad int
	rows, err := db.Pool.Query(ctx, `
SELECT i.id, i.status, e.step, count(*) FILTER (WHERE e.op = 'forward'), count(*) FILTER (WHERE e.op = 'compensate')
FROM sagabox.saga_instances i JOIN "effects" e ON e.saga_id = i.id GROUP BY 1, 2, 3`)
	if err != nil {
		t.Fatal(err)
	}
	var id uuid.UUID
	var status, step string
	var fwd, comp int
	_, err = pgx.ForEachRow(rows, []any{&id, &status, &step, &fwd, &comp}, func() error {
		ok := fwd <= 1 && comp <= 1 && (status == "completed" && comp == 0 && fwd == 1 || status == "compensated" && comp == fwd)
		if !ok && bad < 5 {
			t.Errorf("saga %s (%s) step %s: %d forward, %d compensate", id, status, step, fwd, comp)
		}
		if !ok {
			bad++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var completed, finals, dupFinals int
	err = db.Pool.QueryRow(ctx, `
SELECT (SELECT count(*) FROM sagabox.saga_instances WHERE status = 'completed'),
       (SELECT count(*) FROM sagabox.saga_events WHERE type IN ('saga_completed', 'saga_compensated')),
       (SELECT count(*) FROM (SELECT saga_id FROM sagabox.saga_events WHERE type IN ('saga_completed', 'saga_compensated') GROUP BY 1 HAVING count(*) > 1) d)`).
		Scan(&completed, &finals, &dupFinals)
	if err != nil {
		t.Fatal(err)
	}
	if finals != sagas || dupFinals != 0 {
		t.Fatalf("%d final events for %d sagas (%d sagas finished twice)", finals, sagas, dupFinals)
	}
	if completed < sagas*3/7-20 {
		t.Errorf("only %d sagas completed; about %d should have", completed, sagas*3/7)
	}
	if crashes.Load() < 3 {
		t.Errorf("only %d crashes injected; the test proves little", crashes.Load())
	}
	t.Logf("%d sagas: %d completed, %d compensated; orchestrator crashed %d times (%d mid-transaction)",
		sagas, completed, sagas-completed, crashes.Load(), midTx.Load())
}
