package participants_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/sagabox/sagabox/inbox/consumer"
	"github.com/sagabox/sagabox/internal/kafkatest"
	"github.com/sagabox/sagabox/internal/testenv"
	"github.com/sagabox/sagabox/participants"
	"github.com/sagabox/sagabox/wire"
)

// BenchmarkParticipant measures saga commands/s through a participant (consumer +
// inbox + barrier + a trivial handler + the reply through the outbox), beside the same
// records through the bare consumer + inbox with a trivial handler, in the same run.
// Rates run from the first command handled to the last. The embedded PostgreSQL runs
// with fsync and synchronous_commit off.
func BenchmarkParticipant(b *testing.B) {
	const n, partitions = 10000, 8
	db := testenv.NewDB(b)
	k := testenv.NewKafka(b)
	topic := testenv.Topic("bench.commands")
	k.CreateTopic(b, topic, partitions)
	recs := make([]kafkatest.Record, n)
	for i := range recs {
		cmd := wire.Command{SagaID: uuid.New(), SagaType: "order", Step: "payment", Op: wire.OpForward, Attempt: 1,
			Name: "payment.charge", ReplyTo: "bench.replies", Payload: []byte(`{"amount":10}`)}
		recs[i] = kafkatest.FromOutbox(cmd.Message(topic), i%partitions)
	}
	for i := 0; i < n; i += 5000 {
		kafkatest.Produce(b, k.Brokers, topic, recs[i:min(n, i+5000)]...)
	}
	b.ResetTimer()

	fast := consumer.Config{SessionTimeout: time.Second, HeartbeatInterval: 100 * time.Millisecond, RebalanceTimeout: time.Second,
		JoinGroupBackoff: 100 * time.Millisecond, MaxWait: 100 * time.Millisecond}
	var first, last, handled atomic.Int64
	var finished chan struct{}
	count := func() {
		now := time.Now().UnixNano()
		first.CompareAndSwap(0, now)
		if handled.Add(1) == n {
			last.Store(now)
			close(finished)
		}
	}
	measure := func(name string, run func(ctx context.Context) error) float64 {
		first.Store(0)
		handled.Store(0)
		finished = make(chan struct{})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- run(ctx) }()
		select {
		case <-finished:
		case <-time.After(2 * time.Minute):
			b.Fatalf("%s: handled %d of %d in 2 minutes", name, handled.Load(), n)
		}
		cancel()
		if err := <-done; err != nil {
			b.Fatal(err)
		}
		return float64(n) / time.Duration(last.Load()-first.Load()).Seconds()
	}

	cfg := fast
	cfg.Brokers, cfg.GroupID, cfg.Topics = k.Brokers, testenv.Topic("bench-consumer"), []string{topic}
	c, err := consumer.New(db.Pool, cfg, func(context.Context, pgx.Tx, consumer.Message) error { count(); return nil })
	if err != nil {
		b.Fatal(err)
	}
	base := measure("consumer", c.Run)

	p, err := participants.New(db.Pool, participants.Config{Brokers: k.Brokers, GroupID: testenv.Topic("bench-participant"),
		CommandTopics: []string{topic}, Consumer: fast})
	if err != nil {
		b.Fatal(err)
	}
	p.Handle("payment.charge", func(context.Context, pgx.Tx, wire.Command) ([]byte, error) { count(); return nil, nil })
	rate := measure("participant", p.Run)

	var replies int
	if err := db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM "sagabox"."outbox_messages" WHERE "topic" = 'bench.replies'`).Scan(&replies); err != nil {
		b.Fatal(err)
	}
	if replies != n {
		b.Fatalf("%d replies for %d commands", replies, n)
	}
	b.StopTimer()
	b.ReportMetric(base, "consumer_msgs/s")
	b.ReportMetric(rate, "participant_cmds/s")
	b.Logf("%d commands, %d partitions, kfake in-process, PostgreSQL fsync=off synchronous_commit=off", n, partitions)
	b.Logf("  %-60s %8.0f msg/s", "consumer + inbox + trivial handler (baseline)", base)
	b.Logf("  %-60s %8.0f cmd/s  (%.2fx baseline)", "participant: + barrier + reply via outbox, trivial handler", rate, rate/base)
}
