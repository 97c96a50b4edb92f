package relay_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/segmentio/kafka-go"

	"github.com/sagabox/sagabox/internal/kafkatest"
	"github.com/sagabox/sagabox/internal/testenv"
	"github.com/sagabox/sagabox/outbox"
	"github.com/sagabox/sagabox/relay"
	"github.com/sagabox/sagabox/relay/kafkapub"
)

func TestConfig(t *testing.T) {
	t.Parallel()
	db := testenv.NewDB(t)
	pub := newPublisher(t, kafkapub.Config{Brokers: []string{"127.0.0.1:1"}})

	t.Run("ZeroValueIsValid", func(t *testing.T) {
		t.Parallel()
		r, err := relay.New(db.Pool, pub, relay.Config{})
		if err != nil || r.ID() == "" {
			t.Fatalf("New with defaults: %v (id %q)", err, r.ID())
		}
	})

	t.Run("ErrorsAreJoinedAndNamed", func(t *testing.T) {
		t.Parallel()
		_, err := relay.New(nil, nil, relay.Config{
			BatchSize: -1, MaxBatchBytes: -1, MaxAttempts: -1, RetryBackoffMin: time.Minute, RetryBackoffMax: time.Second,
			LeaseTTL: time.Second, HeartbeatInterval: time.Second,
		})
		if !errors.Is(err, relay.ErrInvalidConfig) {
			t.Fatalf("err = %v, want ErrInvalidConfig", err)
		}
		for _, want := range []string{"pool is nil", "Publisher is nil", "BatchSize", "MaxBatchBytes", "MaxAttempts", "RetryBackoffMax", "LeaseTTL"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error does not mention %s:\n%v", want, err)
			}
		}
	})

	// The relay checked only the length of Schema; it now applies the rule every package shares.
	t.Run("SchemaNameValidatedLikeEveryPackage", func(t *testing.T) {
		t.Parallel()
		_, err := relay.New(db.Pool, pub, relay.Config{Schema: "Has-Dash"})
		if !errors.Is(err, relay.ErrInvalidConfig) || !strings.Contains(err.Error(), "invalid schema name") {
			t.Fatalf("err = %v, want ErrInvalidConfig with the shared invalid schema name error", err)
		}
	})

	t.Run("PublishTimeoutMustFitTheLease", func(t *testing.T) {
		t.Parallel()
		_, err := relay.New(db.Pool, pub, relay.Config{LeaseTTL: 4 * time.Second, HeartbeatInterval: time.Second, PublishTimeout: 3 * time.Second})
		if err == nil || !strings.Contains(err.Error(), "PublishTimeout") {
			t.Fatalf("err = %v, want a PublishTimeout error", err)
		}
	})

	t.Run("BackoffDoublesAndCaps", func(t *testing.T) {
		t.Parallel()
		for n, want := range map[int]time.Duration{1: time.Second, 2: 2 * time.Second, 4: 8 * time.Second, 30: time.Minute} {
			got := relay.Backoff(time.Second, time.Minute, n)
			if got < want*8/10 || got > want*12/10 {
				t.Errorf("backoff(%d) = %v, want %v ±20%%", n, got, want)
			}
		}
	})
}

func TestPublish(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("CommitPublishesExactlyTheEnqueuedMessages", func(t *testing.T) {
		t.Parallel()
		e := setup(t, 3)
		startRelay(t, e.db.Pool, e.pub, fastConfig())

		// A rolled-back transaction: nothing of it may ever reach Kafka.
		tx, err := e.db.Pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := outbox.Enqueue(ctx, tx, outbox.Message{Topic: e.topic, Key: "ghost", Payload: []byte("rolled back")}); err != nil {
			t.Fatal(err)
		}
		if err := tx.Rollback(ctx); err != nil {
			t.Fatal(err)
		}

		msgs := []outbox.Message{
			{Topic: e.topic, Key: "order-1", Payload: []byte(`{"n":1}`), Headers: map[string]string{"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "type": "created"}},
			{Topic: e.topic, Key: "order-1", Payload: []byte(`{"n":2}`)},
			{Topic: e.topic, Payload: []byte(`no key`)},
		}
		enqueue(t, e.db.Pool, msgs...)
		parts := kafkatest.ReadTopic(t, e.kafka.Brokers, e.topic, len(msgs), 30*time.Second)

		got := map[string]kafka.Message{}
		for _, recs := range parts {
			for _, m := range recs {
				got[headerValue(m, outbox.HeaderMessageID)] = m
			}
		}
		for _, want := range msgs {
			m, ok := got[want.ID.String()]
			if !ok {
				t.Fatalf("message %s not published (got %d records)", want.ID, len(got))
			}
			if string(m.Key) != want.Key || string(m.Value) != string(want.Payload) {
				t.Errorf("record key %q value %q, want %q %q", m.Key, m.Value, want.Key, want.Payload)
			}
			if len(m.Headers) != len(want.Headers)+1 {
				t.Errorf("record has %d headers, want %d", len(m.Headers), len(want.Headers)+1)
			}
			for k, v := range want.Headers {
				if headerValue(m, k) != v {
					t.Errorf("header %s = %q, want %q", k, headerValue(m, k), v)
				}
			}
		}
		// Same key, same partition, in order.
		p1, p2 := got[msgs[0].ID.String()], got[msgs[1].ID.String()]
		if p1.Partition != p2.Partition || p1.Offset > p2.Offset {
			t.Errorf("order-1's messages at %d/%d and %d/%d: not in order on one partition", p1.Partition, p1.Offset, p2.Partition, p2.Offset)
		}
		waitFor(t, 10*time.Second, "published rows deleted", func() bool { return countRows(t, e.db.Pool, "true") == 0 })
		if n := topicSize(t, e.kafka.Brokers, e.topic); n != len(msgs) {
			t.Fatalf("topic holds %d records, want exactly %d (the rolled-back one must not be there)", n, len(msgs))
		}
	})

	t.Run("NotMigratedSchemaFailsFast", func(t *testing.T) {
		t.Parallel()
		db := testenv.NewDB(t)
		pub := newPublisher(t, kafkapub.Config{Brokers: []string{"127.0.0.1:1"}})
		r, err := relay.New(db.Pool, pub, relay.Config{Schema: "nowhere"})
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Run(ctx); !errors.Is(err, relay.ErrNotMigrated) || !strings.Contains(err.Error(), "migrate up") {
			t.Fatalf("Run = %v, want ErrNotMigrated telling to migrate", err)
		}
	})

	t.Run("ShutdownReleasesLeases", func(t *testing.T) {
		t.Parallel()
		e := setup(t, 1)
		r, stop := startRelay(t, e.db.Pool, e.pub, fastConfig())
		owned := func() int {
			var n int
			if err := e.db.Pool.QueryRow(ctx, `SELECT count(*) FROM "sagabox"."outbox_leases" WHERE "owner" = $1`, r.ID()).Scan(&n); err != nil {
				t.Fatal(err)
			}
			return n
		}
		waitFor(t, 10*time.Second, "the relay to own every shard", func() bool { return owned() == relay.Shards })
		stop()
		if n := owned(); n != 0 {
			t.Fatalf("%d leases still held after Run returned", n)
		}
	})
}

func headerValue(m kafka.Message, name string) string {
	for _, h := range m.Headers {
		if h.Key == name {
			return string(h.Value)
		}
	}
	return ""
}

// steppedRelay returns a relay that owns every shard and runs only when the test
// calls relay.Cycle.
func steppedRelay(t *testing.T, e *env) *relay.Relay {
	t.Helper()
	return steppedRelayConfig(t, e, fastConfig())
}

// steppedRelayConfig is steppedRelay with cfg.
func steppedRelayConfig(t *testing.T, e *env, cfg relay.Config) *relay.Relay {
	t.Helper()
	r, err := relay.New(e.db.Pool, e.pub, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := relay.Heartbeat(context.Background(), r); err != nil {
		t.Fatal(err)
	}
	if n := relay.OwnedShards(r); n != relay.Shards {
		t.Fatalf("a lone relay owns %d shards, want all %d", n, relay.Shards)
	}
	return r
}

// cycleOnce renews the leases, as the lease loop would (a cycle uses only shards
// whose lease outlasts PublishTimeout), runs one cycle and returns how many rows
// it claimed.
func cycleOnce(t *testing.T, r *relay.Relay) int {
	t.Helper()
	if err := relay.Heartbeat(context.Background(), r); err != nil {
		t.Fatal(err)
	}
	n, err := relay.Cycle(context.Background(), r)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// cycleUntil runs cycles until want rows were claimed.
func cycleUntil(t *testing.T, r *relay.Relay, want int) {
	t.Helper()
	claimed := 0
	waitFor(t, 10*time.Second, fmt.Sprintf("%d rows to be claimed", want), func() bool {
		claimed += cycleOnce(t, r)
		return claimed >= want
	})
}

// enqueueOpen enqueues msg in a transaction it leaves open (rolled back at the
// test's end unless committed).
func enqueueOpen(t *testing.T, pool *pgxpool.Pool, msg outbox.Message) pgx.Tx {
	t.Helper()
	ctx := context.Background()
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tx.Rollback(ctx) })
	if err := outbox.Enqueue(ctx, tx, msg); err != nil {
		t.Fatal(err)
	}
	return tx
}

// readValues reads n records of topic and returns their values in partition order.
func readValues(t *testing.T, brokers []string, topic string, n int) []string {
	t.Helper()
	var got []string
	for _, recs := range kafkatest.ReadTopic(t, brokers, topic, n, 30*time.Second) {
		for _, m := range recs {
			got = append(got, string(m.Value))
		}
	}
	return got
}

// TestOpenTransactionDoesNotHoldBackLaterCommits drives one relay step by step: a
// row committed while an older transaction is still open goes out at once, and a
// key's rows go out in the order their transactions committed. The relay used to
// publish only rows of transactions older than every open one (the snapshot's
// xmin, cluster-wide), so any open transaction, of any database on the server,
// held every later commit back until it ended.
func TestOpenTransactionDoesNotHoldBackLaterCommits(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := setup(t, 1)
	r := steppedRelay(t, e)

	older := enqueueOpen(t, e.db.Pool, outbox.Message{Topic: e.topic, Key: "k", Payload: []byte("k:second")})
	// The younger transaction inserts later and commits first.
	enqueue(t, e.db.Pool, outbox.Message{Topic: e.topic, Key: "k", Payload: []byte("k:first")})
	if n := cycleOnce(t, r); n != 1 {
		t.Fatalf("cycle while an older transaction is open claimed %d; want 1, the committed row", n)
	}
	if err := older.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	cycleUntil(t, r, 1)
	if got := readValues(t, e.kafka.Brokers, e.topic, 2); !slices.Equal(got, []string{"k:first", "k:second"}) {
		t.Fatalf("key k read as %q; want commit order [k:first k:second]", got)
	}
}

// TestXidRace covers the case that (txid, seq) order gets wrong: a transaction
// takes its xid before it waits for the key's lock, so the second writer of a key
// can hold the lower xid. The key's order is the order of its commits, which for
// writers that serialise on the key is the order of their inserts; and a third
// transaction left open between the two holds neither back.
func TestXidRace(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := setup(t, 1)
	r := steppedRelay(t, e)
	begin := func() pgx.Tx {
		tx, err := e.db.Pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = tx.Rollback(ctx) })
		if _, err := tx.Exec(ctx, `SELECT pg_current_xact_id()`); err != nil { // take an xid now
			t.Fatal(err)
		}
		return tx
	}
	second := begin()    // lower xid, writes k:2 later
	unrelated := begin() // open between the two, and after both
	first := begin()     // higher xid, writes k:1 first
	if err := outbox.Enqueue(ctx, first, outbox.Message{Topic: e.topic, Key: "k", Payload: payload("k", 1)}); err != nil {
		t.Fatal(err)
	}
	if err := first.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := outbox.Enqueue(ctx, second, outbox.Message{Topic: e.topic, Key: "k", Payload: payload("k", 2)}); err != nil {
		t.Fatal(err)
	}
	if err := second.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	cycleUntil(t, r, 2)
	checkOrder(t, kafkatest.ReadTopic(t, e.kafka.Brokers, e.topic, 2, 30*time.Second), map[string]int{"k": 2}, false)
	if err := unrelated.Commit(ctx); err != nil { // open until both were published
		t.Fatal(err)
	}
}

// produceOrdered runs producers that each take the next number of a key by locking
// its counter row first (so the transaction's xid order is the key's lock order),
// then enqueue that number; some hold their transaction open a little, so commits
// interleave out of insert order across keys.
func produceOrdered(t *testing.T, e *env, keys, producers, perProducer int, stopEarly <-chan struct{}) map[string]int {
	t.Helper()
	ctx := context.Background()
	if _, err := e.db.Pool.Exec(ctx, `CREATE TABLE "counters" ("key" text PRIMARY KEY, "n" int NOT NULL DEFAULT 0)`); err != nil {
		t.Fatal(err)
	}
	for k := range keys {
		if _, err := e.db.Pool.Exec(ctx, `INSERT INTO "counters" ("key") VALUES ($1)`, fmt.Sprintf("key-%d", k)); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	var failed atomic.Value
	for p := range producers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(p), 7))
			for range perProducer {
				key := fmt.Sprintf("key-%d", rng.IntN(keys))
				err := func() error {
					tx, err := e.db.Pool.Begin(ctx)
					if err != nil {
						return err
					}
					defer tx.Rollback(ctx)
					var n int
					if err := tx.QueryRow(ctx, `UPDATE "counters" SET "n" = "n" + 1 WHERE "key" = $1 RETURNING "n"`, key).Scan(&n); err != nil {
						return err
					}
					if err := outbox.Enqueue(ctx, tx, outbox.Message{Topic: e.topic, Key: key, Payload: payload(key, n)}); err != nil {
						return err
					}
					if rng.IntN(4) == 0 { // hold the transaction open: later inserts commit first
						if _, err := tx.Exec(ctx, `SELECT pg_sleep(0.005)`); err != nil {
							return err
						}
					}
					return tx.Commit(ctx)
				}()
				if err != nil {
					failed.Store(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err, _ := failed.Load().(error); err != nil {
		t.Fatal(err)
	}
	perKey := map[string]int{}
	rows, err := e.db.Pool.Query(ctx, `SELECT "key", "n" FROM "counters"`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var k string
		var n int
		if err := rows.Scan(&k, &n); err != nil {
			t.Fatal(err)
		}
		if n > 0 {
			perKey[k] = n
		}
	}
	return perKey
}

func TestPerKeyOrderUnderConcurrentProducers(t *testing.T) {
	t.Parallel()
	e := setup(t, 4)
	startRelay(t, e.db.Pool, e.pub, fastConfig())
	perKey := produceOrdered(t, e, 20, 8, 100, nil)
	checkOrder(t, kafkatest.ReadTopic(t, e.kafka.Brokers, e.topic, 800, 60*time.Second), perKey, false)
}

// TestSeveralRelays runs three relays in this process while producers write; one
// stops half-way and a fourth joins. No message may be lost or overtaken.
func TestSeveralRelays(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := setup(t, 4)
	shardsSeen := make([]atomic.Int64, 4)
	relays := make([]*relay.Relay, 4)
	stops := make([]func(), 4)
	start := func(i int) {
		cfg := fastConfig()
		cfg.BatchSize = 20 // many batches, many chances to interleave
		cfg.Hooks.Shards = func(n int) { shardsSeen[i].Store(int64(n)) }
		relays[i], stops[i] = startRelay(t, e.db.Pool, newPublisher(t, kafkapub.Config{Brokers: e.kafka.Brokers}), cfg)
	}
	for i := range 3 {
		start(i)
	}
	held := func(id string) int {
		var n int
		if err := e.db.Pool.QueryRow(ctx, `SELECT count(*) FROM "sagabox"."outbox_leases" WHERE "owner" = $1 AND "expires_at" > now()`, id).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	// A fair share of 256 among 3 is ceil(256/3) = 86, so 84-86 each.
	waitFor(t, 20*time.Second, "three relays to share the shards fairly", func() bool {
		for i := range 3 {
			if n := held(relays[i].ID()); n < 84 || n > 86 {
				return false
			}
		}
		return true
	})
	var perKey map[string]int
	done := make(chan struct{})
	go func() { defer close(done); perKey = produceOrdered(t, e, 30, 6, 150, nil) }()
	waitFor(t, 30*time.Second, "some messages published", func() bool { return countRows(t, e.db.Pool, "true") < 400 })
	stops[1]() // graceful: its shards are released and taken over
	start(3)
	<-done
	if t.Failed() {
		return
	}
	waitFor(t, 20*time.Second, "the new relay to get a share", func() bool { return shardsSeen[3].Load() > 0 })
	checkOrder(t, kafkatest.ReadTopic(t, e.kafka.Brokers, e.topic, 900, 60*time.Second), perKey, true)
	waitFor(t, 10*time.Second, "the outbox to drain", func() bool { return countRows(t, e.db.Pool, "true") == 0 })
}

// TestFloorNeverPassesARowOfAnOpenTransaction: a loop's runs start after its
// floor, not from the oldest row, once its earlier rows are settled. A row whose
// transaction took its seq early and is still open must not fall below the floor
// before it commits, or it would wait for the next run from the oldest row
// (PollInterval, a minute here).
func TestFloorNeverPassesARowOfAnOpenTransaction(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := setup(t, 1)
	cfg := fastConfig()
	cfg.Workers = 1
	cfg.PollInterval = time.Minute
	cfg.LeaseTTL = 2 * time.Minute
	r := steppedRelayConfig(t, e, cfg)
	late := enqueueOpen(t, e.db.Pool, outbox.Message{Topic: e.topic, Key: "late", Payload: []byte("late:1")})
	var lateSeq int64
	if err := late.QueryRow(ctx, `SELECT max("seq") FROM "sagabox"."outbox_messages"`).Scan(&lateSeq); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 5; i++ {
		enqueue(t, e.db.Pool, outbox.Message{Topic: e.topic, Key: "k", Payload: payload("k", i)})
		cycleUntil(t, r, 1)
		if f := relay.Floor(r, 0); f >= lateSeq {
			t.Fatalf("floor %d passed seq %d of the row of a transaction still open", f, lateSeq)
		}
	}
	if err := late.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	cycleUntil(t, r, 1) // within a minute: from the floor, below the late row
	// The floor moves past it once the transactions open at a clean run have
	// ended: the xmin is cluster-wide, so other tests' transactions may hold it back
	// for a while.
	n := 5
	waitFor(t, 60*time.Second, "the floor past the late row once it was published", func() bool {
		n++
		enqueue(t, e.db.Pool, outbox.Message{Topic: e.topic, Key: "k", Payload: payload("k", n)})
		cycleUntil(t, r, 1)
		return relay.Floor(r, 0) > lateSeq
	})
	checkOrder(t, kafkatest.ReadTopic(t, e.kafka.Brokers, e.topic, n+1, 30*time.Second), map[string]int{"k": n, "late": 1}, false)
}

// refusingPublisher refuses the message with payload refuse, once; every other
// message goes through.
type refusingPublisher struct {
	relay.Publisher
	refuse  string
	refused atomic.Bool
}

func (p *refusingPublisher) Publish(ctx context.Context, msgs []outbox.Message) error {
	i := slices.IndexFunc(msgs, func(m outbox.Message) bool { return string(m.Payload) == p.refuse })
	if i < 0 || !p.refused.CompareAndSwap(false, true) {
		return p.Publisher.Publish(ctx, msgs)
	}
	errs := make(relay.MessageErrors, len(msgs))
	for j := range msgs {
		errs[j] = relay.ErrHeldBack
	}
	errs[i] = errors.New("refused by the broker")
	if i > 0 {
		if err := p.Publisher.Publish(ctx, msgs[:i]); err != nil {
			return err
		}
		for j := range i {
			errs[j] = nil
		}
	}
	return errs
}

// TestFloorDoesNotLetARowPassItsKeysRetry: a row waiting for its retry holds back
// the later rows of its key. While one waits, the floor must not move past it, or
// once its retry is due a run from the floor would find the key's later row and
// not the row itself, and publish them out of order.
func TestFloorDoesNotLetARowPassItsKeysRetry(t *testing.T) {
	t.Parallel()
	e := setup(t, 1)
	cfg := fastConfig()
	cfg.Workers = 1
	cfg.PollInterval = time.Minute
	cfg.LeaseTTL = 2 * time.Minute
	cfg.RetryBackoffMin, cfg.RetryBackoffMax = 2*time.Second, 2*time.Second
	pub := &refusingPublisher{Publisher: e.pub, refuse: "a:1"}
	r, err := relay.New(e.db.Pool, pub, cfg)
	if err != nil {
		t.Fatal(err)
	}
	enqueue(t, e.db.Pool, outbox.Message{Topic: e.topic, Key: "a", Payload: payload("a", 1)})
	cycleUntil(t, r, 1) // refused: waits 2 s for its retry
	for i := 1; i <= 4; i++ {
		enqueue(t, e.db.Pool, outbox.Message{Topic: e.topic, Key: "x", Payload: payload("x", i)})
		cycleUntil(t, r, 1)
	}
	enqueue(t, e.db.Pool, outbox.Message{Topic: e.topic, Key: "a", Payload: payload("a", 2)})
	if f := relay.Floor(r, 0); f != 0 {
		t.Errorf("floor %d while a:1 waits for its retry; want 0", f)
	}
	cycleUntil(t, r, 2) // a:1 once due, then a:2
	checkOrder(t, kafkatest.ReadTopic(t, e.kafka.Brokers, e.topic, 6, 30*time.Second), map[string]int{"a": 2, "x": 4}, false)
}
