package relayprom_test

import (
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sagabox/sagabox/relay/relayprom"
)

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
