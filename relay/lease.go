package relay

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// Shards is the number of key shards, fixed by the migration (the "shard" column
// is hashtext(key) & 255 and outbox_leases has one row per shard).
const Shards = 256

// leaseSet is this relay's view of the shards it owns. validUntil is measured on
// the local monotonic clock from just before the renewing statement was sent, so
// it always ends before the database considers the lease expired.
type leaseSet struct {
	mu    sync.Mutex
	owned map[int16]time.Time
	// releasing are surplus shards no longer used, whose release waits for the
	// batches in flight; still owned in the database until then.
	releasing map[int16]bool
}

// usable returns the shards whose lease stays valid until at least deadline.
func (l *leaseSet) usable(deadline time.Time) []int16 {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]int16, 0, len(l.owned))
	// In shard order, by lookup: ranging over the map and sorting the result took 6% of
	// the relay's CPU at 2,000 msgs/s offered (a cycle every millisecond or two).
	for s := range int16(Shards) {
		if until, ok := l.owned[s]; ok && until.After(deadline) {
			out = append(out, s)
		}
	}
	return out
}

func (l *leaseSet) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.owned)
}

// heartbeat registers the relay as alive, renews its leases, and moves it towards
// its fair share: ceil(Shards / live relays). A surplus shard stops being used at
// once and is released in the background once the batches in flight of every
// publish loop are settled or dropped (cycleMu), so a released shard is never
// being published, and the heartbeat does not wait for a publish: waiting, it
// could outlast the leases it is there to renew.
func (r *Relay) heartbeat(ctx context.Context) error {
	ttl := interval(r.cfg.LeaseTTL)
	t0 := time.Now()
	if _, err := r.db.Exec(ctx, r.q.register, r.cfg.ID, ttl); err != nil {
		return fmt.Errorf("register relay: %w", err)
	}
	var live int
	if err := r.db.QueryRow(ctx, r.q.live).Scan(&live); err != nil {
		return fmt.Errorf("count relays: %w", err)
	}
	// The shards being released now, before the renew: a background release may
	// end (and forget them) between the renew's answer and the check below, and a
	// shard the renew still returned must not come back into use.
	r.leases.mu.Lock()
	wasReleasing := maps.Clone(r.leases.releasing)
	r.leases.mu.Unlock()
	renewed, err := r.collectShards(ctx, r.q.renew, r.cfg.ID, ttl)
	if err != nil {
		return fmt.Errorf("renew leases: %w", err)
	}
	r.testHook("renewed")
	r.leases.mu.Lock()
	renewed = slices.DeleteFunc(renewed, func(s int16) bool { return wasReleasing[s] || r.leases.releasing[s] })
	lost := len(r.leases.owned) - len(renewed)
	r.leases.owned = make(map[int16]time.Time, len(renewed))
	for _, s := range renewed {
		r.leases.owned[s] = t0.Add(r.cfg.LeaseTTL)
	}
	releasing := len(r.leases.releasing) > 0
	r.leases.mu.Unlock()
	r.testHook("owned")
	if lost > 0 {
		r.log.Warn("relay: leases expired before renewal; their shards go to other relays", "shards", lost)
	}

	share := (Shards + max(live, 1) - 1) / max(live, 1)
	switch have := len(renewed); {
	case have > share && !releasing:
		// Each relay's shards should stay one range: its claims fetch only the rows
		// of shards between its lowest and highest (outbox claim). renewed is
		// sorted and acquire takes the lowest free shards, so the relay holding shard
		// 0 gives up its highest and every other relay its lowest: the shards a
		// newcomer gets then lie side by side (TestRelaysJoiningOneByOneEachLeaseOneRange).
		surplus := renewed[share:]
		if renewed[0] > 0 {
			surplus = renewed[:have-share]
		}
		r.leases.mu.Lock()
		for _, s := range surplus {
			delete(r.leases.owned, s)
			r.leases.releasing[s] = true
		}
		r.leases.mu.Unlock()
		r.releases.Go(func() { r.release(ctx, surplus) })
	case have < share:
		t1 := time.Now()
		got, err := r.collectShards(ctx, r.q.acquire, r.cfg.ID, ttl, share-have)
		if err != nil {
			return fmt.Errorf("acquire leases: %w", err)
		}
		if len(got) > 0 {
			r.leases.mu.Lock()
			for _, s := range got {
				r.leases.owned[s] = t1.Add(r.cfg.LeaseTTL)
			}
			r.leases.mu.Unlock()
			r.log.Info("relay: acquired shards", "shards", len(got), "owned", r.leases.count(), "relays", live)
			r.wake()
		}
	}
	r.cfg.Hooks.shards(r.leases.count())
	r.lastOK.Store(time.Now().UnixNano())
	return nil
}

func (r *Relay) collectShards(ctx context.Context, sql string, args ...any) ([]int16, error) {
	rows, err := r.db.Query(ctx, sql, args...)
	if err != nil {
		return nil, err
	}
	shards, err := pgx.CollectRows(rows, pgx.RowTo[int16])
	if err != nil {
		return nil, err
	}
	slices.Sort(shards)
	return shards, nil
}

// release gives up shards that are no longer used once no batch claimed before
// is in flight. If the release fails, the shards are renewed and released again
// by a later heartbeat, or expire after LeaseTTL; leaveAll releases them on
// shutdown.
func (r *Relay) release(ctx context.Context, shards []int16) {
	r.cycleMu.Lock() // waits for the readers: then no batch claimed before is in flight
	//lint:ignore SA2001 the wait is the point
	r.cycleMu.Unlock()
	_, err := r.db.Exec(ctx, r.q.release, r.cfg.ID, shards)
	if err != nil && ctx.Err() != nil {
		return // shutting down: they stay in releasing, for leaveAll to release
	}
	r.leases.mu.Lock()
	for _, s := range shards {
		delete(r.leases.releasing, s)
	}
	r.leases.mu.Unlock()
	if err != nil {
		r.log.Warn("relay: releasing surplus shards failed; a later heartbeat retries", "shards", len(shards), "err", err)
		return
	}
	r.log.Info("relay: released shards to other relays", "shards", len(shards), "owned", r.leases.count())
}

// leaveAll releases every lease and unregisters, so the others take over at once.
func (r *Relay) leaveAll(ctx context.Context) {
	r.leases.mu.Lock()
	shards := make([]int16, 0, len(r.leases.owned)+len(r.leases.releasing))
	for s := range r.leases.owned {
		shards = append(shards, s)
	}
	for s := range r.leases.releasing { // a background release cut short by the shutdown
		shards = append(shards, s)
	}
	r.leases.owned, r.leases.releasing = map[int16]time.Time{}, map[int16]bool{}
	r.leases.mu.Unlock()
	if _, err := r.db.Exec(ctx, r.q.release, r.cfg.ID, shards); err != nil {
		r.log.Warn("relay: could not release leases on shutdown; they expire after LeaseTTL", "err", err)
	}
	if _, err := r.db.Exec(ctx, r.q.unregister, r.cfg.ID); err != nil {
		r.log.Warn("relay: could not unregister on shutdown", "err", err)
	}
}

func (r *Relay) leaseLoop(ctx context.Context) {
	t := time.NewTicker(r.cfg.HeartbeatInterval)
	defer t.Stop()
	defer r.releases.Wait()
	for {
		if err := r.heartbeat(ctx); err != nil && ctx.Err() == nil {
			r.log.Warn("relay: heartbeat failed; retrying", "err", err)
		}
		if ctx.Err() == nil {
			r.reportLag(ctx)
			r.reportHeldBack(ctx)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (r *Relay) reportLag(ctx context.Context) {
	if r.cfg.Hooks.Lag == nil {
		return
	}
	created, ok, err := r.q.msgs.OldestPending(ctx, r.db)
	switch {
	case err == nil && !ok:
		r.cfg.Hooks.lag(0)
	case err == nil:
		r.cfg.Hooks.lag(max(0, r.cfg.Now().Sub(created)))
	}
}

// allUsable reports whether every one of shards stays leased until at least deadline.
func (l *leaseSet) allUsable(shards []int16, deadline time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, s := range shards {
		if until, ok := l.owned[s]; !ok || !until.After(deadline) {
			return false
		}
	}
	return true
}
