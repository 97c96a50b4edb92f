package participants

import (
	"context"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// stepTx is the transaction a handler gets. It sends the statements that end the
// previous step's savepoint and open this step's (pending) only before the handler's
// first statement, so a handler that runs none (or the first handler of a batch,
// whose savepoint travels with the barrier claim) costs no round trip for them.
//
// The pending statements go in a round trip of their own rather than in a batch with
// the handler's: pgx closes the connection when an argument of a later statement of a
// batch fails to encode, which would turn a handler's bad argument into a lost
// transaction instead of its own error.
type stepTx struct {
	pgx.Tx
	ctx context.Context
	// pending are statements without arguments to run before the handler's first
	// one. Shared by the steps of one transaction.
	pending *[]string
	// used reports that the handler ran a statement (or took the connection).
	used bool
}

// begin runs the pending statements before the handler's first statement.
func (t *stepTx) begin(ctx context.Context) error {
	t.used = true
	if p := *t.pending; len(p) > 0 {
		*t.pending = nil
		_, err := t.Tx.Exec(ctx, strings.Join(p, "; "))
		return err
	}
	return nil
}

func (t *stepTx) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	if err := t.begin(ctx); err != nil {
		return pgconn.CommandTag{}, err
	}
	return t.Tx.Exec(ctx, sql, args...)
}

func (t *stepTx) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	if err := t.begin(ctx); err != nil {
		return nil, err
	}
	return t.Tx.Query(ctx, sql, args...)
}

func (t *stepTx) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	if err := t.begin(ctx); err != nil {
		return errRow{err}
	}
	return t.Tx.QueryRow(ctx, sql, args...)
}

func (t *stepTx) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	if err := t.begin(ctx); err != nil {
		return pgx.FailedBatchResults(b, err)
	}
	return t.Tx.SendBatch(ctx, b)
}

func (t *stepTx) CopyFrom(ctx context.Context, table pgx.Identifier, columns []string, src pgx.CopyFromSource) (int64, error) {
	if err := t.begin(ctx); err != nil {
		return 0, err
	}
	return t.Tx.CopyFrom(ctx, table, columns, src)
}

func (t *stepTx) Prepare(ctx context.Context, name, sql string) (*pgconn.StatementDescription, error) {
	if err := t.begin(ctx); err != nil {
		return nil, err
	}
	return t.Tx.Prepare(ctx, name, sql)
}

func (t *stepTx) Begin(ctx context.Context) (pgx.Tx, error) {
	if err := t.begin(ctx); err != nil {
		return nil, err
	}
	return t.Tx.Begin(ctx)
}

// Conn and LargeObjects hand out ways to run statements past the wrapper, so the
// pending statements are sent first. A failure aborts the transaction, which the
// step then sees.
func (t *stepTx) Conn() *pgx.Conn {
	_ = t.begin(t.ctx)
	return t.Tx.Conn()
}

func (t *stepTx) LargeObjects() pgx.LargeObjects {
	_ = t.begin(t.ctx)
	return t.Tx.LargeObjects()
}

type errRow struct{ err error }

func (r errRow) Scan(...any) error { return r.err }
