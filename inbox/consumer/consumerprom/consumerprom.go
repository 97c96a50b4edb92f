package consumerprom

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sagabox/sagabox/inbox"
	"github.com/sagabox/sagabox/inbox/consumer"
	"github.com/sagabox/sagabox/internal/promsql"
)

// Metrics holds the collectors behind the hooks; one Metrics serves every consumer
// of a process, told apart by their consumer label.
type Metrics struct {
	handled, duplicates, retries, localRetries, dead *prometheus.CounterVec
	duration                                         *prometheus.HistogramVec
	lag                                              *prometheus.GaugeVec
}

// New creates the collectors and registers them with reg.
func New(reg prometheus.Registerer) (*Metrics, error) {
	const ns = "sagabox_consumer"
	labels := []string{"consumer", "topic"}
	counter := func(name, help string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: name, Help: help}, labels)
	}
	m := &Metrics{
		handled:      counter("handled_total", "Records whose inbox transaction committed (duplicates included)."),
		duplicates:   counter("duplicates_total", "Records the inbox skipped because they were handled before."),
		retries:      counter("retries_total", "Retries of a record after its handler failed (each spends an attempt)."),
		localRetries: counter("local_retries_total", "Transactions run again after a transient database error (no attempt spent)."),
		dead:         counter("dead_lettered_total", "Records stored as dead letters."),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: "handler_duration_seconds",
			Help: "Time of one handler call (inside the inbox transaction).", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)},
			[]string{"consumer", "topic", "outcome"}),
		lag: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "lag_records",
			Help: "Records of the partition behind the newest one handled, as of its fetch (high-water mark - offset - 1)."},
			[]string{"consumer", "topic", "partition"}),
	}
	for _, c := range []prometheus.Collector{m.handled, m.duplicates, m.retries, m.localRetries, m.dead, m.duration, m.lag} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// Hooks returns consumer hooks that update the metrics under the consumer label name
// (use the consumer's Config.Name).
func (m *Metrics) Hooks(name string) consumer.Hooks {
	return consumer.Hooks{
		Handled: func(msg consumer.Message, duplicate bool) {
			m.handled.WithLabelValues(name, msg.Topic).Inc()
			if duplicate {
				m.duplicates.WithLabelValues(name, msg.Topic).Inc()
			}
		},
		HandlerDone: func(msg consumer.Message, d time.Duration, err error) {
			outcome := "ok"
			if err != nil {
				outcome = "error"
			}
			m.duration.WithLabelValues(name, msg.Topic, outcome).Observe(d.Seconds())
		},
		Retry:        func(msg consumer.Message, _ int, _ error) { m.retries.WithLabelValues(name, msg.Topic).Inc() },
		LocalRetry:   func(topic string, _ int, _ error) { m.localRetries.WithLabelValues(name, topic).Inc() },
		DeadLettered: func(d inbox.DeadLetter) { m.dead.WithLabelValues(name, d.Topic).Inc() },
		Lag: func(topic string, partition int, lag int64) {
			m.lag.WithLabelValues(name, topic, strconv.Itoa(partition)).Set(float64(lag))
		},
	}
}

// DeadLetters returns a collector of sagabox_inbox_dead_letters{consumer}: the dead
// letters stored in schema ("" means the default), counted at every scrape.
func DeadLetters(db promsql.Querier, schema string) (prometheus.Collector, error) {
	table, err := promsql.Table(schema, "inbox_dead_letters")
	if err != nil {
		return nil, fmt.Errorf("consumerprom: %w", err)
	}
	desc := prometheus.NewDesc("sagabox_inbox_dead_letters", "Dead letters stored in the inbox, waiting for an operator.", []string{"consumer"}, nil)
	sql := `SELECT "consumer", count(*) FROM ` + table + ` WHERE "resolved_at" IS NULL GROUP BY "consumer"` // replayed or deleted ones wait only for the sweep
	return promsql.New("sagabox_inbox", 0, func(ctx context.Context, emit promsql.Emit) error {
		rows, err := db.Query(ctx, sql)
		if err != nil {
			return err
		}
		var name string
		var n int64
		_, err = pgx.ForEachRow(rows, []any{&name, &n}, func() error {
			emit(desc, float64(n), name)
			return nil
		})
		return err
	}, desc), nil
}
