package outbox

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/sagabox/sagabox/internal/pguuid"
	"github.com/sagabox/sagabox/migrations"
)

// Querier is the part of a pgx pool, connection or transaction that the operator
// functions (Stats, ListDead, RetryDead) need.
type Querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Backlog is what Stats reports about one schema's outbox.
type Backlog struct {
	// Pending counts rows not yet published and not dead-lettered, including rows
	// waiting for a retry.
	Pending int64
	// Waiting counts the pending rows that failed at least once and wait for a retry.
	Waiting int64
	// OldestPendingAge is the age of the oldest pending row; 0 when none is pending.
	OldestPendingAge time.Duration
	// Dead counts dead-lettered rows: the relay gave up on them (see ListDead, RetryDead).
	Dead int64
}

// DeadMessage is a dead-lettered row: published never, kept until an operator retries it.
type DeadMessage struct {
	Message
	Attempts  int
	LastError string
	CreatedAt time.Time
	DeadAt    time.Time
}

// Stats reports the backlog of schema's outbox ("" means DefaultSchema). It counts
// rows, so it reads the whole table: fine for an operator, not for a hot path.
func Stats(ctx context.Context, db Querier, schema string) (Backlog, error) {
	var b Backlog
	var ageSeconds float64
	err := db.QueryRow(ctx, NewStore(schema).stmt("stats")).Scan(&b.Pending, &b.Waiting, &b.Dead, &ageSeconds)
	if err != nil {
		return Backlog{}, fmt.Errorf("outbox: stats of schema %q: %w", schemaOrDefault(schema), err)
	}
	b.OldestPendingAge = max(0, time.Duration(ageSeconds*float64(time.Second)))
	return b, nil
}

// ListDead returns up to limit dead-lettered rows of schema ("" means DefaultSchema),
// oldest first. limit <= 0 means 100.
func ListDead(ctx context.Context, db Querier, schema string, limit int) ([]DeadMessage, error) {
	if limit <= 0 {
		limit = 100
	}
	rows, err := db.Query(ctx, NewStore(schema).stmt("list_dead"), limit)
	if err != nil {
		return nil, fmt.Errorf("outbox: list dead letters of schema %q: %w", schemaOrDefault(schema), err)
	}
	var out []DeadMessage
	for rows.Next() {
		var d DeadMessage
		var headers []byte
		if err := rows.Scan(&d.ID, &d.Topic, &d.Key, &d.Payload, &headers, &d.Attempts, &d.LastError, &d.CreatedAt, &d.DeadAt); err != nil {
			rows.Close()
			return nil, fmt.Errorf("outbox: list dead letters: %w", err)
		}
		if err := json.Unmarshal(headers, &d.Headers); err != nil {
			rows.Close()
			return nil, fmt.Errorf("outbox: dead letter %s has unreadable headers: %w", d.ID, err)
		}
		out = append(out, d)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("outbox: list dead letters of schema %q: %w", schemaOrDefault(schema), err)
	}
	return out, nil
}

// RetryDead makes dead-lettered rows pending again with a fresh attempt count, so
// the relay publishes them once more; with no ids it retries every dead row. It
// returns how many rows it revived (ids that are not dead are ignored).
//
// A revived row keeps its place in its key's order, but the later rows of its key
// were already published: it arrives after them.
func RetryDead(ctx context.Context, db Querier, schema string, ids ...uuid.UUID) (int64, error) {
	var tag pgconn.CommandTag
	var err error
	if len(ids) == 0 {
		tag, err = db.Exec(ctx, NewStore(schema).stmt("retry_all_dead"))
	} else {
		tag, err = db.Exec(ctx, NewStore(schema).stmt("retry_dead"), pguuid.Array(ids))
	}
	if err != nil {
		return 0, fmt.Errorf("outbox: retry dead letters of schema %q: %w", schemaOrDefault(schema), err)
	}
	return tag.RowsAffected(), nil
}

// LockDead locks the rows ids (FOR UPDATE, so call it in a transaction) and
// reports, for each one that exists, whether it is dead-lettered: an operator's
// all-or-nothing retry checks its ids with it before RetryDead.
func LockDead(ctx context.Context, db Querier, schema string, ids []uuid.UUID) (map[uuid.UUID]bool, error) {
	rows, err := db.Query(ctx, NewStore(schema).stmt("lock_dead"), pguuid.Array(ids))
	if err != nil {
		return nil, fmt.Errorf("outbox: lock rows of schema %q: %w", schemaOrDefault(schema), err)
	}
	dead := map[uuid.UUID]bool{}
	for rows.Next() {
		var id uuid.UUID
		var isDead bool
		if err := rows.Scan(&id, &isDead); err != nil {
			rows.Close()
			return nil, fmt.Errorf("outbox: lock rows: %w", err)
		}
		dead[id] = isDead
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("outbox: lock rows of schema %q: %w", schemaOrDefault(schema), err)
	}
	return dead, nil
}

func schemaOrDefault(schema string) string {
	if schema == "" {
		return migrations.DefaultSchema
	}
	return schema
}
