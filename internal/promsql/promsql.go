package promsql

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sagabox/sagabox/migrations"
)

// DefaultTimeout bounds a scrape's query unless New is given another.
const DefaultTimeout = 2 * time.Second

// Emit reports one value of a gauge described by desc, with its label values in order.
type Emit func(desc *prometheus.Desc, value float64, labels ...string)

// Query runs at scrape time and emits its gauges; an error discards what it emitted.
type Query func(ctx context.Context, emit Emit) error

// Collector is a prometheus.Collector backed by a Query.
type Collector struct {
	descs   []*prometheus.Desc
	errDesc *prometheus.Desc
	timeout time.Duration
	query   Query
}

// New returns a collector of the gauges descs, filled by q at every scrape within
// timeout (0 means DefaultTimeout). namespace names its <namespace>_scrape_error gauge.
func New(namespace string, timeout time.Duration, q Query, descs ...*prometheus.Desc) *Collector {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	return &Collector{
		descs: descs, timeout: timeout, query: q,
		errDesc: prometheus.NewDesc(namespace+"_scrape_error",
			"1 if the last scrape's database query failed (its gauges are then missing), else 0.", nil, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
	ch <- c.errDesc
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	var out []prometheus.Metric
	err := c.query(ctx, func(desc *prometheus.Desc, v float64, labels ...string) {
		out = append(out, prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, v, labels...))
	})
	failed := 0.0
	if err != nil {
		failed, out = 1, nil
	}
	for _, m := range out {
		ch <- m
	}
	ch <- prometheus.MustNewConstMetric(c.errDesc, prometheus.GaugeValue, failed)
}

// Querier is what a Query needs of a pool.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Table returns the quoted name of table in schema ("" means the default schema), or
// an error naming what is wrong with schema.
func Table(schema, table string) (string, error) {
	if schema == "" {
		schema = migrations.DefaultSchema
	}
	if err := migrations.ValidateSchema(schema); err != nil {
		return "", err
	}
	return pgx.Identifier{schema, table}.Sanitize(), nil
}
