package relay_test

import (
	"context"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagabox/sagabox/internal/testenv"
	"github.com/sagabox/sagabox/outbox"
	"github.com/sagabox/sagabox/relay"
)

// firstPublished records when each message was first published.
type firstPublished struct {
	mu sync.Mutex
	at map[uuid.UUID]time.Time
}

func (p *firstPublished) Publish(_ context.Context, msgs []outbox.Message) error {
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, m := range msgs {
		if _, ok := p.at[m.ID]; !ok {
			p.at[m.ID] = now
		}
	}
	return nil
}

func (*firstPublished) Close() error { return nil }

func (p *firstPublished) when(id uuid.UUID) (time.Time, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	at, ok := p.at[id]
	return at, ok
}

// startLongPollRelay starts a relay of workers loops, publishing to the returned
// recorder, whose PollInterval (20 s) a test of wake-ups must not fall back on.
func startLongPollRelay(t *testing.T, pool *pgxpool.Pool, workers int) (*firstPublished, relay.Config) {
	t.Helper()
	pub := &firstPublished{at: map[uuid.UUID]time.Time{}}
	cfg := fastConfig()
	cfg.Workers = workers
	cfg.PollInterval = 20 * time.Second
	cfg.LeaseTTL = 60 * time.Second
	cfg.PublishTimeout = 5 * time.Second
	startRelay(t, pool, pub, cfg)
	return pub, cfg
}

// keyOfLoop returns a key whose shard (hashtext(key) & 255, migration 00001) is
// served by publish loop w of workers.
func keyOfLoop(t *testing.T, pool *pgxpool.Pool, w, workers int) string {
	t.Helper()
	for i := 0; ; i++ {
		k := "k" + strconv.Itoa(i)
		var shard int
		if err := pool.QueryRow(context.Background(), `SELECT hashtext($1) & 255`, k).Scan(&shard); err != nil {
			t.Fatal(err)
		}
		if shard%workers == w {
			return k
		}
	}
}

// A row R of loop 1 whose transaction took its seq before a row S of loop 0 and
// commits after the probe saw S: the probe, reading after S's seq, never sees R.
// The next row added, of whichever loop, must wake loop 1 to find it. When the
// probe woke only the loops of its new rows, R waited for PollInterval while rows
// of loop 0 kept coming (4.1 s of the 5 s here).
func TestLateRowOfOneLoopIsFoundByTheNextRowOfAnother(t *testing.T) {
	t.Parallel()
	db := testenv.NewDB(t)
	ctx := context.Background()
	k0, k1 := keyOfLoop(t, db.Pool, 0, 2), keyOfLoop(t, db.Pool, 1, 2)
	pub, cfg := startLongPollRelay(t, db.Pool, 2)

	// Both loops hold their shards and have gone idle.
	warm := []outbox.Message{
		{ID: uuid.New(), Topic: "t", Key: k0, Payload: []byte("w0")},
		{ID: uuid.New(), Topic: "t", Key: k1, Payload: []byte("w1")},
	}
	enqueue(t, db.Pool, warm...)
	waitFor(t, 15*time.Second, "the warm-up rows published", func() bool {
		_, ok0 := pub.when(warm[0].ID)
		_, ok1 := pub.when(warm[1].ID)
		return ok0 && ok1
	})

	r := outbox.Message{ID: uuid.New(), Topic: "t", Key: k1, Payload: []byte("R")}
	txR := enqueueOpen(t, db.Pool, r)
	s := outbox.Message{ID: uuid.New(), Topic: "t", Key: k0, Payload: []byte("S")}
	enqueue(t, db.Pool, s)
	// Give the probe time to see S (it looks every 1-5 ms). Were it slower, it would
	// find R and S together after R's commit, and the test would pass either way; it
	// never fails for it.
	time.Sleep(300 * time.Millisecond)
	if err := txR.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	committed := time.Now()
	for i := 0; ; i++ {
		if at, ok := pub.when(r.ID); ok {
			t.Logf("R published %v after its commit", at.Sub(committed))
			return
		}
		if time.Since(committed) > cfg.PollInterval/2 {
			t.Fatalf("R not published %v after its commit although rows of the other loop kept coming (PollInterval %v)",
				time.Since(committed), cfg.PollInterval)
		}
		enqueue(t, db.Pool, outbox.Message{ID: uuid.New(), Topic: "t", Key: k0, Payload: []byte("x" + strconv.Itoa(i))})
		time.Sleep(20 * time.Millisecond)
	}
}

// TestLateRowIsFoundWithoutWaitingForPoll: a row R whose transaction took its seq
// before a row S and commits after S was published, with no row added after it.
// The probe reads after S's seq and never sees R; since an open transaction no
// longer holds S back, R's commit must wake the relay by itself (the probe claims
// again once every transaction open when it found S has ended), not wait for
// PollInterval.
func TestLateRowIsFoundWithoutWaitingForPoll(t *testing.T) {
	t.Parallel()
	db := testenv.NewDB(t)
	ctx := context.Background()
	pub, cfg := startLongPollRelay(t, db.Pool, 1)
	warm := outbox.Message{ID: uuid.New(), Topic: "t", Key: "w", Payload: []byte("w")}
	enqueue(t, db.Pool, warm)
	waitFor(t, 15*time.Second, "the warm-up row published", func() bool { _, ok := pub.when(warm.ID); return ok })

	r := outbox.Message{ID: uuid.New(), Topic: "t", Key: "r", Payload: []byte("R")}
	txR := enqueueOpen(t, db.Pool, r)
	s := outbox.Message{ID: uuid.New(), Topic: "t", Key: "s", Payload: []byte("S")}
	enqueue(t, db.Pool, s)
	waitFor(t, cfg.PollInterval/2, "S published while R's transaction is open", func() bool { _, ok := pub.when(s.ID); return ok })
	if err := txR.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	committed := time.Now()
	waitFor(t, cfg.PollInterval/2, "R published after its commit, no row added since", func() bool { _, ok := pub.when(r.ID); return ok })
	at, _ := pub.when(r.ID)
	t.Logf("R published %v after its commit", at.Sub(committed))
}
