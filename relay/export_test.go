package relay

import (
	"context"
	"time"
)

// Heartbeat runs one lease heartbeat, for tests that drive a relay step by step.
func Heartbeat(ctx context.Context, r *Relay) error { return r.heartbeat(ctx) }

// Cycle runs one claim → publish → settle cycle of every publish loop, one after
// the other, and returns how many rows they claimed.
func Cycle(ctx context.Context, r *Relay) (int, error) {
	total := 0
	for w := range r.cfg.Workers {
		n, _, err := r.cycle(ctx, w)
		total += n
		if dErr := r.loops[w].drain(); err == nil {
			err = dErr // the cycle's last batch is published in the background
		}
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

// OwnedShards returns how many shards r holds.
func OwnedShards(r *Relay) int { return r.leases.count() }

// Backoff exposes the backoff schedule.
var Backoff = backoff

// UsableShards returns how many shards r may start a batch on now.
func UsableShards(r *Relay) int { return len(r.leases.usable(time.Now().Add(r.cfg.PublishTimeout))) }

// NextHeldPause exposes the re-check schedule of held rows.
var NextHeldPause = nextHeldPause

// HoldCycle read-holds the lock a batch in flight holds, as a batch would: a
// background release of surplus shards waits until the returned func is called.
func HoldCycle(r *Relay) (done func()) {
	r.cycleMu.RLock()
	return r.cycleMu.RUnlock
}

// HeartbeatHook makes every heartbeat of r call f at its named points (testHook).
func HeartbeatHook(r *Relay, f func(at string)) { r.hook = f }

// WaitReleases waits for r's background releases of surplus shards.
func WaitReleases(r *Relay) { r.releases.Wait() }

// Floor returns where publish loop w's runs start to scan (see floor).
func Floor(r *Relay, w int) int64 { return r.loops[w].floor.seq }
