package sagastate

import (
	"context"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/sagabox/sagabox/internal/testenv"
	"github.com/sagabox/sagabox/outbox"
)

// start_saga moves the first transition's times from the reference time to the start
// time by their exact distance. PostgreSQL gives the difference of two timestamptz
// values in days and hours, and adding a day to a timestamptz is a calendar day in the
// session's time zone: across a daylight saving change, 48 hours apart became 47.
func TestStartMovesTimesByTheExactDistanceAcrossADaylightSavingChange(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.NewDB(t)
	def := Define[map[string]any]("dst", Step("a", "dst.commands").Do("a.do").Undo("a.undo").Timeout(time.Hour))
	p := def.plan()
	out, err := outbox.New(outbox.Config{})
	if err != nil {
		t.Fatal(err)
	}
	// Europe/Paris went to summer time at 2030-03-31 01:00 UTC.
	start := time.Date(2030, 3, 31, 12, 0, 0, 0, time.UTC)
	ref := start.Add(-48 * time.Hour)
	id := uuid.New()
	res, err := transition(p, newInstance(p, id, []byte(`{}`)), input{kind: inStart, now: ref})
	if err != nil {
		t.Fatal(err)
	}
	c := &change{prev: &Instance{}, res: res}
	err = pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SET LOCAL TimeZone = 'Europe/Paris'`); err != nil {
			return err
		}
		return newQueries("sagabox").start(ctx, tx, out, DefaultReplyTopic, c, start, nil)
	})
	if err != nil {
		t.Fatal(err)
	}
	var created, deadline, at time.Time
	err = db.Pool.QueryRow(ctx, `SELECT i."created_at", s."deadline", e."at" FROM "sagabox"."saga_instances" i
JOIN "sagabox"."saga_steps" s ON s."saga_id" = i."id" JOIN "sagabox"."saga_events" e ON e."saga_id" = i."id"
WHERE i."id" = $1 LIMIT 1`, id).Scan(&created, &deadline, &at)
	if err != nil {
		t.Fatal(err)
	}
	if !created.Equal(start) || !deadline.Equal(start.Add(time.Hour)) || !at.Equal(start) {
		t.Fatalf("created %v, deadline %v, event at %v; want %v, an hour later, %v", created.UTC(), deadline.UTC(), at.UTC(), start, start)
	}
	if s := c.res.state; !s.CreatedAt.Equal(start) || !s.Steps[0].Deadline.Equal(start.Add(time.Hour)) {
		t.Fatalf("remembered: created %v, deadline %v; want %v, an hour later", s.CreatedAt, s.Steps[0].Deadline, start)
	}
}
