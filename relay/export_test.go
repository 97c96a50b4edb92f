package relay

import (
	"context"
	"time"
)

// Heartbeat runs one lease heartbeat, for tests that drive a relay step by step.
func Heartbeat(ctx context.Context, r *Relay) error { return r.heartbeat(ctx) }

// Cycle runs one claim → publish → settle cycle and returns how many rows it claimed.
func Cycle(ctx context.Context, r *Relay) (int, error) {
	n, _, err := r.cycle(ctx)
	return n, err
}

// OwnedShards returns how many shards r holds.
func OwnedShards(r *Relay) int { return r.leases.count() }

// Backoff exposes the backoff schedule.
var Backoff = backoff

// UsableShards returns how many shards r may start a batch on now.
func UsableShards(r *Relay) int { return len(r.leases.usable(time.Now().Add(r.cfg.PublishTimeout))) }
