package relayprom_test

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sagabox/sagabox/internal/testenv"
	"github.com/sagabox/sagabox/outbox"
	"github.com/sagabox/sagabox/relay"
	"github.com/sagabox/sagabox/relay/relayprom"
)

func TestMain(m *testing.M) { os.Exit(testenv.Run(m)) }

func TestHooksUpdateMetrics(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewPedanticRegistry()
	m, err := relayprom.New(reg)
	if err != nil {
		t.Fatal(err)
	}
	h := m.Hooks()
	h.Published("orders", 3)
	h.Published("orders", 2)
	h.Failed("orders", errors.New("x"))
	h.DeadLettered("payments", errors.New("too large"))
	h.Batch(5, 20*time.Millisecond)
	h.Lag(1500 * time.Millisecond)
	h.Shards(128)

	for name, want := range map[string]float64{
		"sagabox_relay_published_total":        5,
		"sagabox_relay_failed_total":           1,
		"sagabox_relay_dead_lettered_total":    1,
		"sagabox_relay_lag_seconds":            1.5,
		"sagabox_relay_owned_shards":           128,
		"sagabox_relay_batch_duration_seconds": 0.02,
		"sagabox_relay_batch_size":             5,
	} {
		if got := value(t, reg, name); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	if _, err := relayprom.New(reg); err == nil {
		t.Error("registering twice must fail")
	}
}

func TestPublishLatencyCountsAcknowledgedMessages(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewPedanticRegistry()
	m, err := relayprom.New(reg)
	if err != nil {
		t.Fatal(err)
	}
	publish := m.Hooks().Publish
	msgs := make([]outbox.Message, 3)
	for i := range msgs {
		msgs[i] = outbox.Message{ID: uuid.Must(uuid.NewV7()), Topic: "orders"}
	}
	publish(msgs)(nil)                                                    // all three acknowledged
	publish(msgs)(relay.MessageErrors{nil, errors.New("too large"), nil}) // two of three
	publish(msgs)(errors.New("broker down"))                              // none
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "sagabox_relay_publish_latency_seconds" {
			h := mf.GetMetric()[0].GetHistogram()
			if h.GetSampleCount() != 5 || h.GetSampleSum() < 0 || h.GetSampleSum() > 60 {
				t.Errorf("latency histogram has %d samples summing to %vs; want 5 samples of a moment each", h.GetSampleCount(), h.GetSampleSum())
			}
			return
		}
	}
	t.Error("sagabox_relay_publish_latency_seconds not found")
}

func TestOutboxGaugesShowPendingAndDeadRows(t *testing.T) {
	t.Parallel()
	db := testenv.NewDB(t)
	ctx := context.Background()
	c, err := relayprom.Outbox(db.Pool, "")
	if err != nil {
		t.Fatal(err)
	}
	enqueue := func(topic string) {
		t.Helper()
		if err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
			return outbox.Enqueue(ctx, tx, outbox.Message{Topic: topic, Payload: []byte("x")})
		}); err != nil {
			t.Fatal(err)
		}
	}
	enqueue("dead")
	if _, err := db.Pool.Exec(ctx, `UPDATE sagabox.outbox_messages SET dead_at = now()`); err != nil {
		t.Fatal(err)
	}
	enqueue("orders")
	enqueue("orders")
	want := `
# HELP sagabox_relay_dead_lettered Dead-lettered outbox rows waiting for an operator (sagactl outbox retry).
# TYPE sagabox_relay_dead_lettered gauge
sagabox_relay_dead_lettered 1
# HELP sagabox_relay_pending Outbox rows not yet published and not dead-lettered.
# TYPE sagabox_relay_pending gauge
sagabox_relay_pending 2
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), "sagabox_relay_pending", "sagabox_relay_dead_lettered"); err != nil {
		t.Error(err)
	}
}

func TestBuildInfo(t *testing.T) {
	t.Parallel()
	if n := testutil.CollectAndCount(relayprom.BuildInfo(), "sagabox_build_info"); n != 1 {
		t.Errorf("sagabox_build_info has %d series, want 1", n)
	}
}

// value returns a metric's single value (a histogram's sum).
func value(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		if len(mf.GetMetric()) != 1 {
			t.Fatalf("%s has %d series, want 1", name, len(mf.GetMetric()))
		}
		mt := mf.GetMetric()[0]
		switch {
		case mt.GetCounter() != nil:
			return mt.GetCounter().GetValue()
		case mt.GetGauge() != nil:
			return mt.GetGauge().GetValue()
		case mt.GetHistogram() != nil:
			return mt.GetHistogram().GetSampleSum()
		}
	}
	t.Fatalf("metric %s not found", name)
	return 0
}
