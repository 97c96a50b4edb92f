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
	db         *pgxpool.Pool
	pub        Publisher
	cfg        Config
	q          queries
	log        *slog.Logger
	leases     leaseSet
	cycleMu    sync.RWMutex    // read-held by each batch from its claim until it is settled or dropped
	releases   sync.WaitGroup  // background releases of surplus shards
	hook       func(at string) // tests: called at named points of a heartbeat (testHook)
	wakeC      []chan struct{} // one per publish loop
	loops      []*loop         // one per publish loop
	idle       atomic.Int32    // publish loops whose last cycle claimed nothing
	idleC      chan struct{}   // a publish loop went idle: the probe starts looking
	running    atomic.Bool
	lastOK     atomic.Int64 // unix nanos of the last successful heartbeat
	holdLogged time.Time    // last warning of reportHeldBack; lease loop only
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
		// Each loop needs a connection for its claim; heartbeats need one more. Fewer
		// than pipelining wants (see Config.PoolConns) only makes the loops queue: Run warns.
		errs = append(errs, fmt.Errorf("%w: Workers (%d) needs %d pool connections (one per publish loop, one for heartbeats), the pool has MaxConns %d: lower Workers or raise pool_max_conns in the database URL",
			ErrInvalidConfig, cfg.Workers, cfg.Workers+1, db.Config().MaxConns))
	}
	if err := errors.Join(append(errs, cfg.validate())...); err != nil {
		return nil, fmt.Errorf("relay: %w", err)
	}
	wakeC := make([]chan struct{}, cfg.Workers)
	loops := make([]*loop, cfg.Workers)
	for i := range wakeC {
		wakeC[i] = make(chan struct{}, 1)
		loops[i] = &loop{}
	}
	return &Relay{
		db: db, pub: pub, cfg: cfg,
		q:      newQueries(cfg.Schema),
		log:    cfg.Logger.With("relay", cfg.ID),
		leases: leaseSet{owned: map[int16]time.Time{}, releasing: map[int16]bool{}},
		wakeC:  wakeC,
		idleC:  make(chan struct{}, 1),
		loops:  loops,
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
	r.log.Info("relay: started", "schema", r.cfg.Schema, "batch", r.cfg.BatchSize, "workers", r.cfg.Workers, "lease_ttl", r.cfg.LeaseTTL)
	if have, want := r.db.Config().MaxConns, r.cfg.PoolConns(); have < want {
		r.log.Warn("relay: the pool is smaller than the relay can use: publish loops will wait for connections (raise pool_max_conns in the database URL, or lower Workers)",
			"pool_max_conns", have, "wanted", want, "workers", r.cfg.Workers)
	}

	loopCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() { r.leaseLoop(loopCtx) })
	if r.cfg.Listen {
		r.checkTrigger(ctx)
		wg.Go(func() { r.listenLoop(loopCtx) })
	} else {
		wg.Go(func() { r.probeLoop(loopCtx) })
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

// testHook calls the test's hook, if any, at point at of a heartbeat: "renewed"
// (the renew answered, not used yet) and "owned" (the owned shards were replaced).
func (r *Relay) testHook(at string) {
	if r.hook != nil {
		r.hook(at)
	}
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

// nextHeldPause returns how long a publish loop waits before looking again at the
// held rows of its last cycle (0: none held, wait for a wake-up or the poll): rows
// a run's later claims left because they committed after its first claim, or rows
// of keys still under way in a tail. They become claimable without any
// notification, so the loop looks again after lo (BusyInterval) and backs off
// while they stay held. The pause doubles only over cycles its own timer started
// (afterPause); a cycle a wake-up started begins again at lo. Doubling it on
// every cycle let it reach PollInterval under steady load, and then the last rows
// of a burst, held for a millisecond, waited up to PollInterval after the last
// wake-up. Rows that stay held back the loop off to PollInterval: no spinning.
func nextHeldPause(prev time.Duration, held int, afterPause bool, lo, poll time.Duration) time.Duration {
	switch {
	case held == 0:
		return 0
	case afterPause && prev > 0:
		return min(2*prev, poll)
	default:
		return min(lo, poll)
	}
}

// publishLoop is publish loop w: it serves the shards s with s mod Workers = w.
func (r *Relay) publishLoop(ctx context.Context, w int) {
	poll := time.NewTimer(r.cfg.PollInterval)
	defer poll.Stop()
	defer r.loops[w].drain() // the publishes still under way finish, bounded by PublishTimeout
	failures := 0
	heldPause := time.Duration(0)
	heldTimer := false // the last wait was the held pause running out, not a wake-up
	for ctx.Err() == nil {
		start := time.Now()
		claimed, held, err := r.cycle(ctx, w)
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
		heldPause = nextHeldPause(heldPause, held, heldTimer, r.cfg.BusyInterval, r.cfg.PollInterval)
		wait := r.cfg.PollInterval
		if heldPause > 0 {
			wait = heldPause
		}
		idle := claimed == 0
		if !idle && !r.cfg.Listen {
			// Busy: more rows are likely on their way. A cycle that took BusyInterval
			// or longer (a publish takes a few ms) let them gather already: claim at once.
			wait = min(wait, max(r.cfg.BusyInterval-time.Since(start), 0))
		}
		if idle {
			r.idle.Add(1)
			select {
			case r.idleC <- struct{}{}:
			default:
			}
		}
		poll.Reset(wait)
		select {
		case <-ctx.Done():
		case <-r.wakeC[w]:
			heldTimer = false
		case <-poll.C:
			heldTimer = held > 0
		}
		if idle {
			r.idle.Add(-1)
		}
	}
}

// Probe back-off: after probeIdleAfter without new rows the interval doubles per
// empty probe, up to probeIntervalMax.
const (
	probeIdleAfter   = time.Second
	probeIntervalMax = 100 * time.Millisecond
)

// probeLoop wakes the publish loops when rows were added since its last look,
// while any loop is idle (a busy loop claims again after BusyInterval by itself;
// while every loop is busy the probe sleeps until one goes idle, instead of
// waking every BusyInterval for nothing). After rows were found, or once a loop
// went idle, it looks again after BusyInterval and doubles the interval per empty
// probe up to ProbeInterval: the
// next row of a busy stream, or the reply a saga's step is about to commit, is
// found within a millisecond or two instead of half a ProbeInterval on average,
// for a few probes more per burst. After probeIdleAfter without new rows the
// interval keeps doubling, up to probeIntervalMax.
// The probe reads the index entries after the highest seq it saw before, so it
// costs one short index range scan; it cannot see a row that becomes visible
// below that seq (its transaction took its seq early and committed late): such a
// row waits for the next row added, for a held-rows re-check, or for PollInterval.
func (r *Relay) probeLoop(ctx context.Context) {
	maxInterval := min(probeIntervalMax, r.cfg.PollInterval)
	interval := r.cfg.BusyInterval
	var seen int64
	// late holds, oldest first, the xmax of each probe that found rows while
	// transactions were open: one of those may have taken a seq below the rows
	// found and commit its row later, where no probe looks. Once the xmin reaches
	// one they have all ended, and the loops claim once more. Each is kept on its
	// own (at most maxProposals), so that a transaction opened after a probe does
	// not delay the wake-up that probe owes.
	var late []uint64
	lastNew := time.Now()
	t := time.NewTimer(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if r.idle.Load() == 0 {
			select {
			case <-ctx.Done():
				return
			case <-r.idleC:
			}
			lastNew, interval = time.Now(), r.cfg.BusyInterval
		} else {
			p, err := r.q.msgs.Probe(ctx, r.db, seen)
			switch {
			case err != nil:
				interval = maxInterval // the loops report database trouble
			case p.Found:
				seen, lastNew, interval = p.Seq, time.Now(), r.cfg.BusyInterval
				late = lateAfter(late, p.Xmin)
				if p.Xmin < p.Xmax && len(late) < maxProposals && (len(late) == 0 || late[len(late)-1] < p.Xmax) {
					late = append(late, p.Xmax) // transactions are open: see late
				}
				r.wake()
			case len(late) > 0 && p.Xmin >= late[0]:
				late = lateAfter(late, p.Xmin)
				lastNew, interval = time.Now(), r.cfg.BusyInterval
				r.wake()
			case time.Since(lastNew) > probeIdleAfter:
				interval = min(2*interval, maxInterval)
			default:
				interval = min(2*interval, max(r.cfg.ProbeInterval, interval))
			}
		}
		t.Reset(interval)
	}
}

// lateAfter drops the thresholds of late that xmin has reached.
func lateAfter(late []uint64, xmin uint64) []uint64 {
	n := 0
	for n < len(late) && late[n] <= xmin {
		n++
	}
	return append(late[:0], late[n:]...)
}

// runLimit bounds one cycle's run of pipelined claims: the claims of a run scan
// forward from the row after the last one scanned, so rows it left behind
// (committed after its first claim, or due for a retry) are looked at again only
// by a later run, which starts from the loop's floor or the oldest row.
func (r *Relay) runLimit() time.Duration { return min(r.cfg.PollInterval, time.Second) }

// batch is one claim: the rows to publish and what it holds.
type batch struct {
	rows    []row
	scanned int // rows the claim scanned, of which skipped were rows under way in tails
	skipped int
	full    bool // the claim stopped at BatchSize or MaxBatchBytes: more may be waiting
	start   time.Time
	err     error
	release func() // ends the batch's hold on cycleMu; safe to call twice
}

// claimBatch claims the next rows after cur, leaving the unkeyed rows in skip
// (under way in a tail; keyed ones are left by cur.Blocked). The batch
// read-holds cycleMu until it is settled or dropped, so shards are never
// released under it.
func (r *Relay) claimBatch(ctx context.Context, shards []int16, now time.Time, cur *outbox.Cursor, skip map[uuid.UUID]bool) batch {
	r.cycleMu.RLock()
	b := batch{start: time.Now(), release: sync.OnceFunc(r.cycleMu.RUnlock)}
	b.rows, b.scanned, b.full, b.err = r.claim(ctx, shards, now, cur)
	if b.err != nil {
		b.release()
	} else if len(skip) > 0 {
		n := len(b.rows)
		b.rows = slices.DeleteFunc(b.rows, func(rw row) bool { return skip[rw.msg.ID] })
		b.skipped = n - len(b.rows)
	}
	return b
}

// dropBatch waits for a claim running ahead and drops its rows unpublished.
func dropBatch(next <-chan batch) {
	if next != nil {
		(<-next).release()
	}
}

// loop is what a publish loop keeps between its cycles: the batches its cycles
// left under way when they returned (tails), oldest first. Only the loop's own
// goroutine (or Cycle, in tests) touches the slice.
type loop struct {
	tails []*tail
	floor floor // where its runs start to scan
}

// tail is the last batch of a cycle that caught up, published and settled while
// the loop goes on, so that rows committed during its publish do not wait for
// its acknowledgement.
type tail struct {
	rows  []row
	done  chan struct{} // closed once the batch is settled or dropped
	err   error         // set before done is closed
	clean bool          // every row was acknowledged and deleted; set before done is closed
}

// reap forgets the tails that ended and returns their errors.
func (l *loop) reap() error {
	var errs []error
	l.tails = slices.DeleteFunc(l.tails, func(t *tail) bool {
		select {
		case <-t.done:
			errs = append(errs, t.err)
			return true
		default:
			return false
		}
	})
	return errors.Join(errs...)
}

// waitBelow waits until fewer than n tails are under way (each ends within two
// PublishTimeouts: its publish and its settle) and returns the errors of those
// that ended.
func (l *loop) waitBelow(n int) error {
	var errs []error
	for {
		errs = append(errs, l.reap())
		if len(l.tails) < n {
			return errors.Join(errs...)
		}
		<-l.tails[0].done
	}
}

// drain waits for every tail.
func (l *loop) drain() error { return l.waitBelow(1) }

// pending returns the keys of the rows under way in tails, and the ids of those
// without a key. A claim leaves both, so no later row of such a key is published
// before the one under way is acknowledged and settled, or dropped and claimed
// again in its turn.
func (l *loop) pending() (keys map[string]bool, unkeyed map[uuid.UUID]bool) {
	keys = map[string]bool{}
	for _, t := range l.tails {
		for _, rw := range t.rows {
			if rw.msg.Key != "" {
				keys[rw.msg.Key] = true
				continue
			}
			if unkeyed == nil {
				unkeyed = map[uuid.UUID]bool{}
			}
			unkeyed[rw.msg.ID] = true
		}
	}
	return keys, unkeyed
}

// cycle publishes loop w's usable shards until it has caught up (a claim scanned
// less than a full batch) or runLimit passed. Its work is pipelined: while one
// batch is published, the next is claimed (on another connection), and the batch
// before is settled; publishes of a run follow each other in claim order, so a
// key's rows go out in order. A key whose row failed in one batch is dropped from
// the batches claimed after it in the run, and the next run finds its rows again.
// The last batch of a run that caught up is a tail: the cycle returns while it is
// published and settled, and the loop's next cycles leave the keys (and the
// unkeyed rows) of its tails, so up to MaxPublishes batches of disjoint keys are
// published at once. Every batch is published only if all of the run's shards
// stay leased for PublishTimeout; otherwise the run ends and the next one uses
// the shards it has. It returns how many rows it claimed, and how many it scanned
// but left because they are not ready yet (committed after the run's first claim,
// or an earlier row of their key is under way in a tail).
func (r *Relay) cycle(ctx context.Context, w int) (claimed, held int, err error) {
	l := r.loops[w]
	if err := l.waitBelow(r.cfg.MaxPublishes); err != nil {
		l.floor.reset()
		return 0, 0, err
	}
	// A wake-up sent before this point is answered by this cycle's claim, which
	// sees every row committed before it: forget it, or the loop claims again at
	// once for nothing (the tail that has just ended sent one). A tail sends its
	// wake-up after it ended, so the tails that ended before the drain are reaped
	// after it, and the keys of those still under way are left only when their
	// wake-up is still to come.
	select {
	case <-r.wakeC[w]:
	default:
	}
	if err := l.reap(); err != nil {
		l.floor.reset()
		return 0, 0, err
	}
	shards := r.leases.usable(time.Now().Add(r.cfg.PublishTimeout))
	if r.cfg.Workers > 1 {
		shards = slices.DeleteFunc(shards, func(s int16) bool { return int(s)%r.cfg.Workers != w })
	}
	if len(shards) == 0 {
		return 0, 0, nil
	}
	runEnd := time.Now().Add(r.runLimit())
	now := r.cfg.Now() // one now for the run's claims: see outbox.Cursor
	keys, skip := l.pending()
	cur := &outbox.Cursor{Blocked: keys, Seq: l.floor.start(shards, time.Now(), r.cfg.PollInterval, r.cfg.MaxPublishes == 1),
		MaxBytes: r.cfg.MaxBatchBytes}
	dirty := false // rows of this run may be left pending: see floor
	var last *tail
	defer func() {
		l.floor.ran(runOutcome{clean: err == nil && held == 0 && !dirty && !cur.Retrying, seq: cur.Seq, snapshot: cur.Snapshot, tail: last})
	}()
	var settling <-chan error // the settle in flight
	defer func() {
		if settling != nil {
			if sErr := <-settling; err == nil {
				err = sErr
			}
		}
	}()
	var failedKeys []string // keys that failed in the batch last published
	b := r.claimBatch(ctx, shards, now, cur, skip)
	for {
		if b.err != nil {
			return claimed, held, b.err
		}
		held += b.scanned - b.skipped - len(b.rows)
		var next chan batch
		full := b.full
		if full && len(b.rows) > 0 { // more may be waiting behind this batch
			if time.Now().Before(runEnd) {
				next = make(chan batch, 1)
				go func() { next <- r.claimBatch(ctx, shards, now, cur, skip) }()
			} else {
				r.wakeWorker(w) // a new run, from the floor
			}
		}
		if len(b.rows) == 0 {
			b.release()
		} else {
			if !r.leases.allUsable(shards, time.Now().Add(r.cfg.PublishTimeout)) {
				b.release()
				dropBatch(next)
				r.wakeWorker(w)
				dirty = true
				return claimed, held, nil
			}
			if !full {
				// Caught up: the next cycle need not wait for this publish.
				last = r.publishTail(ctx, w, b)
				l.tails = append(l.tails, last)
				return claimed + len(b.rows), held, nil
			}
			s, pubErr := r.publish(ctx, b.rows)
			if pubErr != nil {
				b.release()
				dropBatch(next)
				return claimed + len(b.rows), held, pubErr
			}
			claimed += len(b.rows)
			var prevErr error
			if settling != nil {
				prevErr = <-settling
			}
			settling = r.settle(ctx, b, s)
			if prevErr != nil || s.unavailable != nil {
				dropBatch(next)
				if prevErr != nil {
					return claimed, held, prevErr
				}
				return claimed, held, fmt.Errorf("publish: %w", s.unavailable)
			}
			if s.heldBack {
				// The next run decides: the rows flow if their head was dead-lettered,
				// or wait behind it if it waits for a retry.
				r.wakeWorker(w)
			}
			failedKeys = s.failedKeys
			dirty = dirty || !s.clean()
		}
		if next == nil {
			return claimed, held, nil
		}
		b = <-next
		if b.err == nil && len(failedKeys) > 0 {
			// The claim ran before these keys failed: hold them back from now on.
			for _, k := range failedKeys {
				cur.Blocked[k] = true
			}
			b.rows = slices.DeleteFunc(b.rows, func(rw row) bool { return rw.msg.Key != "" && cur.Blocked[rw.msg.Key] })
		}
		failedKeys = nil
	}
}

// publishTail publishes and settles b, the last batch of a cycle, in the
// background. Its tail ends when b is settled or dropped (the publish failed as
// a whole: its rows are claimed again), and then wakes the loop: rows of its keys
// may be waiting for it.
func (r *Relay) publishTail(ctx context.Context, w int, b batch) *tail {
	t := &tail{rows: b.rows, done: make(chan struct{})}
	go func() {
		defer r.wakeWorker(w)
		defer close(t.done)
		s, err := r.publish(ctx, b.rows)
		if err != nil {
			b.release()
			t.err = err
			return
		}
		if err := <-r.settle(ctx, b, s); err != nil {
			t.err = err
			return
		}
		if s.unavailable != nil {
			t.err = fmt.Errorf("publish: %w", s.unavailable)
		}
		t.clean = s.clean()
	}()
	return t
}

// published is what a publish leaves to settle.
type published struct {
	done       []outbox.Loc
	failed     []failure
	byTopic    map[string]int
	failedKeys []string // keys whose later rows must wait
	heldBack   bool
	// unavailable is set when the broker refused some messages as a whole.
	unavailable error
}

// clean reports whether every row was acknowledged: none failed, none was held
// back or refused as unavailable (publish sorts every refused row into one of the
// three), so none is left pending.
func (p published) clean() bool {
	return len(p.failed) == 0 && !p.heldBack && p.unavailable == nil
}

// publish sends rows and sorts the outcome. An error means the batch failed as a
// whole; its rows stay as they are.
func (r *Relay) publish(ctx context.Context, rows []row) (published, error) {
	msgs := make([]outbox.Message, len(rows))
	for i := range rows {
		msgs[i] = rows[i].msg
	}
	// The batch finishes even when ctx ends (graceful shutdown), bounded by the
	// lease it runs under.
	pubCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.cfg.PublishTimeout)
	observed := r.cfg.Hooks.publish(msgs)
	err := r.pub.Publish(pubCtx, msgs)
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
		return published{}, fmt.Errorf("publish %d messages: %w", len(msgs), err)
	}

	p := published{done: make([]outbox.Loc, 0, len(rows)), byTopic: map[string]int{}}
	now := r.cfg.Now()
	for i, row := range rows {
		var mErr error
		if perMsg != nil {
			mErr = perMsg[i]
		}
		if mErr != nil && row.msg.Key != "" {
			p.failedKeys = append(p.failedKeys, row.msg.Key)
		}
		switch {
		case mErr == nil:
			p.done = append(p.done, row.loc)
			p.byTopic[row.msg.Topic]++
		case errors.Is(mErr, ErrHeldBack):
			p.heldBack = true
		case errors.Is(mErr, ErrUnavailable):
			// The broker's fault, not the message's: retry without spending an attempt.
			p.unavailable = mErr
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
			p.failed = append(p.failed, f)
		}
	}
	return p, nil
}

// settle deletes b's published rows and records its failures in the background,
// then ends b's hold on cycleMu; the channel gets the outcome. A settle that fails
// leaves published rows in place, to be published again: a duplicate, never a loss.
func (r *Relay) settle(ctx context.Context, b batch, p published) <-chan error {
	done := make(chan error, 1)
	go func() {
		defer b.release()
		setCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.cfg.PublishTimeout)
		defer cancel()
		if err := r.q.settle(setCtx, r.db, p.done, p.failed); err != nil {
			done <- err
			return
		}
		for topic, n := range p.byTopic {
			r.cfg.Hooks.published(topic, n)
		}
		r.cfg.Hooks.batch(len(b.rows), time.Since(b.start))
		done <- nil
	}()
	return done
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

// checkTrigger warns when Listen is set but the NOTIFY trigger is disabled.
func (r *Relay) checkTrigger(ctx context.Context) {
	var enabled bool
	if err := r.db.QueryRow(ctx, r.q.trigger).Scan(&enabled); err == nil && !enabled {
		r.log.Warn("relay: Listen is set but the NOTIFY trigger is disabled, so rows are found only every PollInterval; enable it (ALTER TABLE ... ENABLE TRIGGER outbox_messages_notify) or unset Listen",
			"schema", r.cfg.Schema, "poll_interval", r.cfg.PollInterval)
	}
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
