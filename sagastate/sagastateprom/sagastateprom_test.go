package sagastateprom_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sagabox/sagabox/internal/testenv"
	"github.com/sagabox/sagabox/sagastate"
	"github.com/sagabox/sagabox/sagastate/sagastateprom"
	"github.com/sagabox/sagabox/wire"
)

func TestMain(m *testing.M) { os.Exit(testenv.Run(m)) }

func TestTransitionsUpdateMetrics(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewPedanticRegistry()
	m, err := sagastateprom.New(reg)
	if err != nil {
		t.Fatal(err)
	}
	h := m.Hooks()
	id := uuid.New()
	info := func(status sagastate.SagaStatus, d time.Duration) sagastate.SagaInfo {
		return sagastate.SagaInfo{ID: id, Type: "order", Status: status, Duration: d}
	}
	h.SagaStarted(info(sagastate.SagaRunning, 0))
	h.StepEnded(sagastate.StepInfo{SagaID: id, SagaType: "order", Step: "pay", Op: wire.OpForward, Attempt: 1,
		Outcome: sagastate.AttemptSucceeded, Duration: 2 * time.Second})
	h.StepEnded(sagastate.StepInfo{SagaID: id, SagaType: "order", Step: "pay", Op: wire.OpForward, Attempt: 1,
		Outcome: sagastate.AttemptSucceeded}) // duration unknown: not observed
	h.SagaFinished(info(sagastate.SagaCompleted, 3*time.Second))
	h.SagaCompensating(info(sagastate.SagaCompensating, time.Second))
	h.SagaFinished(info(sagastate.SagaCompensated, 5*time.Second))
	h.SagaFinished(info(sagastate.SagaFailed, 6*time.Second))
	sums := sums(t, reg)
	for name, want := range map[string]float64{
		"sagabox_saga_started_total": 1, "sagabox_saga_compensating_total": 1, "sagabox_saga_completed_total": 1,
		"sagabox_saga_compensated_total": 1, "sagabox_saga_failed_total": 1,
		"sagabox_saga_duration_seconds": 3 + 5 + 6, "sagabox_saga_time_to_consistency_seconds": 3 + 5, "sagabox_saga_step_duration_seconds": 2,
	} {
		if sums[name] != want {
			t.Errorf("%s = %v, want %v", name, sums[name], want)
		}
	}
}

// sums returns, per metric name, the sum of its counters' values or its histograms' sums.
func sums(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			out[mf.GetName()] += m.GetCounter().GetValue() + m.GetHistogram().GetSampleSum()
		}
	}
	return out
}

var order = sagastate.Define[map[string]int]("order",
	sagastate.Step("pay", "payments.commands").Do("payment.charge").Undo("payment.refund"))

func TestInFlightCountsUnfinishedSagas(t *testing.T) {
	t.Parallel()
	db := testenv.NewDB(t)
	o, err := sagastate.New(db.Pool, sagastate.Config{Sagas: []sagastate.Definition{order}})
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		err := pgx.BeginFunc(context.Background(), db.Pool, func(tx pgx.Tx) error {
			return o.Start(context.Background(), tx, "order", uuid.New(), map[string]int{"amount": 5})
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	c, err := sagastateprom.InFlight(db.Pool, "")
	if err != nil {
		t.Fatal(err)
	}
	if n := testutil.CollectAndCount(c, "sagabox_saga_in_flight", "sagabox_saga_oldest_in_flight_seconds"); n != 2 {
		t.Fatalf("got %d series, want one of each for (order, running)", n)
	}
	want := `
# HELP sagabox_saga_in_flight Sagas not finished, by status.
# TYPE sagabox_saga_in_flight gauge
sagabox_saga_in_flight{status="running",type="order"} 2
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), "sagabox_saga_in_flight"); err != nil {
		t.Error(err)
	}
}
