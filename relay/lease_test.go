package relay_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/sagabox/sagabox/outbox"
	"github.com/sagabox/sagabox/relay"
	"github.com/sagabox/sagabox/relay/kafkapub"
)

// TestLeases checks the two halves of exclusive ownership: a relay publishes only
// the shards it holds, and stops as soon as its lease may have run out.
func TestLeases(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("ARelayLeavesOtherRelaysShardsAlone", func(t *testing.T) {
		t.Parallel()
		e := setup(t, 2)
		a := steppedRelay(t, e)
		// a stalls (its leases run out); b starts and takes its share.
		if _, err := e.db.Pool.Exec(ctx, `UPDATE "sagabox"."outbox_leases" SET "expires_at" = now() - interval '1 second'`); err != nil {
			t.Fatal(err)
		}
		b, err := relay.New(e.db.Pool, newPublisher(t, kafkapub.Config{Brokers: e.kafka.Brokers}), fastConfig())
		if err != nil {
			t.Fatal(err)
		}
		if err := relay.Heartbeat(ctx, b); err != nil {
			t.Fatal(err)
		}
		if err := relay.Heartbeat(ctx, a); err != nil { // a renews nothing, takes what is left
			t.Fatal(err)
		}
		if na, nb := relay.OwnedShards(a), relay.OwnedShards(b); na != relay.Shards/2 || nb != relay.Shards/2 {
			t.Fatalf("a owns %d, b %d; want half each", na, nb)
		}
		var msgs []outbox.Message
		for i := range 200 {
			key := "key-" + string(rune('A'+i%40))
			msgs = append(msgs, outbox.Message{Topic: e.topic, Key: key, Payload: payload(key, i/40+1)})
		}
		enqueue(t, e.db.Pool, msgs...)
		var ofB int
		if err := e.db.Pool.QueryRow(ctx, `SELECT count(*) FROM "sagabox"."outbox_messages" m
JOIN "sagabox"."outbox_leases" l ON l."shard" = m."shard" WHERE l."owner" = $1`, b.ID()).Scan(&ofB); err != nil {
			t.Fatal(err)
		}
		if ofB == 0 || ofB == len(msgs) {
			t.Fatalf("b's shards hold %d of %d rows; the test needs rows on both sides", ofB, len(msgs))
		}
		cycleUntil(t, a, len(msgs)-ofB)
		if n := cycleOnce(t, a); n != 0 {
			t.Fatalf("a claimed %d more rows: they belong to b's shards", n)
		}
		if left := countRows(t, e.db.Pool, "true"); left != ofB {
			t.Fatalf("%d rows left, want b's %d untouched", left, ofB)
		}
	})

	t.Run("NoBatchStartsOnALeaseThatMayHaveExpired", func(t *testing.T) {
		t.Parallel()
		e := setup(t, 1)
		cfg := fastConfig()
		cfg.LeaseTTL, cfg.HeartbeatInterval, cfg.PublishTimeout = 600*time.Millisecond, 200*time.Millisecond, 300*time.Millisecond
		r, err := relay.New(e.db.Pool, e.pub, cfg)
		if err != nil {
			t.Fatal(err)
		}
		if err := relay.Heartbeat(ctx, r); err != nil {
			t.Fatal(err)
		}
		enqueue(t, e.db.Pool, outbox.Message{Topic: e.topic, Key: "k", Payload: payload("k", 1)})
		// Without heartbeats the lease is usable for LeaseTTL - PublishTimeout at most.
		waitFor(t, 5*time.Second, "the unrenewed lease to become unusable", func() bool { return relay.UsableShards(r) == 0 })
		if n, err := relay.Cycle(ctx, r); err != nil || n != 0 {
			t.Fatalf("cycle on an unrenewed lease claimed %d (%v); want 0", n, err)
		}
		cycleUntil(t, r, 1) // renewed: it publishes again
	})
}

// gatedPublisher blocks every Publish until open is closed (or its context ends),
// after saying on entered that a batch is in flight.
type gatedPublisher struct {
	relay.Publisher
	entered chan struct{}
	open    chan struct{}
}

func (g *gatedPublisher) Publish(ctx context.Context, msgs []outbox.Message) error {
	select {
	case g.entered <- struct{}{}:
	default:
	}
	select {
	case <-g.open:
	case <-ctx.Done():
		return ctx.Err()
	}
	return g.Publisher.Publish(ctx, msgs)
}

// TestSurplusReleaseDoesNotHoldUpTheHeartbeat: a relay that must give shards to a
// newcomer while a batch is being published stops using them at once, releases
// them only after that batch is settled, and its heartbeat (which renews the
// leases it keeps) does not wait for the publish. Before, the heartbeat waited
// for the batch in flight, up to PublishTimeout for the publish and as much for
// the settle, and could outlast LeaseTTL.
func TestSurplusReleaseDoesNotHoldUpTheHeartbeat(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := setup(t, 1)
	gate := &gatedPublisher{Publisher: e.pub, entered: make(chan struct{}, 1), open: make(chan struct{})}
	cfg := fastConfig()
	cfg.LeaseTTL, cfg.HeartbeatInterval, cfg.PublishTimeout = 2*time.Minute, time.Second, time.Minute
	a, err := relay.New(e.db.Pool, gate, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := relay.Heartbeat(ctx, a); err != nil {
		t.Fatal(err)
	}
	enqueue(t, e.db.Pool, outbox.Message{Topic: e.topic, Key: "k", Payload: payload("k", 1)})
	cycled := make(chan error, 1)
	go func() { // cycles until the row is ready: other tests' open transactions hold it back at first
		for deadline := time.Now().Add(time.Minute); ; time.Sleep(10 * time.Millisecond) {
			n, err := relay.Cycle(ctx, a)
			if err != nil || n > 0 || time.Now().After(deadline) {
				cycled <- err
				return
			}
		}
	}()
	openGate := sync.OnceFunc(func() { close(gate.open) })
	defer func() {
		openGate()
		if err := <-cycled; err != nil {
			t.Errorf("cycle: %v", err)
		}
	}()
	select {
	case <-gate.entered:
	case <-time.After(time.Minute):
		t.Fatal("the relay did not publish the row within a minute")
	}

	b, err := relay.New(e.db.Pool, e.pub, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := relay.Heartbeat(ctx, b); err != nil { // registers; every shard is a's
		t.Fatal(err)
	}
	beat := make(chan error, 1)
	go func() { beat <- relay.Heartbeat(ctx, a) }()
	select {
	case err := <-beat:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second): // the publish waits for a minute
		t.Fatal("a's heartbeat waited for the batch in flight to give up its surplus shards")
	}
	if n := relay.OwnedShards(a); n != relay.Shards/2 {
		t.Fatalf("a uses %d shards after the heartbeat, want its share %d", n, relay.Shards/2)
	}
	owned := func(id string) int {
		var n int
		if err := e.db.Pool.QueryRow(ctx, `SELECT count(*) FROM "sagabox"."outbox_leases" WHERE "owner" = $1`, id).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := owned(a.ID()); n != relay.Shards {
		t.Fatalf("a holds %d leases while its batch is in flight, want all %d until it is settled", n, relay.Shards)
	}
	openGate()
	waitFor(t, 30*time.Second, "a to release its surplus after the batch", func() bool { return owned(a.ID()) == relay.Shards/2 })
	if n := countRows(t, e.db.Pool, "true"); n != 0 {
		t.Fatalf("%d rows left: the batch in flight was not settled", n)
	}
}

// TestShardReleasedDuringARenewDoesNotComeBack: a surplus shard's background release
// could commit, and forget the shard, between a heartbeat's renew (which still
// returned it, ours in the database at that moment) and the heartbeat's check of the
// shards being released; the shard then came back into use while another relay could
// acquire it, and both published its keys.
func TestShardReleasedDuringARenewDoesNotComeBack(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := setup(t, 1)
	cfg := fastConfig()
	cfg.LeaseTTL, cfg.HeartbeatInterval = time.Minute, time.Second
	a, err := relay.New(e.db.Pool, e.pub, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := relay.Heartbeat(ctx, a); err != nil { // a owns every shard
		t.Fatal(err)
	}
	b, err := relay.New(e.db.Pool, e.pub, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := relay.Heartbeat(ctx, b); err != nil { // registers; nothing left to take
		t.Fatal(err)
	}
	done := relay.HoldCycle(a) // a batch in flight: the surplus release waits for it
	if err := relay.Heartbeat(ctx, a); err != nil {
		t.Fatal(err)
	}
	if n := relay.OwnedShards(a); n != relay.Shards/2 {
		t.Fatalf("a uses %d shards, want its share %d", n, relay.Shards/2)
	}
	// The next renew still returns the surplus (the release is waiting); the release
	// then ends before the heartbeat uses the answer. Right after it replaced its
	// owned shards, no released one may be usable (a publish loop could claim it).
	usable := -1
	relay.HeartbeatHook(a, func(at string) {
		switch at {
		case "renewed":
			done()
			relay.WaitReleases(a)
		case "owned":
			usable = relay.UsableShards(a)
		}
	})
	if err := relay.Heartbeat(ctx, a); err != nil {
		t.Fatal(err)
	}
	if usable != relay.Shards/2 {
		t.Fatalf("a could use %d shards after a release that ended during its renew, want %d: released shards came back into use", usable, relay.Shards/2)
	}
}

// TestRelaysJoiningOneByOneEachLeaseOneRange: a relay's claims read the index
// range between its lowest and highest shard, so each relay's shards should be one
// range. Relays started one after another used to leave the third two ranges
// ([86-127 214-255]: both others gave up their highest shards), whose claims then
// read the second relay's rows lying between them.
func TestRelaysJoiningOneByOneEachLeaseOneRange(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := setup(t, 1)
	var relays []*relay.Relay
	cfg := fastConfig()
	cfg.LeaseTTL = time.Minute // heartbeats come from the loop below: none expires on a stalled machine
	for n := 1; n <= 3; n++ {
		r, err := relay.New(e.db.Pool, e.pub, cfg)
		if err != nil {
			t.Fatal(err)
		}
		relays = append(relays, r)
		share := (relay.Shards + n - 1) / n
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			owned, most := 0, 0
			var counts []int
			for _, r := range relays {
				if err := relay.Heartbeat(ctx, r); err != nil {
					t.Fatal(err)
				}
				counts = append(counts, relay.OwnedShards(r))
				owned, most = owned+relay.OwnedShards(r), max(most, relay.OwnedShards(r))
			}
			if owned == relay.Shards && most <= share {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d relays did not own their shares of %d in 10 s: %v", n, share, counts)
			}
		}
	}
	rows, err := e.db.Pool.Query(ctx, `SELECT "owner", count(*), max("shard") - min("shard") + 1 FROM "sagabox"."outbox_leases" GROUP BY "owner" ORDER BY min("shard")`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var owner string
		var n, span int
		if err := rows.Scan(&owner, &n, &span); err != nil {
			t.Fatal(err)
		}
		if n != span {
			t.Errorf("relay %s leases %d shards spread over a range of %d", owner, n, span)
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
}
