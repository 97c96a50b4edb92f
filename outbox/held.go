package outbox

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
)

// TopicBacklog is what TopicBacklogs reports about one topic.
type TopicBacklog struct {
	Topic string
	// Pending counts rows not yet published and not dead-lettered.
	Pending int64
	// RetryLater counts the pending rows whose next retry is not due yet.
	RetryLater int64
	// Dead counts dead-lettered rows.
	Dead int64
	// OldestPendingAge is the age of the oldest pending row; 0 when none is pending.
	OldestPendingAge time.Duration
}

// TopicBacklogs reports schema's outbox ("" means DefaultSchema) per topic. It reads the
// whole table: fine for an operator, not for a hot path.
func TopicBacklogs(ctx context.Context, db Querier, schema string) ([]TopicBacklog, error) {
	rows, err := db.Query(ctx, NewStore(schema).stmt("topic_backlog"))
	if err != nil {
		return nil, fmt.Errorf("outbox: backlog per topic of schema %q: %w", schemaOrDefault(schema), err)
	}
	var out []TopicBacklog
	var t TopicBacklog
	var age float64
	if _, err := pgx.ForEachRow(rows, []any{&t.Topic, &t.Pending, &t.RetryLater, &t.Dead, &age}, func() error {
		t.OldestPendingAge = max(0, time.Duration(age*float64(time.Second)))
		out = append(out, t)
		return nil
	}); err != nil {
		return nil, fmt.Errorf("outbox: backlog per topic of schema %q: %w", schemaOrDefault(schema), err)
	}
	return out, nil
}

// HeldMessage is a pending row the relay cannot publish now, and why.
type HeldMessage struct {
	Message
	Attempts      int
	LastError     string
	CreatedAt     time.Time
	NextAttemptAt time.Time // zero when no retry is scheduled
	// Why is "retry due later" or "behind a retrying row of its key".
	Why string
}

// ListHeld returns up to limit pending rows of schema ("" means DefaultSchema) that the
// relay cannot publish now, oldest first, with the reason. limit <= 0 means 100.
// Message payloads and headers are not read.
func ListHeld(ctx context.Context, db Querier, schema string, limit int) ([]HeldMessage, error) {
	if limit <= 0 {
		limit = 100
	}
	rows, err := db.Query(ctx, NewStore(schema).stmt("list_held"), limit)
	if err != nil {
		return nil, fmt.Errorf("outbox: held rows of schema %q: %w", schemaOrDefault(schema), err)
	}
	var out []HeldMessage
	var h HeldMessage
	var next pgtype.Timestamptz
	if _, err := pgx.ForEachRow(rows, []any{&h.ID, &h.Topic, &h.Key, &h.Attempts, &h.LastError, &h.CreatedAt, &next, &h.Why}, func() error {
		h.NextAttemptAt = time.Time{}
		if next.Valid {
			h.NextAttemptAt = next.Time
		}
		out = append(out, h)
		return nil
	}); err != nil {
		return nil, fmt.Errorf("outbox: held rows of schema %q: %w", schemaOrDefault(schema), err)
	}
	return out, nil
}
