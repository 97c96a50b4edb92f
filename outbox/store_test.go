package outbox_test

import (
	"context"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/sagabox/sagabox/internal/testenv"
	"github.com/sagabox/sagabox/outbox"
)

// TestStoreWorksInAnotherSchema runs every statement of outbox_messages.sql
// against a schema other than the default one the file is written for.
func TestStoreWorksInAnotherSchema(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const schema = "tenant_b"
	pool := testenv.NewSchemaDB(t, schema).Pool
	w, err := outbox.New(outbox.Config{Schema: schema})
	if err != nil {
		t.Fatal(err)
	}
	msgs := []outbox.Message{{Topic: "t", Key: "k", Payload: []byte("1")}, {Topic: "t", Payload: []byte("2")}}
	if err := w.Enqueue(ctx, pool, msgs...); err != nil {
		t.Fatal(err)
	}
	s := outbox.NewStore(schema)
	now := time.Now()
	for _, shards := range [][]int16{nil, {0, 1, 2}} {
		if _, _, err := s.Claim(ctx, pool, shards, time.Now(), 10); err != nil {
			t.Fatalf("claim of shards %v: %v", shards, err)
		}
	}
	if _, ok, err := s.OldestPending(ctx, pool); err != nil || !ok {
		t.Fatalf("oldest pending: %v, %v; want a row", ok, err)
	}
	if err := s.Settle(ctx, pool, nil, []outbox.Failure{{ID: msgs[0].ID, Err: "refused", DeadAt: &now}}); err != nil {
		t.Fatal(err)
	}
	if _, err := outbox.Stats(ctx, pool, schema); err != nil {
		t.Fatal(err)
	}
	dead, err := outbox.ListDead(ctx, pool, schema, 10)
	if err != nil || len(dead) != 1 {
		t.Fatalf("dead letters %v, %v; want the refused row", dead, err)
	}
	if locked, err := outbox.LockDead(ctx, pool, schema, []uuid.UUID{msgs[0].ID}); err != nil || !locked[msgs[0].ID] {
		t.Fatalf("lock dead: %v, %v", locked, err)
	}
	for _, ids := range [][]uuid.UUID{{msgs[0].ID}, nil} {
		if _, err := outbox.RetryDead(ctx, pool, schema, ids...); err != nil {
			t.Fatal(err)
		}
	}
	published := locsOf(claimAll(t, s, pool, 2))
	if err := s.Settle(ctx, pool, published, nil); err != nil {
		t.Fatal(err)
	}
	if st, err := outbox.Stats(ctx, pool, schema); err != nil || st != (outbox.Backlog{}) {
		t.Fatalf("stats after settling everything: %+v, %v", st, err)
	}
}
