package consumer

import (
	"context"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/segmentio/kafka-go"

	"github.com/sagabox/sagabox/internal/testenv"
	"github.com/sagabox/sagabox/outbox"
)

// TestDeferredConstraintAtSharedCommitBlamesNoNeighbour: a deferred constraint fails
// the commit of a shared transaction, where no handler returned an error. With
// MaxAttempts 1 any attempt charged to a record dead-letters it, so the first record
// (innocent) survives only if the commit's failure is charged to no record and each
// runs again on its own; the record that breaks the constraint is dead-lettered.
func TestDeferredConstraintAtSharedCommitBlamesNoNeighbour(t *testing.T) {
	t.Parallel()
	db := testenv.NewDB(t)
	ctx := context.Background()
	if _, err := db.Pool.Exec(ctx, `CREATE TABLE "names" ("name" text UNIQUE DEFERRABLE INITIALLY DEFERRED);
INSERT INTO "names" VALUES ('taken')`); err != nil {
		t.Fatal(err)
	}
	c, err := New(db.Pool, Config{Brokers: []string{"127.0.0.1:1"}, GroupID: "g", Topics: []string{"t"}, MaxAttempts: 1},
		func(ctx context.Context, tx pgx.Tx, m Message) error {
			_, err := tx.Exec(ctx, `INSERT INTO "names" VALUES ($1)`, string(m.Value))
			return err
		})
	if err != nil {
		t.Fatal(err)
	}
	r := &run{c: c, done: make(chan kafka.Message, 10)}
	r.stop, r.halt = context.WithCancel(ctx)
	defer r.halt()
	r.ctx, r.cancel = context.WithCancel(ctx)
	defer r.cancel()
	var batch []kafka.Message
	for off, name := range []string{"fresh", "taken"} {
		id := uuid.New().String()
		batch = append(batch, kafka.Message{Topic: "t", Offset: int64(off), Key: []byte(id), Value: []byte(name),
			Headers: []kafka.Header{{Key: outbox.HeaderMessageID, Value: []byte(id)}}})
	}
	r.handleBatch(batch)
	var dead []string
	rows, err := db.Pool.Query(ctx, `SELECT convert_from("value", 'UTF8') FROM "sagabox"."inbox_dead_letters" ORDER BY "offset"`)
	if err != nil {
		t.Fatal(err)
	}
	if dead, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
		t.Fatal(err)
	}
	if len(dead) != 1 || dead[0] != "taken" {
		t.Fatalf("dead letters %q, want only [taken]: the shared commit's failure was charged to a record that did not cause it", dead)
	}
	var fresh int
	if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM "names" WHERE "name" = 'fresh'`).Scan(&fresh); err != nil || fresh != 1 {
		t.Fatalf("the innocent record's row: %d (%v), want 1", fresh, err)
	}
}
