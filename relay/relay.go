package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagabox/sagabox/outbox"
)

// Relay publishes committed outbox rows of the shards it leases. Create it with New
// and start it with Run.
type Relay struct {
	db      *pgxpool.Pool
	pub     Publisher
	cfg     Config
	q       queries
	log     *slog.Logger
	leases  leaseSet
	cycleMu sync.RWMutex    // read-held by each loop while its batch is in flight
	wakeC   []chan struct{} // one per publish loop
	running atomic.Bool
	lastOK  atomic.Int64 // unix nanos of the last successful heartbeat
}

// New returns a Relay publishing db's outbox through pub. It applies cfg's defaults
// and validates it; the error joins every problem found.
func New(db *pgxpool.Pool, pub Publisher, cfg Config) (*Relay, error) {
	var errs []error
	if db == nil {
		errs = append(errs, fmt.Errorf("%w: the database pool is nil", ErrInvalidConfig))
	}
	if pub == nil {
		errs = append(errs, fmt.Errorf("%w: the Publisher is nil", ErrInvalidConfig))
	}
	cfg.applyDefaults()
	if db != nil && int32(cfg.Workers) >= db.Config().MaxConns {
		// Each loop holds a connection through its claim and settle; heartbeats need one more.
		errs = append(errs, fmt.Errorf("%w: Workers (%d) needs %d pool connections (one per publish loop, one for heartbeats), the pool has MaxConns %d: lower Workers or raise pool_max_conns in the database URL",
			ErrInvalidConfig, cfg.Workers, cfg.Workers+1, db.Config().MaxConns))
	}
	if err := errors.Join(append(errs, cfg.validate())...); err != nil {
		return nil, fmt.Errorf("relay: %w", err)
	}
	wakeC := make([]chan struct{}, cfg.Workers)
	for i := range wakeC {
		wakeC[i] = make(chan struct{}, 1)
	}
	return &Relay{
		db: db, pub: pub, cfg: cfg,
		q:      newQueries(cfg.Schema),
		log:    cfg.Logger.With("relay", cfg.ID),
		leases: leaseSet{owned: map[int16]time.Time{}},
		wakeC:  wakeC,
	}, nil
}

// ID returns the relay's id in the lease tables.
func (r *Relay) ID() string { return r.cfg.ID }

// Health returns nil while the relay is running and its last heartbeat (a round
// trip to the database) succeeded within LeaseTTL; otherwise an error saying why.
// It does not check the broker: a broker outage shows in the Failed hook and the lag.
func (r *Relay) Health() error {
	if !r.running.Load() {
		return errors.New("relay: not running")
	}
	last := r.lastOK.Load()
	if last == 0 {
		return errors.New("relay: no heartbeat has reached the database yet")
	}
	if age := time.Since(time.Unix(0, last)); age > r.cfg.LeaseTTL {
		return fmt.Errorf("relay: last successful heartbeat %v ago (lease TTL %v): database unreachable?", age.Round(time.Millisecond), r.cfg.LeaseTTL)
	}
	return nil
}

// Run publishes until ctx ends, then finishes the batch in flight, releases its
// leases so other relays take over at once, and returns nil. It returns an error
// only if it cannot start: a bad schema (ErrNotMigrated) or a second Run.
// Database and broker outages are logged and waited out with backoff.
// Run does not close the Publisher.
func (r *Relay) Run(ctx context.Context) error {
	if !r.running.CompareAndSwap(false, true) {
		return ErrAlreadyRunning
	}
	defer r.running.Store(false)
	if err := r.checkSchema(ctx); err != nil {
		return err
	}
	r.log.Info("relay: started", "schema", r.cfg.Schema, "batch", r.cfg.BatchSize, "lease_ttl", r.cfg.LeaseTTL)

	loopCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() { r.leaseLoop(loopCtx) })
	if !r.cfg.DisableNotify {
		wg.Go(func() { r.listenLoop(loopCtx) })
	}
	for w := range r.cfg.Workers {
		wg.Go(func() { r.publishLoop(loopCtx, w) })
	}
	<-loopCtx.Done()
	wg.Wait()

	stopCtx, stop := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer stop()
	r.leaveAll(stopCtx)
	r.log.Info("relay: stopped")
	return nil
}

// checkSchema fails fast on a schema without the outbox tables; other errors
// (the database is down) are left to the loops, which wait them out.
func (r *Relay) checkSchema(ctx context.Context) error {
	var n int
	err := r.db.QueryRow(ctx, r.q.check).Scan(&n)
	switch {
	case notMigrated(err):
		return fmt.Errorf("relay: schema %q: %w; run the migrations first (sagactl migrate up --schema %s): %v",
			r.cfg.Schema, ErrNotMigrated, r.cfg.Schema, err)
	case err == nil && n != Shards:
		return fmt.Errorf("relay: schema %q has %d shard leases, this relay expects %d: %w", r.cfg.Schema, n, Shards, ErrNotMigrated)
	case err != nil:
		r.log.Warn("relay: database not reachable at start; retrying", "err", err)
	}
	return nil
}

// wake makes every publish loop look for rows now.
func (r *Relay) wake() {
	for w := range r.wakeC {
		r.wakeWorker(w)
	}
}

func (r *Relay) wakeWorker(w int) {
	select {
	case r.wakeC[w] <- struct{}{}:
	default:
	}
}

// heldPauseMin is the first wait before looking again at rows held back by an
// open older transaction.
const heldPauseMin = 10 * time.Millisecond

// nextHeldPause returns how long a publish loop waits before looking again at the
// held rows of its last cycle (0: none held, wait for a wake-up or the poll). Held
// rows become ready without any notification when the older transaction holding
// them inserted no outbox row, so the loop looks again soon and backs off while
// they stay held. The pause doubles only over cycles its own timer started
// (afterPause); a cycle a notification started begins again at heldPauseMin.
// Doubling it on every cycle, as before, let it reach PollInterval under steady
// load (nearly every cycle sees some rows of still-open transactions), and then the
// last rows of a burst, held for a millisecond, waited up to PollInterval after
// the last notification. An idle relay behind a long transaction still backs off
// to PollInterval: no spinning.
func nextHeldPause(prev time.Duration, held int, afterPause bool, poll time.Duration) time.Duration {
	switch {
	case held == 0:
		return 0
	case afterPause && prev > 0:
		return min(2*prev, poll)
	default:
		return min(heldPauseMin, poll)
	}
}

// publishLoop is publish loop w: it serves the shards s with s mod Workers = w.
func (r *Relay) publishLoop(ctx context.Context, w int) {
	poll := time.NewTimer(r.cfg.PollInterval)
	defer poll.Stop()
	failures := 0
	heldPause := time.Duration(0)
	heldTimer := false // the last wait was the held pause running out, not a wake-up
	for ctx.Err() == nil {
		_, held, err := r.cycle(ctx, w)
		if err != nil && ctx.Err() == nil {
			failures++
			pause := backoff(r.cfg.ErrorBackoffMin, r.cfg.ErrorBackoffMax, failures)
			r.log.Warn("relay: publishing failed; backing off", "err", err, "pause", pause, "failures", failures)
			select {
			case <-ctx.Done():
			case <-time.After(pause):
			}
			continue
		}
		failures = 0
		heldPause = nextHeldPause(heldPause, held, heldTimer, r.cfg.PollInterval)
		wait := r.cfg.PollInterval
		if heldPause > 0 {
			wait = heldPause
		}
		poll.Reset(wait)
		select {
		case <-ctx.Done():
		case <-r.wakeC[w]:
			heldTimer = false
		case <-poll.C:
			heldTimer = held > 0
		}
	}
}

// cycle claims one batch of loop w's usable shards, publishes it and settles it.
// It returns how many rows it claimed, and how many it scanned but left because
// they are not ready yet (an older transaction is still open).
func (r *Relay) cycle(ctx context.Context, w int) (claimed, held int, err error) {
	r.cycleMu.RLock()
	defer r.cycleMu.RUnlock()
	shards := r.leases.usable(time.Now().Add(r.cfg.PublishTimeout))
	if r.cfg.Workers > 1 {
		shards = slices.DeleteFunc(shards, func(s int16) bool { return int(s)%r.cfg.Workers != w })
	}
	if len(shards) == 0 {
		return 0, 0, nil
	}
	start := time.Now()
	now := r.cfg.Now()
	rows, scanned, err := r.claim(ctx, shards, now)
	if err != nil {
		return 0, 0, err
	}
	held = scanned - len(rows)
	if len(rows) == 0 {
		return 0, held, nil
	}
	if scanned == r.cfg.BatchSize {
		r.wakeWorker(w) // the scan was full: more rows may be ready behind it
	}
	msgs := make([]outbox.Message, len(rows))
	for i := range rows {
		msgs[i] = rows[i].msg
	}
	// The batch finishes even when ctx ends (graceful shutdown), bounded by the
	// lease it runs under.
	bg := context.WithoutCancel(ctx)
	pubCtx, cancel := context.WithTimeout(bg, r.cfg.PublishTimeout)
	observed := r.cfg.Hooks.publish(msgs)
	err = r.pub.Publish(pubCtx, msgs)
	cancel()
	if observed != nil {
		observed(err)
	}

	var perMsg MessageErrors
	switch {
	case err == nil:
		perMsg = nil
	case errors.As(err, &perMsg) && len(perMsg) == len(msgs):
	default:
		for _, m := range msgs {
			r.cfg.Hooks.failed(m.Topic, err)
		}
		return len(rows), held, fmt.Errorf("publish %d messages: %w", len(msgs), err)
	}

	done := make([]uuid.UUID, 0, len(rows))
	var failed []failure
	var unavailable error
	heldBack := false
	published := map[string]int{}
	now = r.cfg.Now()
	for i, row := range rows {
		var mErr error
		if perMsg != nil {
			mErr = perMsg[i]
		}
		switch {
		case mErr == nil:
			done = append(done, row.msg.ID)
			published[row.msg.Topic]++
		case errors.Is(mErr, ErrHeldBack):
			heldBack = true
		case errors.Is(mErr, ErrUnavailable):
			// The broker's fault, not the message's: retry without spending an attempt.
			unavailable = mErr
			r.cfg.Hooks.failed(row.msg.Topic, mErr)
		default:
			f := failure{id: row.msg.ID, err: mErr.Error()}
			if row.attempts+1 >= r.cfg.MaxAttempts || errors.Is(mErr, ErrPermanent) {
				f.dead = &now
				r.cfg.Hooks.deadLettered(row.msg.Topic, mErr)
				r.log.Error("relay: message dead-lettered", "id", row.msg.ID, "topic", row.msg.Topic, "key", row.msg.Key,
					"attempts", row.attempts+1, "err", mErr)
			} else {
				next := now.Add(backoff(r.cfg.RetryBackoffMin, r.cfg.RetryBackoffMax, row.attempts+1))
				f.next = &next
				r.cfg.Hooks.failed(row.msg.Topic, mErr)
				r.log.Warn("relay: message publish failed; will retry", "id", row.msg.ID, "topic", row.msg.Topic,
					"attempt", row.attempts+1, "retry_at", next, "err", mErr)
			}
			failed = append(failed, f)
		}
	}
	setCtx, cancel := context.WithTimeout(bg, r.cfg.PublishTimeout)
	defer cancel()
	if err := r.q.settle(setCtx, r.db, done, failed); err != nil {
		// Published rows stay and are published again: a duplicate, never a loss.
		return len(rows), held, err
	}
	for topic, n := range published {
		r.cfg.Hooks.published(topic, n)
	}
	r.cfg.Hooks.batch(len(rows), time.Since(start))
	if unavailable != nil {
		return len(rows), held, fmt.Errorf("publish: %w", unavailable)
	}
	if heldBack {
		// The next claim decides: the rows flow if their head was dead-lettered,
		// or wait behind it if it waits for a retry.
		r.wakeWorker(w)
	}
	return len(rows), held, nil
}

// backoff returns min·2^(n-1), capped at max, with ±20% jitter so relays and
// messages that failed together do not retry in lockstep.
func backoff(lo, hi time.Duration, n int) time.Duration {
	d := lo
	for i := 1; i < n && d < hi; i++ {
		d *= 2
	}
	d = min(d, hi)
	jitter := time.Duration(float64(d) * (rand.Float64()*0.4 - 0.2))
	return max(lo, min(hi, d+jitter))
}

// listenLoop turns NOTIFYs on the outbox channel into wake-ups. It holds a
// connection of its own and reconnects with backoff; after a reconnect it wakes
// the loop once, for notifications it may have missed.
func (r *Relay) listenLoop(ctx context.Context) {
	failures := 0
	for ctx.Err() == nil {
		err := r.listen(ctx)
		if ctx.Err() != nil {
			return
		}
		failures++
		pause := backoff(r.cfg.ErrorBackoffMin, r.cfg.ErrorBackoffMax, failures)
		r.log.Warn("relay: LISTEN connection lost; polling until it is back", "err", err, "pause", pause)
		select {
		case <-ctx.Done():
		case <-time.After(pause):
		}
	}
}

func (r *Relay) listen(ctx context.Context) error {
	conn, err := pgx.ConnectConfig(ctx, r.db.Config().ConnConfig.Copy())
	if err != nil {
		return err
	}
	defer func() {
		closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		_ = conn.Close(closeCtx)
	}()
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{r.q.channel}.Sanitize()); err != nil {
		return err
	}
	r.wake()
	for {
		if _, err := conn.WaitForNotification(ctx); err != nil {
			return err
		}
		r.wake()
	}
}
