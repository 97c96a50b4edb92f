package sagastate

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/sagabox/sagabox/internal/testenv"
)

// midResultFailure is the database with one fault: once armed, the first query result
// that reaches its third row fails there, as when the connection drops mid-result.
type midResultFailure struct {
	DB
	armed   atomic.Bool
	started chan struct{} // closed when the feed read its starting point
	once    sync.Once
}

func (f *midResultFailure) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	defer f.once.Do(func() { close(f.started) })
	return f.DB.QueryRow(ctx, sql, args...)
}

func (f *midResultFailure) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	rows, err := f.DB.Query(ctx, sql, args...)
	if err != nil {
		return rows, err
	}
	return &brokenRows{Rows: rows, f: f}, nil
}

type brokenRows struct {
	pgx.Rows
	f    *midResultFailure
	read int
	err  error
}

func (r *brokenRows) Next() bool {
	if r.read == 2 && r.f.armed.CompareAndSwap(true, false) {
		r.err = errors.New("connection lost mid-result")
		r.Rows.Close()
		return false
	}
	r.read++
	return r.Rows.Next()
}

func (r *brokenRows) Err() error {
	if r.err != nil {
		return r.err
	}
	return r.Rows.Err()
}

// The event feed used to scan each row straight into its cursor, so an error mid-result
// moved the cursor past rows it never handed out: listeners lost those events.
func TestEventFeedErrorMidResultLosesNoEvent(t *testing.T) {
	t.Parallel()
	db := testenv.NewDB(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	got := map[int64]bool{}
	def := Define[testPayload]("feed", Step("a", "t").Do("x"))
	o, err := New(db.Pool, Config{Sagas: []Definition{def}, FeedInterval: 10 * time.Millisecond, Listeners: []Listener{func(e Event) {
		mu.Lock()
		defer mu.Unlock()
		got[e.ID] = true
	}}})
	if err != nil {
		t.Fatal(err)
	}
	fdb := &midResultFailure{DB: db.Pool, started: make(chan struct{})}
	fdb.armed.Store(true)
	o.feedDB = fdb
	done := make(chan error, 1)
	go func() { done <- o.feedLoop(ctx) }()
	<-fdb.started
	err = pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		for range 3 { // 2 events each: saga_started, step_started
			if err := o.Start(ctx, tx, "feed", uuid.New(), testPayload{}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		mu.Lock()
		n := len(got)
		mu.Unlock()
		if n == 6 && !fdb.armed.Load() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("listeners got %d of 6 events (fault injected: %v)", n, !fdb.armed.Load())
		}
		time.Sleep(10 * time.Millisecond) // polling the listener's record
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
