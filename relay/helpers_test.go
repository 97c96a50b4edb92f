package relay_test

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/segmentio/kafka-go"
	"go.uber.org/goleak"

	"github.com/sagabox/sagabox/internal/kafkatest"
	"github.com/sagabox/sagabox/internal/testenv"
	"github.com/sagabox/sagabox/outbox"
	"github.com/sagabox/sagabox/relay"
	"github.com/sagabox/sagabox/relay/kafkapub"
)

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		os.Exit(runChild())
	}
	switch os.Getenv(benchChildEnv) {
	case "broker":
		os.Exit(runBenchBroker())
	case "relay":
		os.Exit(runBenchRelay())
	}
	code := testenv.Run(m)
	closeBenchServer()
	if code == 0 {
		if err := goleak.Find(
			// kafka-go's DefaultTransport (used by the test helpers' kafka.Client
			// and testenv.CreateTopic) keeps connection pools it never stops.
			goleak.IgnoreTopFunction("github.com/segmentio/kafka-go.(*connPool).discover"),
			goleak.IgnoreTopFunction("github.com/segmentio/kafka-go/protocol.(*Conn).readLoop"),
			goleak.IgnoreAnyFunction("github.com/segmentio/kafka-go.(*conn).run"),
			goleak.IgnoreAnyFunction("github.com/segmentio/kafka-go.(*connGroup).connect.func1"),
		); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// env is what a relay test works with.
type env struct {
	db    *testenv.DB
	kafka *testenv.Kafka
	topic string
	pub   *kafkapub.Publisher
}

func setup(t *testing.T, partitions int) *env {
	t.Helper()
	e := &env{db: testenv.NewDB(t), kafka: testenv.NewKafka(t), topic: testenv.Topic("relay")}
	e.kafka.CreateTopic(t, e.topic, partitions)
	e.pub = newPublisher(t, kafkapub.Config{Brokers: e.kafka.Brokers})
	return e
}

func newPublisher(t *testing.T, cfg kafkapub.Config) *kafkapub.Publisher {
	t.Helper()
	pub, err := kafkapub.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pub.Close() })
	return pub
}

// fastConfig keeps tests quick: short polls, leases and backoffs.
func fastConfig() relay.Config {
	return relay.Config{
		PollInterval:      50 * time.Millisecond,
		LeaseTTL:          2 * time.Second,
		HeartbeatInterval: 200 * time.Millisecond,
		PublishTimeout:    time.Second,
		ErrorBackoffMin:   20 * time.Millisecond,
		ErrorBackoffMax:   200 * time.Millisecond,
		RetryBackoffMin:   20 * time.Millisecond,
		RetryBackoffMax:   100 * time.Millisecond,
	}
}

// startRelay runs a relay until the test ends (or until stop is called) and
// waits for Run to return.
func startRelay(t *testing.T, pool *pgxpool.Pool, pub relay.Publisher, cfg relay.Config) (r *relay.Relay, stop func()) {
	t.Helper()
	r, err := relay.New(pool, pub, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("relay %s: Run: %v", r.ID(), err)
			}
		})
	}
	t.Cleanup(stop)
	return r, stop
}

// enqueue commits msgs in one transaction.
func enqueue(t *testing.T, pool *pgxpool.Pool, msgs ...outbox.Message) {
	t.Helper()
	ctx := context.Background()
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := outbox.Enqueue(ctx, tx, msgs...); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
}

// topicSize sums the partitions' end offsets: every record ever written.
func topicSize(t *testing.T, brokers []string, topic string) int {
	t.Helper()
	n := 0
	for _, end := range kafkatest.Ends(t, brokers, topic, kafkatest.Partitions(t, brokers, topic)) {
		n += int(end)
	}
	return n
}

// payload encodes a key and its per-key sequence number.
func payload(key string, n int) []byte { return []byte(key + ":" + strconv.Itoa(n)) }

// checkOrder asserts that every key's messages 1..perKey arrived, the first
// delivery of each in order. Redeliveries (at-least-once) are allowed when dups is set.
func checkOrder(t *testing.T, parts [][]kafka.Message, perKey map[string]int, dups bool) {
	t.Helper()
	next := map[string]int{}
	seen := 0
	for _, recs := range parts {
		for _, m := range recs {
			seen++
			key, nStr, ok := strings.Cut(string(m.Value), ":")
			n, err := strconv.Atoi(nStr)
			if !ok || err != nil || key != string(m.Key) {
				t.Fatalf("record %q with key %q is not one of ours", m.Value, m.Key)
			}
			switch {
			case n == next[key]+1:
				next[key] = n
			case n <= next[key] && dups:
				// an earlier message published again after a takeover
			default:
				t.Fatalf("key %s: got message %d after %d: per-key order broken", key, n, next[key])
			}
		}
	}
	total := 0
	for key, want := range perKey {
		total += want
		if next[key] != want {
			t.Errorf("key %s: last message %d, want %d", key, next[key], want)
		}
	}
	if !dups && seen != total {
		t.Errorf("read %d records, want exactly %d", seen, total)
	}
}

func countRows(t *testing.T, pool *pgxpool.Pool, where string) int {
	t.Helper()
	var n int
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM "sagabox"."outbox_messages" WHERE `+where).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// waitFor polls cond until it holds or the timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	kafkatest.Poll(t, timeout, cond, func() string { return what })
}
