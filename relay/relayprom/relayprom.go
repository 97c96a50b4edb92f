package relayprom

import (
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sagabox/sagabox/outbox"
	"github.com/sagabox/sagabox/relay"
)

// Metrics holds the collectors behind the hooks.
type Metrics struct {
	published, failed, dead *prometheus.CounterVec
	batchDuration           prometheus.Histogram
	batchSize               prometheus.Histogram
	lag, shards             prometheus.Gauge
	latency                 prometheus.Histogram
}

// New creates the collectors and registers them with reg.
func New(reg prometheus.Registerer) (*Metrics, error) {
	const ns = "sagabox_relay"
	m := &Metrics{
		published: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "published_total",
			Help: "Messages acknowledged by the broker."}, []string{"topic"}),
		failed: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "failed_total",
			Help: "Failed publishes of a message that will be retried."}, []string{"topic"}),
		dead: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "dead_lettered_total",
			Help: "Messages dead-lettered after their last attempt."}, []string{"topic"}),
		batchDuration: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Name: "batch_duration_seconds",
			Help: "Time to claim, publish and settle one batch.", Buckets: prometheus.ExponentialBuckets(0.001, 2, 14)}),
		batchSize: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Name: "batch_size",
			Help: "Messages per batch.", Buckets: prometheus.ExponentialBuckets(1, 4, 8)}),
		lag: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "lag_seconds",
			Help: "Age of the oldest unpublished, not dead-lettered outbox row."}),
		shards: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "owned_shards",
			Help: "Key shards this relay owns."}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Name: "publish_latency_seconds",
			Help:    "Enqueue (the message's UUIDv7 time, in the producer's transaction) to the broker's acknowledgement.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16)}),
	}
	for _, c := range []prometheus.Collector{m.published, m.failed, m.dead, m.batchDuration, m.batchSize, m.lag, m.shards, m.latency} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// Hooks returns relay hooks that update the metrics.
func (m *Metrics) Hooks() relay.Hooks {
	return relay.Hooks{
		Published:    func(topic string, n int) { m.published.WithLabelValues(topic).Add(float64(n)) },
		Failed:       func(topic string, _ error) { m.failed.WithLabelValues(topic).Inc() },
		DeadLettered: func(topic string, _ error) { m.dead.WithLabelValues(topic).Inc() },
		Batch: func(n int, d time.Duration) {
			m.batchDuration.Observe(d.Seconds())
			m.batchSize.Observe(float64(n))
		},
		Lag:     func(age time.Duration) { m.lag.Set(age.Seconds()) },
		Shards:  func(n int) { m.shards.Set(float64(n)) },
		Publish: m.publish,
	}
}

// publish observes the latency of every message the broker acknowledged.
func (m *Metrics) publish(msgs []outbox.Message) func(error) {
	return func(err error) {
		var perMsg relay.MessageErrors
		if err != nil && (!errors.As(err, &perMsg) || len(perMsg) != len(msgs)) {
			return
		}
		now := time.Now()
		for i, msg := range msgs {
			if perMsg != nil && perMsg[i] != nil || msg.ID.Version() != 7 {
				continue
			}
			sec, nsec := msg.ID.Time().UnixTime()
			m.latency.Observe(max(0, now.Sub(time.Unix(sec, nsec)).Seconds()))
		}
	}
}
