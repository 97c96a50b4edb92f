package inbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/sagabox/sagabox/migrations"
)

// DefaultDeadLetterRetention is how long resolved (replayed or deleted) dead letters
// are kept unless a SweeperConfig says otherwise: long enough to look back on what an
// operator did.
const DefaultDeadLetterRetention = 30 * 24 * time.Hour

// DefaultRetention is the dedup window unless a SweeperConfig says otherwise: Kafka's
// default topic retention (log.retention.hours = 168).
const DefaultRetention = 7 * 24 * time.Hour

// SweeperConfig configures a Sweeper.
type SweeperConfig struct {
	// Schema holds the inbox tables. Defaults to "sagabox".
	Schema string
	// Consumer limits sweeping to one consumer name's entries. Defaults to "" (all).
	Consumer string
	// Retention is the dedup window: entries received longer ago are deleted, and a
	// redelivery of such a message is processed again. Keep it above the longest
	// possible redelivery delay (the topic's retention if consumers may rewind).
	// Defaults to 7 days.
	Retention time.Duration
	// DeadLetterRetention is how long a dead letter is kept after it was resolved
	// (replayed or deleted); unresolved dead letters are never swept. Negative keeps
	// resolved ones forever. Defaults to 30 days.
	DeadLetterRetention time.Duration
	// Interval is the time between sweeps. Defaults to 1 minute.
	Interval time.Duration
	// BatchSize is the number of rows one DELETE statement removes. Defaults to 1000.
	BatchSize int
	// Logger receives sweep results and errors. Defaults to discarding.
	Logger *slog.Logger
	// Now returns the current time; tests inject it. Defaults to time.Now.
	Now func() time.Time
}

func (c *SweeperConfig) applyDefaults() {
	if c.Schema == "" {
		c.Schema = migrations.DefaultSchema
	}
	if c.Retention == 0 {
		c.Retention = DefaultRetention
	}
	if c.DeadLetterRetention == 0 {
		c.DeadLetterRetention = DefaultDeadLetterRetention
	}
	if c.Interval == 0 {
		c.Interval = time.Minute
	}
	if c.BatchSize == 0 {
		c.BatchSize = 1000
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

func (c *SweeperConfig) validate() error {
	var errs []error
	// Messages name the Config field, capitalised as in Go.
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if c.Retention < 0 {
		add("Retention is %s; it must be positive (0 means the 7-day default)", c.Retention)
	}
	if c.Interval < 0 {
		add("Interval is %s; it must be positive (0 means 1 minute)", c.Interval)
	}
	if c.BatchSize < 0 {
		add("BatchSize is %d; it must be positive (0 means 1000)", c.BatchSize)
	}
	if err := migrations.ValidateSchema(c.Schema); err != nil {
		add("Schema: %w", err)
	}
	if c.Retention > 0 && c.Interval > c.Retention {
		add("Interval %s is longer than Retention %s; entries would outlive the window by more than the window itself", c.Interval, c.Retention)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("inbox: %w: %w", ErrInvalidConfig, err)
	}
	return nil
}

// Sweeper deletes inbox entries older than the retention window, and resolved dead
// letters older than theirs, periodically, in batches that hold no long locks.
type Sweeper struct {
	db    Execer
	store *Store
	cfg   SweeperConfig
}

// NewSweeper returns a Sweeper working on db (typically a *pgxpool.Pool).
func NewSweeper(db Execer, cfg SweeperConfig) (*Sweeper, error) {
	cfg.applyDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	store, err := NewStore(cfg.Schema)
	if err != nil {
		return nil, err
	}
	return &Sweeper{db: db, store: store, cfg: cfg}, nil
}

// SweepOnce deletes every entry received before Now() - Retention and every dead
// letter resolved before Now() - DeadLetterRetention, and returns how many rows.
func (s *Sweeper) SweepOnce(ctx context.Context) (int64, error) {
	now := s.cfg.Now()
	n, err := s.store.Sweep(ctx, s.db, s.cfg.Consumer, now.Add(-s.cfg.Retention), s.cfg.BatchSize)
	if err != nil || s.cfg.DeadLetterRetention < 0 {
		return n, err
	}
	dead, err := s.store.SweepDeadLetters(ctx, s.db, s.cfg.Consumer, now.Add(-s.cfg.DeadLetterRetention), s.cfg.BatchSize)
	return n + dead, err
}

// Run sweeps at once and then every Interval until ctx ends, and returns nil then.
// A failed sweep is logged and retried at the next interval: a late sweep only
// keeps rows a little longer.
func (s *Sweeper) Run(ctx context.Context) error {
	t := time.NewTicker(s.cfg.Interval)
	defer t.Stop()
	for {
		n, err := s.SweepOnce(ctx)
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil:
			s.cfg.Logger.Warn("inbox sweep failed", "consumer", s.cfg.Consumer, "err", err)
		case n > 0:
			s.cfg.Logger.Info("inbox sweep", "consumer", s.cfg.Consumer, "deleted", n, "retention", s.cfg.Retention)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
