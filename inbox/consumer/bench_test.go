package consumer_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/segmentio/kafka-go"

	"github.com/sagabox/sagabox/inbox/consumer"
	"github.com/sagabox/sagabox/internal/kafkatest"
	"github.com/sagabox/sagabox/internal/testenv"
	"github.com/sagabox/sagabox/outbox"
)

// BenchmarkConsume measures messages/s through consumer + inbox + a trivial handler,
// beside the raw kafka-go group Reader rate (FetchMessage + CommitMessages, no
// database) for the same records on the same broker in the same run. Rates are
// measured from the first record handled to the last, so group joins do not count.
// The embedded PostgreSQL runs with fsync and synchronous_commit off.
func BenchmarkConsume(b *testing.B) {
	const n, partitions = 20000, 8
	db := testenv.NewDB(b)
	k := testenv.NewKafka(b)
	topic := testenv.Topic("bench")
	k.CreateTopic(b, topic, partitions)
	payload := make([]byte, 256)
	recs := make([]kafkatest.Record, n)
	for i := range recs {
		recs[i] = kafkatest.FromOutbox(outbox.Message{Key: fmt.Sprint(i % 64), Payload: payload}, i%partitions)
	}
	for i := 0; i < n; i += 5000 {
		kafkatest.Produce(b, k.Brokers, topic, recs[i:i+5000]...)
	}
	b.ResetTimer()

	raw := rawRate(b, k.Brokers, topic, n)
	type row struct {
		name string
		rate float64
	}
	rows := []row{{"raw kafka-go group reader (no database)", raw}}
	for _, bs := range []int{1, 32} {
		cfg := benchConfig(k.Brokers, topic)
		cfg.BatchSize = bs
		rate, c := consumeRate(b, db, cfg, n, 2*time.Minute, func(context.Context, pgx.Tx, consumer.Message) error { return nil })
		rows = append(rows, row{fmt.Sprintf("consumer + inbox, Concurrency %d, BatchSize %d", c.Config().Concurrency, bs), rate})
		b.ReportMetric(rate, fmt.Sprintf("inbox_batch%d_msgs/s", bs))
	}
	b.ReportMetric(raw, "raw_msgs/s")
	b.StopTimer()
	b.Logf("%d records of 256 B, %d partitions, kfake in-process, PostgreSQL fsync=off synchronous_commit=off", n, partitions)
	for _, r := range rows {
		b.Logf("  %-55s %9.0f msg/s  (%.2fx raw)", r.name, r.rate, r.rate/raw)
	}
}

func rawRate(b *testing.B, brokers []string, topic string, n int) float64 {
	r := kafka.NewReader(kafka.ReaderConfig{
		Brokers: brokers, GroupID: testenv.Topic("bench-raw"), GroupTopics: []string{topic},
		StartOffset: kafka.FirstOffset, MaxWait: 100 * time.Millisecond,
		SessionTimeout: time.Second, HeartbeatInterval: 100 * time.Millisecond, RebalanceTimeout: time.Second,
		JoinGroupBackoff: 100 * time.Millisecond,
	})
	defer r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var start time.Time
	batch := make([]kafka.Message, 0, 256)
	for i := range n {
		m, err := r.FetchMessage(ctx)
		if err != nil {
			b.Fatalf("raw reader: %v after %d records", err, i)
		}
		if i == 0 {
			start = time.Now()
		}
		// Committed in batches, as the consumer does, so both pay for offset commits.
		if batch = append(batch, m); len(batch) == cap(batch) || i == n-1 {
			if err := r.CommitMessages(ctx, batch...); err != nil {
				b.Fatal(err)
			}
			batch = batch[:0]
		}
	}
	return float64(n) / time.Since(start).Seconds()
}

// benchConfig is a consumer of topic with a fresh group and short group timeouts.
func benchConfig(brokers []string, topic string) consumer.Config {
	return consumer.Config{
		Brokers: brokers, GroupID: testenv.Topic("bench-inbox"), Topics: []string{topic},
		SessionTimeout: time.Second, HeartbeatInterval: 100 * time.Millisecond, RebalanceTimeout: time.Second,
		JoinGroupBackoff: 100 * time.Millisecond, MaxWait: 100 * time.Millisecond,
	}
}

// consumeRate runs a consumer with h until n records committed and returns the
// rate from the first handler run to the n-th commit.
func consumeRate(b *testing.B, db *testenv.DB, cfg consumer.Config, n int64, limit time.Duration, h consumer.Handler) (float64, *consumer.Consumer) {
	b.Helper()
	var handled, first, last atomic.Int64
	finished := make(chan struct{})
	cfg.Hooks.Handled = func(consumer.Message, bool) {
		if handled.Add(1) == n {
			last.Store(time.Now().UnixNano())
			close(finished)
		}
	}
	c, err := consumer.New(db.Pool, cfg, func(ctx context.Context, tx pgx.Tx, msg consumer.Message) error {
		first.CompareAndSwap(0, time.Now().UnixNano())
		return h(ctx, tx, msg)
	})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	select {
	case <-finished:
	case <-time.After(limit):
		// A collapse is a result too: report the rate so far.
		b.Logf("BatchSize %d: handled %d of %d in %s", cfg.BatchSize, handled.Load(), n, limit)
		n = handled.Load()
		last.Store(time.Now().UnixNano())
	}
	cancel()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	return float64(n) / time.Duration(last.Load()-first.Load()).Seconds(), c
}

// BenchmarkHotRows measures a shared transaction's batch size and record order when
// handlers of every partition update the same few rows, which the records' keys do not
// name (unique keys, like saga ids; the payload names the row, like a SKU): msgs/s and
// deadlocks the database detected (each costs deadlock_timeout, 1s, and a retry).
func BenchmarkHotRows(b *testing.B) {
	const n, partitions, hot = 4000, 8, 8
	db := testenv.NewDB(b)
	k := testenv.NewKafka(b)
	topic := testenv.Topic("bench-hot")
	k.CreateTopic(b, topic, partitions)
	if _, err := db.Pool.Exec(context.Background(), `CREATE TABLE "stock" ("sku" text PRIMARY KEY, "n" bigint NOT NULL)`); err != nil {
		b.Fatal(err)
	}
	recs := make([]kafkatest.Record, n)
	for i := range recs {
		recs[i] = kafkatest.FromOutbox(outbox.Message{Key: fmt.Sprint(i), Payload: []byte(fmt.Sprintf("sku-%d", (i*7+i/partitions)%hot))}, i%partitions)
	}
	kafkatest.Produce(b, k.Brokers, topic, recs...)
	b.ResetTimer()
	bySKU := func(m consumer.Message) []byte { return m.Value }
	for _, v := range []struct {
		batch   int
		lockKey func(consumer.Message) []byte
	}{{1, nil}, {8, nil}, {32, nil}, {8, bySKU}, {32, bySKU}, {128, bySKU}} {
		var deadlocks atomic.Int64
		cfg := benchConfig(k.Brokers, topic)
		cfg.BatchSize, cfg.LockKey = v.batch, v.lockKey
		cfg.Hooks.LocalRetry = func(_ string, _ int, err error) {
			var pg *pgconn.PgError
			if errors.As(err, &pg) && pg.Code == "40P01" {
				deadlocks.Add(1)
			}
		}
		rate, c := consumeRate(b, db, cfg, n, 30*time.Second, func(ctx context.Context, tx pgx.Tx, msg consumer.Message) error {
			_, err := tx.Exec(ctx, `INSERT INTO "stock" VALUES ($1, 1) ON CONFLICT ("sku") DO UPDATE SET "n" = "stock"."n" + 1`, string(msg.Value))
			return err
		})
		order := "Kafka key"
		if v.lockKey != nil {
			order = "LockKey (row)"
		}
		var pgDeadlocks int64
		_ = db.Pool.QueryRow(context.Background(), `SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()`).Scan(&pgDeadlocks)
		b.Logf("  Concurrency %d, BatchSize %3d, order by %-13s %7.0f msg/s  %3d deadlocks (pg total %d)", c.Config().Concurrency, v.batch, order, rate, deadlocks.Load(), pgDeadlocks)
		b.ReportMetric(rate, fmt.Sprintf("batch%d_%s_msgs/s", v.batch, map[bool]string{true: "lockkey", false: "key"}[v.lockKey != nil]))
	}
	b.StopTimer()
	b.Logf("%d records, %d partitions, %d hot rows, kfake in-process, PostgreSQL fsync=off synchronous_commit=off", n, partitions, hot)
}
