package sagastateprom

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sagabox/sagabox/internal/promsql"
	"github.com/sagabox/sagabox/sagastate"
)

const ns = "sagabox_saga"

// Metrics holds the collectors behind the hooks.
type Metrics struct {
	started, compensating, completed, compensated, failed *prometheus.CounterVec
	duration, consistency, step                           *prometheus.HistogramVec
}

// New creates the collectors and registers them with reg.
func New(reg prometheus.Registerer) (*Metrics, error) {
	counter := func(name, help string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: name, Help: help}, []string{"type"})
	}
	// From 10ms to ~3h: sagas wait for people and timeouts too.
	buckets := prometheus.ExponentialBuckets(0.01, 2.5, 14)
	m := &Metrics{
		started:      counter("started_total", "Sagas started."),
		compensating: counter("compensating_total", "Sagas that began to compensate (a step failed, timed out or ran out of retries, or an abort)."),
		completed:    counter("completed_total", "Sagas whose every step completed."),
		compensated:  counter("compensated_total", "Sagas whose every step that may have run was undone."),
		failed:       counter("failed_total", "Sagas whose compensation gave up, or that an operator aborted."),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: "duration_seconds",
			Help: "Start to finish of finished sagas, by final status (completed: the response time).", Buckets: buckets},
			[]string{"type", "status"}),
		consistency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: "time_to_consistency_seconds",
			Help: "Start to completed or compensated: how long the participants disagreed.", Buckets: buckets}, []string{"type"}),
		step: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: "step_duration_seconds",
			Help: "One attempt of a step's command, sent to reply (or timeout).", Buckets: buckets},
			[]string{"type", "step", "op", "outcome"}),
	}
	for _, c := range []prometheus.Collector{m.started, m.compensating, m.completed, m.compensated, m.failed, m.duration, m.consistency, m.step} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// Hooks returns orchestrator hooks that update the metrics.
func (m *Metrics) Hooks() sagastate.Hooks {
	return sagastate.Hooks{
		SagaStarted:      func(s sagastate.SagaInfo) { m.started.WithLabelValues(s.Type).Inc() },
		SagaCompensating: func(s sagastate.SagaInfo) { m.compensating.WithLabelValues(s.Type).Inc() },
		SagaFinished:     m.finished,
		StepEnded: func(st sagastate.StepInfo) {
			if st.Duration > 0 { // 0: unknown (a late reply to an earlier attempt)
				m.step.WithLabelValues(st.SagaType, st.Step, string(st.Op), string(st.Outcome)).Observe(st.Duration.Seconds())
			}
		},
	}
}

func (m *Metrics) finished(s sagastate.SagaInfo) {
	d := s.Duration.Seconds()
	m.duration.WithLabelValues(s.Type, string(s.Status)).Observe(d)
	switch s.Status {
	case sagastate.SagaCompleted:
		m.completed.WithLabelValues(s.Type).Inc()
		m.consistency.WithLabelValues(s.Type).Observe(d)
	case sagastate.SagaCompensated:
		m.compensated.WithLabelValues(s.Type).Inc()
		m.consistency.WithLabelValues(s.Type).Observe(d)
	case sagastate.SagaFailed:
		m.failed.WithLabelValues(s.Type).Inc()
	}
}

// InFlight returns a collector of sagabox_saga_in_flight{type,status} and
// sagabox_saga_oldest_in_flight_seconds{type,status} over the unfinished sagas of
// schema ("" means the default), read at every scrape. A failed saga counts until an
// operator retries or aborts it.
func InFlight(db promsql.Querier, schema string) (prometheus.Collector, error) {
	table, err := promsql.Table(schema, "saga_instances")
	if err != nil {
		return nil, fmt.Errorf("sagastateprom: %w", err)
	}
	labels := []string{"type", "status"}
	count := prometheus.NewDesc(ns+"_in_flight", "Sagas not finished, by status.", labels, nil)
	oldest := prometheus.NewDesc(ns+"_oldest_in_flight_seconds", "Age of the oldest saga not finished, by status.", labels, nil)
	// The status index serves the IN list; finished (or aborted) failed sagas are filtered.
	sql := `SELECT "type", "status", count(*), EXTRACT(EPOCH FROM now() - min("created_at"))::float8
FROM ` + table + `
WHERE "status" IN ('running', 'compensating', 'timeout', 'failed') AND "finished_at" IS NULL
GROUP BY "type", "status"`
	return promsql.New(ns, 0, func(ctx context.Context, emit promsql.Emit) error {
		rows, err := db.Query(ctx, sql)
		if err != nil {
			return err
		}
		var typ, status string
		var n int64
		var age float64
		_, err = pgx.ForEachRow(rows, []any{&typ, &status, &n, &age}, func() error {
			emit(count, float64(n), typ, status)
			emit(oldest, max(0, age), typ, status)
			return nil
		})
		return err
	}, count, oldest), nil
}
