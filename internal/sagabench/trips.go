package sagabench

import (
	"context"
	"sync/atomic"

	"github.com/jackc/pgx/v5"
)

// Trips is a pgx tracer (pgx.ConnConfig.Tracer) that counts what a pool's connections
// send: a statement outside a batch is one round trip, a batch is one for all its
// statements. (pgx adds one to prepare a statement new to the connection, not
// counted.) Driver.Trips reports its counts per flow, so a change that batches more
// shows in them, whatever the machine's load does to the CPU figures.
type Trips struct{ roundTrips, statements atomic.Int64 }

// Counts returns the round trips and statements counted so far.
func (t *Trips) Counts() (roundTrips, statements int64) {
	return t.roundTrips.Load(), t.statements.Load()
}

// TraceQueryStart counts a statement sent on its own.
func (t *Trips) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	t.roundTrips.Add(1)
	t.statements.Add(1)
	return ctx
}

// TraceQueryEnd does nothing.
func (t *Trips) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// TraceBatchStart counts a batch and its statements.
func (t *Trips) TraceBatchStart(ctx context.Context, _ *pgx.Conn, data pgx.TraceBatchStartData) context.Context {
	t.roundTrips.Add(1)
	if data.Batch != nil {
		t.statements.Add(int64(data.Batch.Len()))
	}
	return ctx
}

// TraceBatchQuery does nothing.
func (t *Trips) TraceBatchQuery(context.Context, *pgx.Conn, pgx.TraceBatchQueryData) {}

// TraceBatchEnd does nothing.
func (t *Trips) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData) {}
