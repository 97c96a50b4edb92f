//go:build integration

package integration

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"sync"
	"testing"
	"time"
)

const (
	partitions  = 6
	deliverWait = 3 * time.Minute
)

type relayEnv struct {
	pg       *PG
	broker   *Broker
	topic    string
	keys     []string
	producer *Producer
	col      *Collector
}

// setup starts a PostgreSQL and a broker container of the test's own (faults hit one test
// only), a topic, a producer and a collector reading the topic from the start.
func setup(t *testing.T, nkeys int) *relayEnv {
	t.Helper()
	e := &relayEnv{}
	e.pg, e.broker = startContainers(t)
	e.topic = fmt.Sprintf("it.%s", sanitize(t.Name()))
	e.broker.CreateTopic(t, e.topic, partitions)
	for i := range nkeys {
		e.keys = append(e.keys, fmt.Sprintf("key-%03d", i))
	}
	e.producer = newProducer(t, e.pg)
	e.col = collect(t, e.broker, e.topic, partitions)
	return e
}

func sanitize(s string) string {
	b := []byte(s)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			b[i] = '-'
		}
	}
	return string(b)
}

// produce enqueues n messages in the background; the returned func blocks until they are
// committed and fails t if the producer failed.
func (e *relayEnv) produce(t *testing.T, n, perTx int) (wait func()) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	errc := make(chan error, 1)
	go func() { errc <- e.producer.Enqueue(ctx, e.pg, e.topic, e.keys, n, perTx) }()
	var err error
	done := sync.OnceFunc(func() { err = <-errc; cancel() })
	t.Cleanup(func() { cancel(); done() }) // no producer left running after the test
	return func() {
		t.Helper()
		done()
		if err != nil {
			t.Fatalf("producer: %v", err)
		}
	}
}

// waitProgress waits until at least n messages were read back from Kafka.
func (e *relayEnv) waitProgress(t *testing.T, n int) {
	t.Helper()
	waitFor(t, deliverWait, fmt.Sprintf("%d messages in Kafka", n), func() error {
		if got := len(e.col.snapshot()); got < n {
			return fmt.Errorf("%d so far", got)
		}
		return nil
	})
}

// finish waits for every committed message and checks the invariants.
func (e *relayEnv) finish(t *testing.T) Report {
	t.Helper()
	e.col.WaitAll(t, e.producer, deliverWait, 45*time.Second)
	rep := e.col.Check(e.producer.Committed(t, e.pg))
	requireInvariants(t, rep)
	return rep
}

func TestRelayEndToEnd(t *testing.T) {
	t.Parallel()
	e := setup(t, 20)
	startRelay(t, "relay", e.pg, e.broker)
	e.produce(t, 2000, 20)()
	e.finish(t)
}

// TestRelayKilledMidBatch: a relay publishing a backlog gets SIGKILL with a batch that
// Kafka acknowledged but the relay has not settled (deleted) yet; a new relay must publish
// the rest, in order per key, and publish that batch again rather than lose it.
//
// To hit that window every run, the test holds a SHARE lock on the outbox table: claims
// (plain reads) and publishing go on, the settling DELETE waits. Once Kafka holds more
// messages than were settled and a settle waits on the lock, a batch is in flight: the
// relay is killed and every session of it terminated, as when the relay's host dies (a
// DELETE the server already received, or receives from the dead relay's socket buffers,
// would otherwise still run once the lock goes, and nothing would be redelivered).
func TestRelayKilledMidBatch(t *testing.T) {
	t.Parallel()
	e := setup(t, 50)
	const backlog = 30000
	e.produce(t, backlog, 500)()
	// The relay's sessions carry its name, to be terminated with it.
	const appName = "sagabox-it-relay-1"
	pg1 := *e.pg
	pg1.URL = withApplicationName(t, e.pg.URL, appName)
	r1 := startRelay(t, "relay-1", &pg1, e.broker)
	e.waitProgress(t, backlog/10)

	ctx := context.Background()
	lock, err := e.pg.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Rollback(ctx)
	if _, err := lock.Exec(ctx, `LOCK TABLE "sagabox"."outbox_messages" IN SHARE MODE`); err != nil {
		t.Fatalf("lock the outbox: %v", err)
	}
	pending, err := pendingOutbox(ctx, e.pg)
	if err != nil {
		t.Fatal(err)
	}
	settled := backlog - pending // cannot grow while the lock is held
	// Kafka holding more than was settled is not enough: the relay settles in the
	// background, so its DELETE may not have reached the server yet, and a kill then
	// leaves no session to terminate. Wait for the DELETE to wait on the lock.
	waitFor(t, time.Minute, "a published batch waiting to be settled", func() error {
		if n := e.col.distinct(); n <= settled {
			return fmt.Errorf("%d distinct messages in Kafka, %d settled", n, settled)
		}
		var waiting int
		if err := lock.QueryRow(ctx, `SELECT count(*) FROM pg_locks
			WHERE NOT "granted" AND "relation" = '"sagabox"."outbox_messages"'::regclass`).Scan(&waiting); err != nil {
			return err
		}
		if waiting == 0 {
			return errors.New("published, but no settle waits on the lock yet")
		}
		return nil
	})
	r1.Kill(t)
	inFlight := e.col.distinct() - settled
	// Every session of the dead relay, each waited for (up to 10 s) until it is gone.
	var terminated int
	if err := lock.QueryRow(ctx, `SELECT count(*) FILTER (WHERE pg_terminate_backend("pid", 10000)) FROM pg_stat_activity
		WHERE "application_name" = $1`, appName).Scan(&terminated); err != nil || terminated == 0 {
		t.Fatalf("terminate the dead relay's sessions: %d terminated, %v", terminated, err)
	}
	if err := lock.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("killed with %d of %d rows settled and %d more published but unsettled", settled, backlog, inFlight)

	startRelay(t, "relay-2", e.pg, e.broker)
	rep := e.finish(t)
	t.Logf("redelivered after the kill: %d", rep.Duplicates)
	if rep.Duplicates < inFlight {
		t.Errorf("%d messages were published but unsettled when the relay died, yet only %d were delivered again: the new relay skipped rows it had no proof of", inFlight, rep.Duplicates)
	}
}

// TestTwoRelaysOneKilled: two relays share the shards while producers write; one gets
// SIGKILL and the survivor must take its shards over.
func TestTwoRelaysOneKilled(t *testing.T) {
	t.Parallel()
	e := setup(t, 64)
	// The relay's sessions carry its name, to be terminated with it.
	const appName = "sagabox-it-relay-1"
	pg1 := *e.pg
	pg1.URL = withApplicationName(t, e.pg.URL, appName)
	r1 := startRelay(t, "relay-1", &pg1, e.broker)
	r2 := startRelay(t, "relay-2", e.pg, e.broker)
	wait := e.produce(t, 20000, 50)
	e.waitProgress(t, 3000)
	r1.Kill(t)
	killedAt := time.Now()
	wait()
	e.finish(t)
	t.Logf("all delivered %s after the kill", time.Since(killedAt).Round(time.Millisecond))
	if done, err := r2.Exited(); done {
		t.Errorf("the surviving relay exited: %v", err)
	}
}

// faultMidRun runs one relay while a producer commits n messages, injects fault once
// 2000 messages reached Kafka, then checks the invariants and that the relay survived.
func faultMidRun(t *testing.T, n int, fault func(e *relayEnv)) {
	t.Helper()
	e := setup(t, 32)
	r := startRelay(t, "relay", e.pg, e.broker)
	wait := e.produce(t, n, 50)
	e.waitProgress(t, 2000)
	fault(e)
	wait()
	e.finish(t)
	if done, err := r.Exited(); done {
		t.Errorf("the relay exited instead of riding out the fault: %v", err)
	}
}

// TestPostgresRestartedMidRun: the PostgreSQL container restarts while the relay publishes
// and producers write; the relay must reconnect by itself.
func TestPostgresRestartedMidRun(t *testing.T) {
	t.Parallel()
	faultMidRun(t, 12000, func(e *relayEnv) {
		e.pg.Restart(t)
		t.Log("PostgreSQL restarted")
	})
}

// TestBrokerStopped20s: the broker is down for 20 s while producers keep writing; the relay
// must back off, keep every row, and publish them once the broker is back.
func TestBrokerStopped20s(t *testing.T) {
	t.Parallel()
	faultMidRun(t, 12000, func(e *relayEnv) {
		e.broker.Stop(t)
		stoppedAt := time.Now()
		<-time.After(20 * time.Second) // the fault's duration, not a wait for a condition
		committed := e.producer.Total()
		e.broker.Start(t)
		t.Logf("broker down %s; %d messages committed by then", time.Since(stoppedAt).Round(time.Second), committed)
	})
}

// withApplicationName returns rawURL with its sessions named name (application_name).
func withApplicationName(t testing.TB, rawURL, name string) string {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set("application_name", name)
	u.RawQuery = q.Encode()
	return u.String()
}
