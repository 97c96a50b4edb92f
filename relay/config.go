package relay

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/google/uuid"

	"github.com/sagabox/sagabox/migrations"
)

// The defaults of Config, exported so that binaries and callers name them instead of
// repeating the figures (cmd/outbox-relay's flags start from them).
const (
	BatchSizeDefault         = 2000
	MaxBatchBytesDefault     = 8 << 20
	WorkersDefault           = 2
	MaxPublishesDefault      = 1
	MaxAttemptsDefault       = 10
	PollIntervalDefault      = time.Second
	ProbeIntervalDefault     = 5 * time.Millisecond
	BusyIntervalDefault      = time.Millisecond
	RetryBackoffMinDefault   = time.Second
	RetryBackoffMaxDefault   = 5 * time.Minute
	ErrorBackoffMinDefault   = 100 * time.Millisecond
	ErrorBackoffMaxDefault   = 10 * time.Second
	LeaseTTLDefault          = 10 * time.Second
	HeartbeatIntervalDefault = 2 * time.Second
	PublishTimeoutDefault    = 5 * time.Second
	HoldWarnAfterDefault     = 30 * time.Second
)

// Config configures a Relay. The zero value is usable: every field has a default.
type Config struct {
	// Schema holds the outbox tables. Defaults to "sagabox".
	Schema string
	// ID names this relay in the lease tables; it must be unique among the relays
	// of one schema. Defaults to "<hostname>-<pid>-<random>".
	ID string
	// BatchSize is the most rows one publish loop claims, publishes and settles at once.
	// Defaults to 2000: a 1 KiB-row backlog drained 1.4-1.7× as fast as at 500,
	// with less CPU per message (doc.go, Pipelining).
	BatchSize int
	// MaxBatchBytes bounds the payload bytes of one claim: it ends at the row
	// that reaches MaxBatchBytes (the server sends no more), and the next claim
	// goes on from there. A loop holds at most MaxPublishes + 2 batches (under
	// way, the next one claimed, the last one settling), so the payloads in memory
	// stay under (MaxPublishes + 2) × Workers × (MaxBatchBytes + the largest
	// message), whatever BatchSize is; keys and headers are not counted. Defaults
	// to 8 MiB (2048 rows of 4 KiB).
	MaxBatchBytes int
	// Workers is the number of publish loops. Loop i serves the leased shards s
	// with s mod Workers = i, so the claim, publish and settle of different shards
	// overlap while every key (one shard) stays on one loop, in order.
	// Defaults to 2.
	Workers int
	// MaxPublishes is how many batches one publish loop has under way at once
	// (published, not yet settled). A loop that caught up leaves its last batch
	// publishing and claims the next rows meanwhile, leaving the keys of the
	// batches under way, so a key's rows are still published one batch after the
	// other, in order (doc.go, Pipelining). Each batch under way wants a pool
	// connection for its settle; with too few the loops queue for them and it costs
	// more than it saves (doc.go, Wake-ups, has the figures). Defaults to 1: one
	// batch after another.
	MaxPublishes int
	// PollInterval is how often a publish loop looks for rows from the oldest one
	// on, whatever the wake-ups say: the bound on latency for rows the probe cannot
	// see (doc.go, Wake-ups), and how soon a retry becomes due. Defaults to 1s.
	PollInterval time.Duration
	// ProbeInterval is how often an idle relay asks the database whether rows
	// arrived (one index lookup of the rows added since the last answer). After a
	// second without new rows the probe backs off, doubling up to 100ms (or
	// PollInterval if that is lower). Defaults to 5ms.
	ProbeInterval time.Duration
	// BusyInterval is how soon a publish loop whose cycle published rows claims
	// again (at once when its last claim was a full batch); a cycle that finds
	// nothing hands the loop back to the probe. It is the latency a busy relay
	// adds to a row, bought with one claim per BusyInterval per loop while rows
	// keep coming (doc.go, Wake-ups). Defaults to 1ms, or ProbeInterval if lower.
	BusyInterval time.Duration
	// Listen makes the relay LISTEN for the NOTIFY trigger's wake-ups instead of
	// probing. The trigger is disabled by migration 00006: enable it as well,
	//	ALTER TABLE sagabox.outbox_messages ENABLE TRIGGER outbox_messages_notify;
	// A notifying commit takes PostgreSQL's global notify lock, so producers
	// commit one at a time (doc.go, Wake-ups, has the figures). Defaults to false.
	Listen bool
	// DisableNotify turns Listen off.
	//
	// Deprecated: the relay listens only when Listen is set.
	DisableNotify bool
	// MaxAttempts is how many failed publishes a message gets before it is
	// dead-lettered. Defaults to 10.
	MaxAttempts int
	// RetryBackoffMin is the wait after a message's first failed publish; it
	// doubles with every further failure. Defaults to 1s.
	RetryBackoffMin time.Duration
	// RetryBackoffMax caps a message's retry wait. Defaults to 5m.
	RetryBackoffMax time.Duration
	// ErrorBackoffMin is the pause of the whole loop after the database or the
	// broker failed as a whole; it doubles while the failures last. Defaults to 100ms.
	ErrorBackoffMin time.Duration
	// ErrorBackoffMax caps the loop's pause. Defaults to 10s.
	ErrorBackoffMax time.Duration
	// LeaseTTL is how long a shard lease lasts without a heartbeat: a relay that
	// dies (kill -9) loses its shards to the others after LeaseTTL plus at most one
	// HeartbeatInterval. Defaults to 10s.
	LeaseTTL time.Duration
	// HeartbeatInterval is how often leases are renewed and shares rebalanced.
	// Defaults to 2s.
	HeartbeatInterval time.Duration
	// PublishTimeout bounds one batch's publish. A batch starts only on shards whose
	// lease stays valid for PublishTimeout, so a relay never publishes on a lease
	// that may have expired. Defaults to 5s.
	PublishTimeout time.Duration
	// HoldWarnAfter is the age at which the oldest running transaction on the
	// server, which keeps vacuum from removing published rows (see Hooks.HeldBack),
	// is logged with its pid, start and query, once a minute while it lasts.
	// Defaults to 30s.
	HoldWarnAfter time.Duration
	// Now is the clock for retry scheduling and dead-letter times (not for leases,
	// which use the database clock). Defaults to time.Now.
	Now func() time.Time
	// Logger receives operational messages. Defaults to discarding them.
	Logger *slog.Logger
	// Hooks observe what the relay does, e.g. for metrics. Defaults to none.
	Hooks Hooks
}

// PoolConns is how many pool connections a relay with c uses at once at most: per
// publish loop, the claim running ahead and the settle of the batch before (doc.go,
// Pipelining) and the settles of its MaxPublishes-1 batches under way after their
// cycles; then one for heartbeats and one for the probe (none with Listen, whose
// connection is its own). Give the pool at least this many (pool_max_conns): with
// fewer the loops wait for connections, and Run warns.
func (c Config) PoolConns() int32 {
	c.applyDefaults()
	want := int32((1+c.MaxPublishes)*c.Workers) + 1
	if !c.Listen {
		want++
	}
	return want
}

func (c *Config) applyDefaults() {
	if c.Schema == "" {
		c.Schema = migrations.DefaultSchema
	}
	if c.ID == "" {
		host, _ := os.Hostname()
		c.ID = fmt.Sprintf("%s-%d-%s", host, os.Getpid(), uuid.NewString()[:8])
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	if c.BatchSize == 0 {
		c.BatchSize = BatchSizeDefault
	}
	if c.MaxBatchBytes == 0 {
		c.MaxBatchBytes = MaxBatchBytesDefault
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = MaxAttemptsDefault
	}
	if c.Workers == 0 {
		c.Workers = WorkersDefault
	}
	if c.MaxPublishes == 0 {
		c.MaxPublishes = MaxPublishesDefault
	}
	def(&c.PollInterval, PollIntervalDefault)
	def(&c.ProbeInterval, ProbeIntervalDefault)
	def(&c.BusyInterval, min(BusyIntervalDefault, c.ProbeInterval))
	if c.DisableNotify {
		c.Listen = false
	}
	def(&c.RetryBackoffMin, RetryBackoffMinDefault)
	def(&c.RetryBackoffMax, RetryBackoffMaxDefault)
	def(&c.ErrorBackoffMin, ErrorBackoffMinDefault)
	def(&c.ErrorBackoffMax, ErrorBackoffMaxDefault)
	def(&c.LeaseTTL, LeaseTTLDefault)
	def(&c.HeartbeatInterval, HeartbeatIntervalDefault)
	def(&c.PublishTimeout, PublishTimeoutDefault)
	def(&c.HoldWarnAfter, HoldWarnAfterDefault)
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
}

func (c *Config) validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrInvalidConfig}, args...)...))
	}
	if err := migrations.ValidateSchema(c.Schema); err != nil {
		bad("Schema: %v", err)
	} else if len(c.Schema) > 56 {
		bad("Schema %q is longer than 56 bytes (the NOTIFY channel adds 7)", c.Schema)
	}
	if c.BatchSize < 1 || c.BatchSize > 10000 {
		bad("BatchSize is %d; use 1..10000", c.BatchSize)
	}
	if c.MaxBatchBytes < 1 {
		bad("MaxBatchBytes is %d; it must be positive (0 for the 8 MiB default)", c.MaxBatchBytes)
	}
	if c.Workers < 1 || c.Workers > Shards {
		bad("Workers is %d; use 1..%d", c.Workers, Shards)
	}
	if c.MaxPublishes < 1 || c.MaxPublishes > 16 {
		bad("MaxPublishes is %d; use 1..16", c.MaxPublishes)
	}
	if c.MaxAttempts < 1 {
		bad("MaxAttempts is %d; it must be at least 1", c.MaxAttempts)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"PollInterval", c.PollInterval}, {"ProbeInterval", c.ProbeInterval}, {"BusyInterval", c.BusyInterval}, {"RetryBackoffMin", c.RetryBackoffMin}, {"RetryBackoffMax", c.RetryBackoffMax},
		{"ErrorBackoffMin", c.ErrorBackoffMin}, {"ErrorBackoffMax", c.ErrorBackoffMax}, {"LeaseTTL", c.LeaseTTL},
		{"HeartbeatInterval", c.HeartbeatInterval}, {"PublishTimeout", c.PublishTimeout},
		{"HoldWarnAfter", c.HoldWarnAfter},
	} {
		if d.v < 0 {
			bad("%s is %v; it must be positive (or 0 for the default)", d.name, d.v)
		}
	}
	if c.RetryBackoffMax < c.RetryBackoffMin {
		bad("RetryBackoffMax (%v) is below RetryBackoffMin (%v)", c.RetryBackoffMax, c.RetryBackoffMin)
	}
	if c.ErrorBackoffMax < c.ErrorBackoffMin {
		bad("ErrorBackoffMax (%v) is below ErrorBackoffMin (%v)", c.ErrorBackoffMax, c.ErrorBackoffMin)
	}
	if c.LeaseTTL < 2*c.HeartbeatInterval {
		bad("LeaseTTL (%v) must be at least twice HeartbeatInterval (%v), or one late heartbeat loses every lease", c.LeaseTTL, c.HeartbeatInterval)
	}
	if c.PublishTimeout+c.HeartbeatInterval >= c.LeaseTTL {
		bad("PublishTimeout (%v) plus HeartbeatInterval (%v) must be below LeaseTTL (%v), or no batch could start on a renewed lease",
			c.PublishTimeout, c.HeartbeatInterval, c.LeaseTTL)
	}
	return errors.Join(errs...)
}
