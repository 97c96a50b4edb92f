package inbox_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/sagabox/sagabox/inbox"
	"github.com/sagabox/sagabox/internal/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Run(m)) }

func count(t *testing.T, db *testenv.DB, sql string, args ...any) int {
	t.Helper()
	var n int
	if err := db.Pool.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestRecord(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("FirstThenDuplicate", func(t *testing.T) {
		t.Parallel()
		db := testenv.NewDB(t)
		id := uuid.New()
		for i, want := range []bool{true, false, false} {
			first, err := inbox.Record(ctx, db.Pool, "billing", id)
			if err != nil {
				t.Fatal(err)
			}
			if first != want {
				t.Fatalf("delivery %d: first = %v, want %v", i+1, first, want)
			}
		}
		// Another consumer name has its own dedup.
		if first, err := inbox.Record(ctx, db.Pool, "shipping", id); err != nil || !first {
			t.Fatalf("other consumer: first = %v, err = %v; want true", first, err)
		}
	})

	t.Run("RollbackForgetsTheMessage", func(t *testing.T) {
		t.Parallel()
		db := testenv.NewDB(t)
		id := uuid.New()
		tx, err := db.Pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if first, err := inbox.Record(ctx, tx, "c", id); err != nil || !first {
			t.Fatalf("first = %v, err = %v", first, err)
		}
		if err := tx.Rollback(ctx); err != nil {
			t.Fatal(err)
		}
		if first, err := inbox.Record(ctx, db.Pool, "c", id); err != nil || !first {
			t.Fatalf("after rollback: first = %v, err = %v; want true (the effect never happened)", first, err)
		}
	})

	t.Run("ConcurrentDeliveriesOneWins", func(t *testing.T) {
		t.Parallel()
		db := testenv.NewDB(t)
		id := uuid.New()
		var wg sync.WaitGroup
		var mu sync.Mutex
		firsts := 0
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
					first, err := inbox.Record(ctx, tx, "c", id)
					if first {
						mu.Lock()
						firsts++
						mu.Unlock()
					}
					return err
				})
				if err != nil {
					t.Error(err)
				}
			}()
		}
		wg.Wait()
		if firsts != 1 {
			t.Fatalf("%d concurrent transactions saw the message as new, want exactly 1", firsts)
		}
	})

	t.Run("InvalidInput", func(t *testing.T) {
		t.Parallel()
		db := testenv.NewDB(t)
		if _, err := inbox.Record(ctx, db.Pool, "", uuid.New()); !errors.Is(err, inbox.ErrInvalidConsumer) {
			t.Errorf("empty consumer: err = %v", err)
		}
		if _, err := inbox.Record(ctx, db.Pool, "c", uuid.Nil); !errors.Is(err, inbox.ErrInvalidMessageID) {
			t.Errorf("nil id: err = %v", err)
		}
		if _, err := inbox.NewStore("Bad-Schema"); !errors.Is(err, inbox.ErrInvalidConfig) {
			t.Errorf("bad schema: err = %v", err)
		}
	})

	t.Run("OtherSchema", func(t *testing.T) {
		t.Parallel()
		db := testenv.NewDB(t)
		s, err := inbox.NewStore("nowhere")
		if err != nil {
			t.Fatal(err)
		}
		_, err = s.Record(ctx, db.Pool, "c", uuid.New())
		if err == nil || !strings.Contains(err.Error(), "nowhere") {
			t.Fatalf("err = %v, want an error naming the missing table's schema", err)
		}
	})
}

func TestSweep(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.NewDB(t)
	now := time.Now()
	// 5 entries 10 days old, 3 entries 1 day old, 2 just now.
	ages := map[time.Duration]int{10 * 24 * time.Hour: 5, 24 * time.Hour: 3, 0: 2}
	old := map[uuid.UUID]bool{}
	for age, n := range ages {
		for range n {
			id := uuid.New()
			if _, err := db.Pool.Exec(ctx, `INSERT INTO "sagabox"."inbox_messages" ("consumer", "message_id", "received_at") VALUES ('c', $1, $2)`, id, now.Add(-age)); err != nil {
				t.Fatal(err)
			}
			old[id] = age > 7*24*time.Hour
		}
	}
	for range 2 { // another consumer's old entries: not this sweeper's business
		if _, err := db.Pool.Exec(ctx, `INSERT INTO "sagabox"."inbox_messages" ("consumer", "message_id", "received_at") VALUES ('other', $1, $2)`, uuid.New(), now.Add(-30*24*time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	s, err := inbox.NewSweeper(db.Pool, inbox.SweeperConfig{Consumer: "c", BatchSize: 2, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	n, err := s.SweepOnce(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n != 5 {
		t.Fatalf("swept %d, want the 5 entries older than the 7-day default", n)
	}
	if n := count(t, db, `SELECT count(*) FROM "sagabox"."inbox_messages" WHERE "consumer" = 'other'`); n != 2 {
		t.Fatalf("%d of the other consumer's entries left, want 2", n)
	}
	for id, wasOld := range old {
		left := count(t, db, `SELECT count(*) FROM "sagabox"."inbox_messages" WHERE "message_id" = $1`, id)
		if wasOld != (left == 0) {
			t.Fatalf("entry %s (old=%v): %d rows left", id, wasOld, left)
		}
		// A swept message is no longer deduplicated: that is what the window means.
		first, err := inbox.Record(ctx, db.Pool, "c", id)
		if err != nil {
			t.Fatal(err)
		}
		if first != wasOld {
			t.Fatalf("entry %s (old=%v): Record after sweep says first=%v", id, wasOld, first)
		}
	}
}

func TestSweeperRunStopsWithContext(t *testing.T) {
	t.Parallel()
	db := testenv.NewDB(t)
	ctx, cancel := context.WithCancel(context.Background())
	swept := make(chan struct{})
	s, err := inbox.NewSweeper(db.Pool, inbox.SweeperConfig{Retention: time.Hour, Interval: time.Millisecond, Now: func() time.Time {
		select {
		case swept <- struct{}{}:
		default:
		}
		return time.Now()
	}})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error)
	go func() { done <- s.Run(ctx) }()
	<-swept
	<-swept // a second sweep proves the interval loop runs
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run = %v, want nil when the context ends", err)
	}
}

func TestSweeperConfig(t *testing.T) {
	t.Parallel()
	_, err := inbox.NewSweeper(nil, inbox.SweeperConfig{Retention: -time.Second, Interval: -1, BatchSize: -1, Schema: "X"})
	if !errors.Is(err, inbox.ErrInvalidConfig) {
		t.Fatalf("err = %v, want ErrInvalidConfig", err)
	}
	for _, want := range []string{"Retention", "Interval", "BatchSize", "schema"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
	_, err = inbox.NewSweeper(nil, inbox.SweeperConfig{Retention: time.Minute, Interval: time.Hour})
	if err == nil || !strings.Contains(err.Error(), "longer than Retention") {
		t.Fatalf("interval > retention: err = %v", err)
	}
}

func TestDeadLetters(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.NewDB(t)
	s, err := inbox.NewStore("")
	if err != nil {
		t.Fatal(err)
	}
	d := inbox.DeadLetter{Consumer: "c", Topic: "t", Partition: 2, Offset: 7, Key: []byte("k"), Value: []byte("v"),
		Headers: map[string]string{"h": "1"}, Attempts: 3, Reason: "boom"}
	for i, want := range []bool{true, false} {
		added, err := s.AddDeadLetter(ctx, db.Pool, d)
		if err != nil || added != want {
			t.Fatalf("add %d: added = %v, err = %v; want %v", i+1, added, err, want)
		}
	}
	d2 := d
	d2.Offset, d2.MessageID, d2.Consumer = 8, uuid.New(), "other"
	if _, err := s.AddDeadLetter(ctx, db.Pool, d2); err != nil {
		t.Fatal(err)
	}
	got, err := s.ListDeadLetters(ctx, db.Pool, "c", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Reason != "boom" || got[0].MessageID != uuid.Nil || got[0].Headers["h"] != "1" ||
		string(got[0].Value) != "v" || got[0].Attempts != 3 || got[0].DeadAt.IsZero() {
		t.Fatalf("list = %+v", got)
	}
	all, err := s.ListDeadLetters(ctx, db.Pool, "", 10)
	if err != nil || len(all) != 2 || all[1].MessageID != d2.MessageID {
		t.Fatalf("list all = %+v, %v", all, err)
	}
	if err := s.DeleteDeadLetter(ctx, db.Pool, got[0].ID); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteDeadLetter(ctx, db.Pool, got[0].ID); !errors.Is(err, inbox.ErrNotFound) {
		t.Fatalf("second delete: err = %v, want ErrNotFound", err)
	}
	took, err := s.TakeDeadLetter(ctx, db.Pool, all[1].ID)
	if err != nil || took.MessageID != d2.MessageID || took.Consumer != "other" {
		t.Fatalf("take = %+v, %v", took, err)
	}
	if _, err := s.TakeDeadLetter(ctx, db.Pool, all[1].ID); !errors.Is(err, inbox.ErrNotFound) {
		t.Fatalf("second take: err = %v, want ErrNotFound", err)
	}
	if _, err := s.Record(ctx, db.Pool, "other", d2.MessageID); err != nil {
		t.Fatal(err)
	}
	for _, want := range []bool{true, false} {
		if had, err := s.Forget(ctx, db.Pool, "other", d2.MessageID); err != nil || had != want {
			t.Fatalf("forget: had = %v, err = %v; want %v", had, err, want)
		}
	}
	if _, err := s.AddDeadLetter(ctx, db.Pool, inbox.DeadLetter{}); !errors.Is(err, inbox.ErrInvalidConsumer) {
		t.Fatalf("no consumer: err = %v", err)
	}
}

func TestRecordMany(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.NewDB(t)
	s, _ := inbox.NewStore("")
	a, b, c := uuid.New(), uuid.New(), uuid.New()
	if _, err := s.Record(ctx, db.Pool, "c", b); err != nil {
		t.Fatal(err)
	}
	first, err := s.RecordMany(ctx, db.Pool, "c", []uuid.UUID{a, b, a, c})
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(first) != "[true false false true]" {
		t.Fatalf("first = %v, want [true false false true]: b was recorded before, a repeats", first)
	}
	if _, err := s.RecordMany(ctx, db.Pool, "c", []uuid.UUID{a, uuid.Nil}); !errors.Is(err, inbox.ErrInvalidMessageID) {
		t.Fatalf("nil id: err = %v", err)
	}
}

func TestResolvedDeadLettersAreSweptAfterTheirRetention(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.NewDB(t)
	s, _ := inbox.NewStore("")
	add := func(consumer string, offset int64) int64 {
		t.Helper()
		if _, err := s.AddDeadLetter(ctx, db.Pool, inbox.DeadLetter{Consumer: consumer, Topic: "t", Offset: offset, Reason: "boom"}); err != nil {
			t.Fatal(err)
		}
		var id int64
		if err := db.Pool.QueryRow(ctx, `SELECT "id" FROM "sagabox"."inbox_dead_letters" WHERE "consumer" = $1 AND "offset" = $2`, consumer, offset).Scan(&id); err != nil {
			t.Fatal(err)
		}
		return id
	}
	open, deleted, replayed, recent, others := add("c", 1), add("c", 2), add("c", 3), add("c", 4), add("other", 5)
	for _, id := range []int64{deleted, recent, others} {
		if err := s.DeleteDeadLetter(ctx, db.Pool, id); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.TakeDeadLetter(ctx, db.Pool, replayed); err != nil {
		t.Fatal(err)
	}
	// Resolved long ago, except "recent"; "open" is old but unresolved.
	if _, err := db.Pool.Exec(ctx, `UPDATE "sagabox"."inbox_dead_letters" SET "dead_at" = now() - interval '50 days',
"resolved_at" = CASE WHEN "resolved_at" IS NULL OR "id" = $1 THEN "resolved_at" ELSE now() - interval '40 days' END`, recent); err != nil {
		t.Fatal(err)
	}
	if left, err := s.ListDeadLetters(ctx, db.Pool, "c", 0); err != nil || len(left) != 1 || left[0].ID != open {
		t.Fatalf("listed %+v, %v; want only the unresolved dead letter", left, err)
	}
	sw, err := inbox.NewSweeper(db.Pool, inbox.SweeperConfig{Consumer: "c", BatchSize: 1})
	if err != nil {
		t.Fatal(err)
	}
	if n, err := sw.SweepOnce(ctx); err != nil || n != 2 {
		t.Fatalf("swept %d, %v; want the 2 of c resolved more than 30 days ago", n, err)
	}
	rows, err := db.Pool.Query(ctx, `SELECT "id" FROM "sagabox"."inbox_dead_letters" ORDER BY "id"`)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(ids) != fmt.Sprint([]int64{open, recent, others}) {
		t.Fatalf("dead letters left %v; want the unresolved %d, the recently resolved %d and the other consumer's %d", ids, open, recent, others)
	}
}

// TestRecordDeadLetteredAgainAfterReplayIsKept: replaying a dead letter resolves it
// and forgets the message's inbox row; if the original record then comes again (its
// offset was not committed yet) and fails again, its new dead letter has the same
// (consumer, topic, partition, offset) as the resolved one. It must be listed again:
// the consumer records the inbox row with it, so the replayed copy is then skipped
// as a duplicate, and a dead letter swallowed by the resolved row loses the message.
func TestRecordDeadLetteredAgainAfterReplayIsKept(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.NewDB(t)
	s, _ := inbox.NewStore("")
	d := inbox.DeadLetter{Consumer: "c", MessageID: uuid.New(), Topic: "t", Partition: 1, Offset: 7, Value: []byte("v1"), Attempts: 3, Reason: "first"}
	if ok, err := s.AddDeadLetter(ctx, db.Pool, d); err != nil || !ok {
		t.Fatalf("AddDeadLetter = %v, %v", ok, err)
	}
	listed, err := s.ListDeadLetters(ctx, db.Pool, "c", 0)
	if err != nil || len(listed) != 1 {
		t.Fatalf("listed %d, %v", len(listed), err)
	}
	if _, err := s.TakeDeadLetter(ctx, db.Pool, listed[0].ID); err != nil {
		t.Fatal(err)
	}
	d.Reason, d.Attempts = "again", 1
	if ok, err := s.AddDeadLetter(ctx, db.Pool, d); err != nil || !ok {
		t.Fatalf("AddDeadLetter after the replay = %v, %v; want it stored", ok, err)
	}
	listed, err = s.ListDeadLetters(ctx, db.Pool, "c", 0)
	if err != nil || len(listed) != 1 || listed[0].Reason != "again" || listed[0].Attempts != 1 {
		t.Fatalf("listed %+v, %v; want the record's new dead letter (reason again)", listed, err)
	}
	// An unresolved one is not overwritten by a redelivery of the same record.
	d.Reason = "duplicate delivery"
	if ok, err := s.AddDeadLetter(ctx, db.Pool, d); err != nil || ok {
		t.Fatalf("AddDeadLetter of a record dead-lettered already = %v, %v; want false", ok, err)
	}
	if listed, _ = s.ListDeadLetters(ctx, db.Pool, "c", 0); len(listed) != 1 || listed[0].Reason != "again" {
		t.Fatalf("listed %+v; want the unresolved dead letter unchanged", listed)
	}
}
