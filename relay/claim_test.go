package relay_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagabox/sagabox/internal/kafkatest"
	"github.com/sagabox/sagabox/internal/testenv"
	"github.com/sagabox/sagabox/outbox"
	"github.com/sagabox/sagabox/relay"
	"github.com/sagabox/sagabox/relay/kafkapub"
)

// TestUnkeyedRowsWaitingForRetryDoNotStarveTheirLoop: a batch's worth of unkeyed
// rows waiting for a retry (say, to a topic not created yet) must not fill the
// claim's scan, or their loop publishes nothing else until they are dead-lettered.
// Rows without a key hold nothing back.
func TestUnkeyedRowsWaitingForRetryDoNotStarveTheirLoop(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := setup(t, 1)
	cfg := fastConfig()
	cfg.BatchSize, cfg.Workers = 5, 1
	r := steppedRelayConfig(t, e, cfg)

	waiting := make([]outbox.Message, cfg.BatchSize)
	for i := range waiting {
		waiting[i] = outbox.Message{Topic: "not-created-yet", Payload: []byte("unkeyed")}
	}
	enqueue(t, e.db.Pool, waiting...)
	// As after a failed publish: one attempt spent, the retry an hour away.
	if _, err := e.db.Pool.Exec(ctx, `UPDATE "sagabox"."outbox_messages"
SET "attempts" = 1, "last_error" = 'topic does not exist', "next_attempt_at" = now() + interval '1 hour'`); err != nil {
		t.Fatal(err)
	}
	enqueue(t, e.db.Pool, outbox.Message{Topic: e.topic, Key: "k", Payload: payload("k", 1)})
	cycleUntil(t, r, 1)
	checkOrder(t, kafkatest.ReadTopic(t, e.kafka.Brokers, e.topic, 1, 30*time.Second), map[string]int{"k": 1}, false)
}

// TestUnpublishableMessageDeadLetteredAtOnce: a row the publisher can never send as
// it is (larger than its MaxMessageBytes, written by a producer with a higher
// limit) is dead-lettered at its first failure, not retried MaxAttempts times
// while it blocks its key; the key's next message then flows.
func TestUnpublishableMessageDeadLetteredAtOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := setup(t, 1)
	r := steppedRelay(t, e)
	lax, err := outbox.New(outbox.Config{MaxMessageBytes: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if err := lax.Enqueue(ctx, e.db.Pool,
		outbox.Message{Topic: e.topic, Key: "k", Payload: make([]byte, 2<<20)},
		outbox.Message{Topic: e.topic, Key: "k", Payload: payload("k", 1)}); err != nil {
		t.Fatal(err)
	}
	cycleUntil(t, r, 1)
	if n := countRows(t, e.db.Pool, `"dead_at" IS NOT NULL AND "attempts" = 1 AND "last_error" LIKE '%never be published%'`); n != 1 {
		t.Fatalf("%d rows dead-lettered after one attempt; want the oversized one", n)
	}
	cycleUntil(t, r, 1)
	checkOrder(t, kafkatest.ReadTopic(t, e.kafka.Brokers, e.topic, 1, 30*time.Second), map[string]int{"k": 1}, false)
}

// TestRowWithNonStringHeadersDeadLetteredOthersFlow: a row written by another
// producer with header values that are not strings cannot become a Message. It
// must be dead-lettered with the reason, not fail every claim of its loop forever.
func TestRowWithNonStringHeadersDeadLetteredOthersFlow(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := setup(t, 1)
	r := steppedRelay(t, e)
	if _, err := e.db.Pool.Exec(ctx, `INSERT INTO "sagabox"."outbox_messages" ("id", "topic", "key", "payload", "headers")
VALUES (gen_random_uuid(), $1, 'k', '\x00', '{"retries": 3, "tags": ["a"]}')`, e.topic); err != nil {
		t.Fatal(err)
	}
	enqueue(t, e.db.Pool, outbox.Message{Topic: e.topic, Key: "k", Payload: payload("k", 1)},
		outbox.Message{Topic: e.topic, Key: "j", Payload: payload("j", 1)})
	cycleUntil(t, r, 2)
	if n := countRows(t, e.db.Pool, `"dead_at" IS NOT NULL AND "last_error" LIKE '%headers%'`); n != 1 {
		t.Fatalf("%d rows dead-lettered for their headers; want 1", n)
	}
	checkOrder(t, kafkatest.ReadTopic(t, e.kafka.Brokers, e.topic, 2, 30*time.Second), map[string]int{"k": 1, "j": 1}, false)
}

// TestWorkersBeyondThePoolRejected: every publish loop holds a pool connection
// through its claim and settle; with Workers >= MaxConns the heartbeat waits for
// one, and leases expire under load. New must refuse that configuration.
func TestWorkersBeyondThePoolRejected(t *testing.T) {
	t.Parallel()
	db := testenv.NewDB(t)
	pool, err := pgxpool.New(context.Background(), db.URL+"&pool_max_conns=2")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	pub := newPublisher(t, kafkapub.Config{Brokers: []string{"127.0.0.1:1"}})
	cfg := fastConfig()
	cfg.Workers = 2
	_, err = relay.New(pool, pub, cfg)
	if !errors.Is(err, relay.ErrInvalidConfig) || !strings.Contains(err.Error(), "MaxConns") {
		t.Fatalf("New with Workers 2 on a pool of 2: err = %v; want ErrInvalidConfig naming MaxConns", err)
	}
	cfg.Workers = 1
	if _, err := relay.New(pool, pub, cfg); err != nil {
		t.Fatalf("Workers 1 on a pool of 2: %v", err)
	}
}

// TestPoolSmallerThanPipeliningWarns: with pipelining a publish loop uses two
// connections at once (the claim running ahead, the settle before), plus one for
// heartbeats and one for the probe. New's check (Workers < MaxConns) predates
// that; a pool between the two works, but the loops queue for connections, and
// Run must say so.
func TestPoolSmallerThanPipeliningWarns(t *testing.T) {
	t.Parallel()
	db := testenv.NewDB(t)
	for _, c := range []struct {
		conns int
		warn  bool
	}{{5, true}, {6, false}} {
		pool, err := pgxpool.New(context.Background(), db.URL+"&pool_max_conns="+strconv.Itoa(c.conns))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(pool.Close)
		var logs testenv.SyncBuffer
		cfg := fastConfig()
		cfg.Workers = 2
		cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
		_, stop := startRelay(t, pool, newPublisher(t, kafkapub.Config{Brokers: []string{"127.0.0.1:1"}}), cfg)
		waitFor(t, 30*time.Second, "the relay to start", func() bool { return strings.Contains(logs.String(), "relay: started") })
		stop()
		if got := strings.Contains(logs.String(), "pool is smaller"); got != c.warn {
			t.Fatalf("Workers 2 on a pool of %d: warned %v, want %v; logs:\n%s", c.conns, got, c.warn, logs.String())
		}
	}
}

// TestClaimBlockedByALockGivesUp: a claim stuck behind a lock (say, an operator's
// LOCK TABLE or a migration) must give up within PublishTimeout rather than hold
// its loop, and the lease handover that waits for it, for as long as the lock lasts.
func TestClaimBlockedByALockGivesUp(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := setup(t, 1)
	r := steppedRelay(t, e)
	enqueue(t, e.db.Pool, outbox.Message{Topic: e.topic, Key: "k", Payload: payload("k", 1)})
	lock, err := e.db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Rollback(ctx)
	if _, err := lock.Exec(ctx, `LOCK TABLE "sagabox"."outbox_messages" IN ACCESS EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := relay.Cycle(ctx, r); done <- err }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("a claim behind an exclusive lock succeeded")
		}
	case <-time.After(30 * time.Second): // PublishTimeout is 1s
		_ = lock.Rollback(ctx)
		<-done
		t.Fatal("the claim waited 30s for the lock; want it to give up after PublishTimeout")
	}
}

// TestLongTransactionHoldingBackIsNamed: an open transaction keeps vacuum from
// removing the rows published since it began. The relay reports how long through
// Hooks.HeldBack and logs which backend it is (pid, start, query) past
// HoldWarnAfter.
//
// Not parallel: the oldest transaction is the test cluster's (the xmin is
// cluster-wide), so parallel tests' own open transactions could be the one named.
func TestLongTransactionHoldingBackIsNamed(t *testing.T) {
	ctx := context.Background()
	e := setup(t, 1)
	holder, err := e.db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Rollback(ctx)
	var pid int32
	if err := holder.QueryRow(ctx, `SELECT pg_backend_pid(), pg_current_xact_id()::text /* the holder */`).Scan(&pid, new(string)); err != nil {
		t.Fatal(err)
	}
	var logs testenv.SyncBuffer
	var held atomic.Int64
	cfg := fastConfig()
	cfg.HoldWarnAfter = time.Millisecond
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	cfg.Hooks.HeldBack = func(d time.Duration) { held.Store(int64(d)) }
	startRelay(t, e.db.Pool, e.pub, cfg)
	kafkatest.Poll(t, 20*time.Second, func() bool {
		return held.Load() > 0 && strings.Contains(logs.String(), fmt.Sprintf("pid=%d", pid))
	}, func() string {
		return fmt.Sprintf("holder pid %d logged and reported (held %v); logs:\n%s", pid, time.Duration(held.Load()), logs.String())
	})
	if !strings.Contains(logs.String(), "keeps vacuum from removing") {
		t.Fatalf("log does not say what the transaction does:\n%s", logs.String())
	}
}
