package demo

import (
	"context"
	"fmt"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/sagabox/sagabox/internal/pguuid"
)

// Retries counts what a run's sagas spent on saga-level retries, from what the
// orchestrator's log in the database says.
type Retries struct {
	// Attempts is every step command sent beyond the first of each (step, op): a
	// retry after a retryable reply or a timeout.
	Attempts int `json:"attempts"`
	// Deadlocks is how many steps failed with a deadlock or a serialization failure
	// (which belong to the consumer loop's local retries and should never reach the saga).
	Deadlocks int `json:"deadlocks"`
}

// CountRetries reads the saga-level retries of sagas ids from the saga_events table
// in schema (sagabox's, e.g. migrations.DefaultSchema).
func CountRetries(ctx context.Context, db Querier, schema string, ids []uuid.UUID) (Retries, error) {
	if ids == nil {
		ids = []uuid.UUID{}
	}
	events := pgx.Identifier{schema, "saga_events"}.Sanitize()
	var r Retries
	err := db.QueryRow(ctx, `SELECT
		(SELECT count(*) FROM `+events+` WHERE "saga_id" = ANY($1) AND "type" = 'step_started')
		- (SELECT count(DISTINCT ("saga_id", "step", "op")) FROM `+events+` WHERE "saga_id" = ANY($1) AND "type" = 'step_started'),
		(SELECT count(*) FROM `+events+` WHERE "saga_id" = ANY($1) AND "type" = 'step_failed'
			AND "detail" ~* 'deadlock|40P01|40001|serializ')`, pguuid.Array(ids)).Scan(&r.Attempts, &r.Deadlocks)
	if err != nil {
		return r, fmt.Errorf("demo: count saga retries: %w", err)
	}
	return r, nil
}
