package relay_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagabox/sagabox/internal/kafkatest"
	"github.com/sagabox/sagabox/internal/testenv"
	"github.com/sagabox/sagabox/migrations"
	"github.com/sagabox/sagabox/outbox"
	"github.com/sagabox/sagabox/relay"
	"github.com/sagabox/sagabox/relay/kafkapub"
)

// TestNotifyWakesTheRelay polls only once a minute, so a message published within
// seconds was announced by the NOTIFY trigger (enabled again, as Listen asks); it
// also runs in a schema of its own, whose channel differs from the default one.
func TestNotifyWakesTheRelay(t *testing.T) {
	t.Parallel()
	testWakeUp(t, true)
}

// TestProbeWakesTheRelay is the default wake-up: no trigger, no LISTEN, polls
// once a minute, so the probe found the messages.
func TestProbeWakesTheRelay(t *testing.T) {
	t.Parallel()
	testWakeUp(t, false)
}

func testWakeUp(t *testing.T, listen bool) {
	ctx := context.Background()
	db := testenv.NewEmptyDB(t)
	const schema = "tenant_a"
	if err := migrations.Up(ctx, db.URL, schema); err != nil {
		t.Fatal(err)
	}
	pool, err := pgxpool.New(ctx, db.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if listen {
		if _, err := pool.Exec(ctx, `ALTER TABLE "tenant_a"."outbox_messages" ENABLE TRIGGER "outbox_messages_notify"`); err != nil {
			t.Fatal(err)
		}
	}
	k := testenv.NewKafka(t)
	topic := testenv.Topic("wake")
	k.CreateTopic(t, topic, 1)

	cfg := fastConfig()
	cfg.Schema = schema
	cfg.PollInterval = time.Minute
	cfg.Listen = listen
	shards := make(chan int, 100)
	cfg.Hooks.Shards = func(n int) {
		select {
		case shards <- n:
		default:
		}
	}
	startRelay(t, pool, newPublisher(t, kafkapub.Config{Brokers: k.Brokers}), cfg)
	// Wait for the relay to own every shard and then for three more heartbeats,
	// so its first (empty) cycle is long over and only a wake-up can start another.
	for owned := 0; owned < 3; {
		if <-shards == relay.Shards {
			owned++
		}
	}
	w, err := outbox.New(outbox.Config{Schema: schema})
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 3; i++ {
		if err := w.Enqueue(ctx, pool, outbox.Message{Topic: topic, Key: "k", Payload: payload("k", i)}); err != nil {
			t.Fatal(err)
		}
	}
	checkOrder(t, kafkatest.ReadTopic(t, k.Brokers, topic, 3, 15*time.Second), map[string]int{"k": 3}, false)
}
