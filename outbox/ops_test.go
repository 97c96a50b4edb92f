package outbox_test

import (
	"context"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/sagabox/sagabox/internal/pguuid"
	"github.com/sagabox/sagabox/internal/testenv"
	"github.com/sagabox/sagabox/outbox"
)

func TestOperatorFunctions(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	setup := func(t *testing.T) (*testenv.DB, []outbox.Message) {
		t.Helper()
		db := testenv.NewDB(t)
		msgs := []outbox.Message{
			{Topic: "a", Key: "k1", Payload: []byte("1"), Headers: map[string]string{"h": "v"}},
			{Topic: "a", Key: "k2", Payload: []byte("2")},
			{Topic: "b", Key: "k3", Payload: []byte("3")},
		}
		if err := outbox.Enqueue(ctx, db.Pool, msgs...); err != nil {
			t.Fatal(err)
		}
		// Dead-letter the first two, as the relay does after its last attempt.
		if _, err := db.Pool.Exec(ctx, `UPDATE "sagabox"."outbox_messages"
SET "dead_at" = now(), "attempts" = 5, "last_error" = 'too large', "created_at" = now() - interval '1 hour'
WHERE "id" = ANY($1)`, pguuid.Array([]uuid.UUID{msgs[0].ID, msgs[1].ID})); err != nil {
			t.Fatal(err)
		}
		return db, msgs
	}

	t.Run("StatsCountsPendingAndDead", func(t *testing.T) {
		t.Parallel()
		db, _ := setup(t)
		s, err := outbox.Stats(ctx, db.Pool, "")
		if err != nil {
			t.Fatal(err)
		}
		if s.Pending != 1 || s.Dead != 2 || s.Waiting != 0 {
			t.Fatalf("stats = %+v, want 1 pending, 2 dead", s)
		}
		if s.OldestPendingAge < 0 || s.OldestPendingAge > time.Minute {
			t.Fatalf("oldest pending age %v: the pending row was just written", s.OldestPendingAge)
		}
	})

	t.Run("StatsOfEmptyOutbox", func(t *testing.T) {
		t.Parallel()
		db := testenv.NewDB(t)
		s, err := outbox.Stats(ctx, db.Pool, "sagabox")
		if err != nil {
			t.Fatal(err)
		}
		if s != (outbox.Backlog{}) {
			t.Fatalf("stats of an empty outbox = %+v", s)
		}
	})

	t.Run("ListDeadReturnsRowsWithErrors", func(t *testing.T) {
		t.Parallel()
		db, msgs := setup(t)
		dead, err := outbox.ListDead(ctx, db.Pool, "", 10)
		if err != nil {
			t.Fatal(err)
		}
		if len(dead) != 2 {
			t.Fatalf("got %d dead rows, want 2", len(dead))
		}
		got := map[uuid.UUID]outbox.DeadMessage{dead[0].ID: dead[0], dead[1].ID: dead[1]}
		d, ok := got[msgs[0].ID]
		if !ok || d.Topic != "a" || d.Key != "k1" || string(d.Payload) != "1" || d.Headers["h"] != "v" ||
			d.Attempts != 5 || d.LastError != "too large" || d.DeadAt.IsZero() {
			t.Fatalf("dead row = %+v", d)
		}
		limited, err := outbox.ListDead(ctx, db.Pool, "", 1)
		if err != nil || len(limited) != 1 {
			t.Fatalf("limit 1: %d rows, %v", len(limited), err)
		}
	})

	t.Run("RetryDeadByID", func(t *testing.T) {
		t.Parallel()
		db, msgs := setup(t)
		n, err := outbox.RetryDead(ctx, db.Pool, "", msgs[0].ID, msgs[2].ID /* not dead: ignored */)
		if err != nil || n != 1 {
			t.Fatalf("retried %d, %v; want 1", n, err)
		}
		var attempts int
		var dead bool
		if err := db.Pool.QueryRow(ctx, `SELECT "attempts", "dead_at" IS NOT NULL FROM "sagabox"."outbox_messages" WHERE "id" = $1`, msgs[0].ID).Scan(&attempts, &dead); err != nil {
			t.Fatal(err)
		}
		if attempts != 0 || dead {
			t.Fatalf("after retry: attempts %d, dead %v", attempts, dead)
		}
		s, err := outbox.Stats(ctx, db.Pool, "")
		if err != nil || s.Pending != 2 || s.Dead != 1 {
			t.Fatalf("stats after retry = %+v, %v", s, err)
		}
	})

	t.Run("RetryDeadAll", func(t *testing.T) {
		t.Parallel()
		db, _ := setup(t)
		n, err := outbox.RetryDead(ctx, db.Pool, "")
		if err != nil || n != 2 {
			t.Fatalf("retried %d, %v; want 2", n, err)
		}
	})

	t.Run("UnknownSchemaIsAnError", func(t *testing.T) {
		t.Parallel()
		db := testenv.NewDB(t)
		if _, err := outbox.Stats(ctx, db.Pool, "no_such_schema"); err == nil {
			t.Fatal("want an error for a schema without an outbox")
		}
	})
}
