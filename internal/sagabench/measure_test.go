package sagabench_test

import (
	"context"
	"testing"

	"github.com/google/uuid"

	"github.com/sagabox/sagabox/internal/sagabench"
)

// BenchmarkSagaLoad measured the order saga with the baseline's and the no-op saga's
// services, relays and brokers still running idle: their polls, probes, heartbeats
// and empty fetches (about 80ms of CPU a second each) counted in the later rows' CPU
// per flow, most at low load. measure stops a kind once it has been measured.
func TestMeasureStopsItsKindBeforeReturning(t *testing.T) {
	defer func(l string) { *onlyLevels = l }(*onlyLevels)
	*onlyLevels = "8"
	stopped := false
	measure(t, "instant flows", func(tb testing.TB) env {
		pool := newDB(tb)
		tb.Cleanup(func() { stopped = true })
		var d *sagabench.Driver
		d = sagabench.NewDriver(func(_ context.Context, id uuid.UUID, _ int) error { d.Finished(id); return nil })
		return env{driver: d, pool: pool}
	})
	if !stopped {
		t.Fatal("measure returned with its kind still running: its idle services would count in the next kind's CPU per flow")
	}
}
