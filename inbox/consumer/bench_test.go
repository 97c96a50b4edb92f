package consumer_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
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
		group := testenv.Topic("bench-inbox")
		var handled atomic.Int64
		var first, last atomic.Int64
		finished := make(chan struct{})
		cfg := consumer.Config{
			Brokers: k.Brokers, GroupID: group, Topics: []string{topic}, BatchSize: bs,
			SessionTimeout: time.Second, HeartbeatInterval: 100 * time.Millisecond, RebalanceTimeout: time.Second,
			JoinGroupBackoff: 100 * time.Millisecond, MaxWait: 100 * time.Millisecond,
		}
		c, err := consumer.New(db.Pool, cfg, func(ctx context.Context, tx pgx.Tx, msg consumer.Message) error {
			now := time.Now().UnixNano()
			first.CompareAndSwap(0, now)
			if handled.Add(1) == n {
				last.Store(now)
				close(finished)
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- c.Run(ctx) }()
		select {
		case <-finished:
		case <-time.After(2 * time.Minute):
			b.Fatalf("batch %d: handled %d of %d in 2 minutes", bs, handled.Load(), n)
		}
		cancel()
		if err := <-done; err != nil {
			b.Fatal(err)
		}
		rate := float64(n) / time.Duration(last.Load()-first.Load()).Seconds()
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
