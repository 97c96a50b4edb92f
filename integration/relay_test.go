//go:build integration

package integration

import (
	"context"
	"fmt"
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
	pgc := make(chan *PG, 1)
	go func() { pgc <- startPostgres(t) }() // the two containers start in parallel
	e.broker = startBroker(t)
	e.pg = <-pgc
	if e.pg == nil {
		t.FailNow()
	}
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
	e.col.WaitAll(t, e.producer, deliverWait)
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

// TestRelayKilledMidBatch: a relay publishing a backlog gets SIGKILL while rows are in
// flight; a new relay must publish the rest, in order per key.
func TestRelayKilledMidBatch(t *testing.T) {
	t.Parallel()
	e := setup(t, 50)
	const backlog = 30000
	e.produce(t, backlog, 500)()
	r1 := startRelay(t, "relay-1", e.pg, e.broker)
	e.waitProgress(t, backlog/10)
	r1.Kill(t)
	ctx := context.Background()
	pending, err := pendingOutbox(ctx, e.pg)
	if err != nil {
		t.Fatal(err)
	}
	if pending == 0 {
		t.Fatalf("the relay published the whole backlog of %d before it was killed: the fault hit nothing; raise the backlog", backlog)
	}
	t.Logf("killed with %d of %d rows pending, %d deliveries read", pending, backlog, len(e.col.snapshot()))
	startRelay(t, "relay-2", e.pg, e.broker)
	rep := e.finish(t)
	t.Logf("redelivered after the kill: %d", rep.Duplicates)
}

// TestTwoRelaysOneKilled: two relays share the shards while producers write; one gets
// SIGKILL and the survivor must take its shards over.
func TestTwoRelaysOneKilled(t *testing.T) {
	t.Parallel()
	e := setup(t, 64)
	r1 := startRelay(t, "relay-1", e.pg, e.broker)
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
