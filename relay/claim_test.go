package relay_test

import (
	"context"
	"testing"
	"time"

	"github.com/sagabox/sagabox/internal/kafkatest"
	"github.com/sagabox/sagabox/outbox"
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
