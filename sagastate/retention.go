package sagastate

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgtype"
)

// retentionBatch bounds each delete: a short transaction that locks few rows, so the
// sweep never holds up reply handling or the sweeper.
const retentionBatch = 200

// DeleteFinished deletes the sagas that finished longer than Config.Retention ago, with
// their steps and events, in transactions of at most 200 sagas, and returns how many it
// deleted. Sagas that have not finished (running, compensating, timed out, or failed
// and waiting for an operator) are never deleted. Run calls it every minute; with a
// negative Retention it deletes nothing.
func (o *Orchestrator) DeleteFinished(ctx context.Context) (int, error) {
	if o.cfg.Retention < 0 {
		return 0, nil
	}
	age := pgtype.Interval{Microseconds: o.cfg.Retention.Microseconds(), Valid: true}
	total := 0
	for {
		var n int
		if err := o.pool.QueryRow(ctx, o.q.sql("delete_finished"), age, retentionBatch, ts(o.clock())).Scan(&n); err != nil {
			return total, fmt.Errorf("sagastate: delete finished sagas: %w", err)
		}
		total += n
		if n < retentionBatch {
			return total, nil
		}
	}
}

func (o *Orchestrator) retentionLoop(ctx context.Context) error {
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		if n, err := o.DeleteFinished(ctx); err != nil && ctx.Err() == nil {
			o.log.Warn("sagastate: retention sweep; trying again in a minute", "err", err)
		} else if n > 0 {
			o.log.Debug("sagastate: deleted finished sagas", "count", n, "older_than", o.cfg.Retention)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
