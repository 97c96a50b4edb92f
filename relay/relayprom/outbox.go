package relayprom

import (
	"context"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sagabox/sagabox/internal/buildinfo"
	"github.com/sagabox/sagabox/internal/promsql"
	"github.com/sagabox/sagabox/outbox"
)

// Outbox returns a collector of the outbox of schema ("" means the default), read at
// every scrape with outbox.Stats (one query over the outbox table: cheap while the
// relay keeps up): sagabox_relay_pending (rows not yet published, not dead) and
// sagabox_relay_dead_lettered (rows the relay gave up on, waiting for an operator).
func Outbox(db outbox.Querier, schema string) (prometheus.Collector, error) {
	if _, err := promsql.Table(schema, "outbox_messages"); err != nil {
		return nil, fmt.Errorf("relayprom: %w", err)
	}
	const ns = "sagabox_relay"
	pending := prometheus.NewDesc(ns+"_pending", "Outbox rows not yet published and not dead-lettered.", nil, nil)
	dead := prometheus.NewDesc(ns+"_dead_lettered", "Dead-lettered outbox rows waiting for an operator (sagactl outbox retry).", nil, nil)
	return promsql.New(ns, 0, func(ctx context.Context, emit promsql.Emit) error {
		b, err := outbox.Stats(ctx, db, schema)
		if err != nil {
			return err
		}
		emit(pending, float64(b.Pending))
		emit(dead, float64(b.Dead))
		return nil
	}, pending, dead), nil
}

// BuildInfo returns the gauge sagabox_build_info{version,revision,goversion} = 1,
// from the running binary's build information (internal/buildinfo, as --version
// prints it), for telling releases apart on a dashboard.
func BuildInfo() prometheus.Collector {
	bi := buildinfo.Read()
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "sagabox_build_info",
		Help:        "Always 1; the labels tell the binary's version, VCS revision and Go version.",
		ConstLabels: prometheus.Labels{"version": bi.Version, "revision": bi.Revision, "goversion": bi.GoVersion}})
	g.Set(1)
	return g
}
