package outbox_test

import (
	"context"
	"testing"

	"github.com/google/uuid"

	"github.com/sagabox/sagabox/internal/testenv"
	"github.com/sagabox/sagabox/outbox"
)

func TestHeldRowsAndTopicBacklog(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.NewDB(t)
	msgs := []outbox.Message{
		{Topic: "a", Key: "k1", Payload: []byte("1")}, // waits for a retry
		{Topic: "a", Key: "k1", Payload: []byte("2")}, // behind it
		{Topic: "b", Key: "k2", Payload: []byte("3")}, // publishable
		{Topic: "b", Key: "k3", Payload: []byte("4")}, // dead
	}
	if err := outbox.Enqueue(ctx, db.Pool, msgs...); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Pool.Exec(ctx, `UPDATE "sagabox"."outbox_messages" SET "attempts" = 1, "next_attempt_at" = now() + interval '1 hour' WHERE "id" = $1`, msgs[0].ID); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Pool.Exec(ctx, `UPDATE "sagabox"."outbox_messages" SET "dead_at" = now(), "last_error" = 'too large' WHERE "id" = $1`, msgs[3].ID); err != nil {
		t.Fatal(err)
	}
	// A transaction still open holds back nothing: the row committed after it began is not held.
	older, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer older.Rollback(ctx)
	if _, err := older.Exec(ctx, `SELECT pg_current_xact_id()`); err != nil {
		t.Fatal(err)
	}
	if err := outbox.Enqueue(ctx, db.Pool, outbox.Message{Topic: "c", Key: "k4", Payload: []byte("5")}); err != nil {
		t.Fatal(err)
	}

	held, err := outbox.ListHeld(ctx, db.Pool, "", 10)
	if err != nil {
		t.Fatal(err)
	}
	why := map[uuid.UUID]string{}
	for _, h := range held {
		why[h.ID] = h.Why
	}
	want := map[uuid.UUID]string{msgs[0].ID: "retry due later", msgs[1].ID: "behind a retrying row of its key"}
	if len(why) != 2 || why[msgs[0].ID] != want[msgs[0].ID] || why[msgs[1].ID] != want[msgs[1].ID] {
		t.Fatalf("held %+v", why)
	}
	topics, err := outbox.TopicBacklogs(ctx, db.Pool, "")
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]outbox.TopicBacklog{}
	for _, tb := range topics {
		got[tb.Topic] = tb
	}
	if a := got["a"]; a.Pending != 2 || a.RetryLater != 1 || a.Dead != 0 || a.OldestPendingAge <= 0 {
		t.Errorf("topic a: %+v", a)
	}
	if b := got["b"]; b.Pending != 1 || b.Dead != 1 {
		t.Errorf("topic b: %+v", b)
	}
	if c := got["c"]; c.Pending != 1 || c.RetryLater != 0 {
		t.Errorf("topic c: %+v", c)
	}
}
