package participantsprom

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sagabox/sagabox/participants"
	"github.com/sagabox/sagabox/wire"
)

// Metrics holds the collectors behind the hooks; one Metrics serves every participant
// of a process, told apart by their participant label.
type Metrics struct {
	commands *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

// New creates the collectors and registers them with reg.
func New(reg prometheus.Registerer) (*Metrics, error) {
	const ns = "sagabox_participant"
	m := &Metrics{
		commands: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "commands_total",
			Help: "Commands decided, by the outcome replied."}, []string{"participant", "command", "outcome"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: "command_duration_seconds",
			Help: "Time of the barrier and the handler for one command.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)},
			[]string{"participant", "command"}),
	}
	for _, c := range []prometheus.Collector{m.commands, m.duration} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// Hooks returns participant hooks that update the metrics under the participant label
// name (use the participant's Config.Name).
func (m *Metrics) Hooks(name string) participants.Hooks {
	return participants.Hooks{
		Command: func(cmd wire.Command, outcome wire.Outcome, d time.Duration) {
			m.commands.WithLabelValues(name, cmd.Name, string(outcome)).Inc()
			m.duration.WithLabelValues(name, cmd.Name).Observe(d.Seconds())
		},
	}
}
