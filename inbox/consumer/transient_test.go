package consumer_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/sagabox/sagabox/inbox/consumer"
	"github.com/sagabox/sagabox/internal/kafkatest"
	"github.com/sagabox/sagabox/internal/testenv"
	"github.com/sagabox/sagabox/outbox"
)

// raise makes the server fail the statement with SQLSTATE code: a real PostgreSQL
// error, as a deadlock or a serialization failure would arrive.
func raise(ctx context.Context, tx pgx.Tx, code string) error {
	_, err := tx.Exec(ctx, fmt.Sprintf(`DO $$ BEGIN RAISE EXCEPTION 'pretend %s' USING ERRCODE = '%s'; END $$`, code, code))
	return err
}

func TestIsTransient(t *testing.T) {
	t.Parallel()
	db := testenv.NewDB(t)
	ctx := context.Background()
	inTx := func(fn func(tx pgx.Tx) error) error {
		return pgx.BeginFunc(ctx, db.Pool, fn)
	}
	for code, want := range map[string]bool{
		"40001": true, "40P01": true, "55P03": true, "57014": true, "57P01": true, "53300": true,
		"23505": false, "22P05": false, "22021": false, "P0001": false, "42P01": false,
	} {
		err := inTx(func(tx pgx.Tx) error { return raise(ctx, tx, code) })
		if got := consumer.IsTransient(fmt.Errorf("handler: %w", err)); got != want {
			t.Errorf("IsTransient(SQLSTATE %s) = %v, want %v (err %v)", code, got, want, err)
		}
	}
	t.Run("StatementTimeout", func(t *testing.T) {
		err := inTx(func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `SET LOCAL statement_timeout = '10ms'`); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, `SELECT pg_sleep(5)`)
			return err
		})
		if !consumer.IsTransient(err) {
			t.Errorf("statement timeout: IsTransient(%v) = false", err)
		}
	})
	t.Run("ConnectionTerminated", func(t *testing.T) {
		err := inTx(func(tx pgx.Tx) error {
			_, err := tx.Exec(ctx, `SELECT pg_terminate_backend(pg_backend_pid())`)
			return err
		})
		if !consumer.IsTransient(err) {
			t.Errorf("terminated backend: IsTransient(%v) = false", err)
		}
	})
	t.Run("ConnectionRefused", func(t *testing.T) {
		_, err := pgx.Connect(ctx, "postgres://nobody@127.0.0.1:1/none?connect_timeout=5")
		if err == nil || !consumer.IsTransient(err) {
			t.Errorf("refused connection: IsTransient(%v) = false", err)
		}
	})
	t.Run("NotTransient", func(t *testing.T) {
		canceled, cancel := context.WithCancel(ctx)
		cancel()
		_, errCanceled := db.Pool.Exec(canceled, `SELECT 1`)
		deadlock := &pgconn.PgError{Code: "40P01"}
		for _, err := range []error{nil, errors.New("deadlock detected (a plain error)"), context.Canceled, errCanceled,
			consumer.Permanent(deadlock), fmt.Errorf("x: %w", consumer.Permanent(deadlock))} {
			if consumer.IsTransient(err) {
				t.Errorf("IsTransient(%v) = true", err)
			}
		}
	})
}

// TestTransientErrorsSpendNoAttemptAndNeverDeadLetter: with MaxAttempts 1 any
// counted failure dead-letters at once, so the records below survive only if
// serialization failures, deadlocks and a lost connection are retried locally.
func TestTransientErrorsSpendNoAttemptAndNeverDeadLetter(t *testing.T) {
	t.Parallel()
	e := setup(t, 1)
	recs := e.produceAccount0(t, 8)
	id := func(n int) uuid.UUID { return uuid.MustParse(recs[n].Headers[outbox.HeaderMessageID]) }
	faults := map[uuid.UUID]func(ctx context.Context, tx pgx.Tx) error{
		id(2): func(ctx context.Context, tx pgx.Tx) error { return raise(ctx, tx, "40001") },
		id(4): func(ctx context.Context, tx pgx.Tx) error { return raise(ctx, tx, "40P01") },
		id(6): func(ctx context.Context, tx pgx.Tx) error {
			_, err := tx.Exec(ctx, `SELECT pg_terminate_backend(pg_backend_pid())`)
			return err
		},
	}
	var mu sync.Mutex
	runs := map[uuid.UUID]int{}
	var local, retries atomic.Int64
	cfg := e.config()
	cfg.MaxAttempts = 1
	cfg.Hooks.LocalRetry = func(string, int, error) { local.Add(1) }
	cfg.Hooks.Retry = func(consumer.Message, int, error) { retries.Add(1) }
	c, err := consumer.New(e.db.Pool, cfg, func(ctx context.Context, tx pgx.Tx, msg consumer.Message) error {
		if err := apply(ctx, tx, msg); err != nil {
			return err
		}
		mu.Lock()
		runs[msg.ID]++
		n := runs[msg.ID]
		mu.Unlock()
		if fault := faults[msg.ID]; fault != nil && n <= 3 {
			return fmt.Errorf("reserve stock: %w", fault(ctx, tx)) // wrapped, as handlers do
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	start(t, c)
	kafkatest.WaitCommitted(t, e.k.Brokers, e.group, e.topic, 1, waitFor)

	if n := e.count(t, `SELECT count(*) FROM "sagabox"."inbox_dead_letters"`); n != 0 {
		t.Fatalf("%d dead letters; transient errors must never dead-letter a record", n)
	}
	if b, want := e.balances(t)["acct-0"], int64(36); b != want {
		t.Fatalf("balance = %d, want %d = 1+…+8: every record applied once", b, want)
	}
	if got := e.count(t, `SELECT count(*) FROM (SELECT "n" <> row_number() OVER (ORDER BY "seq") - 1 AS off FROM "applied") x WHERE off`); got != 0 {
		t.Fatalf("order broken: %d applications out of place", got)
	}
	if l, r := local.Load(), retries.Load(); l < 9 || r != 0 {
		t.Fatalf("hooks saw %d local retries and %d attempt-spending retries; want at least 9 (3 per faulty record) and 0", l, r)
	}
}

// TestHotRowsInLockOrderDoNotDeadlock: four workers' shared transactions update the
// same few rows, which the records' keys do not name; with LockKey naming them the
// transactions lock them in one order and no deadlock is ever detected.
func TestHotRowsInLockOrderDoNotDeadlock(t *testing.T) {
	t.Parallel()
	e := setup(t, 4)
	const hot, n = 4, 400
	var recs []kafkatest.Record
	for i := range n {
		// Keys are unique (a saga id, say); the payload names the hot row.
		recs = append(recs, kafkatest.FromOutbox(outbox.Message{Key: uuid.NewString(), Payload: []byte(strconv.Itoa((i*7 + i/e.parts) % hot))}, i%e.parts))
	}
	kafkatest.Produce(t, e.k.Brokers, e.topic, recs...)
	var deadlocks atomic.Int64
	cfg := e.config()
	cfg.Concurrency = 4
	cfg.LockKey = func(m consumer.Message) []byte { return m.Value }
	cfg.Hooks.LocalRetry = func(_ string, _ int, err error) {
		var pg *pgconn.PgError
		if errors.As(err, &pg) && pg.Code == "40P01" {
			deadlocks.Add(1)
		}
	}
	c, err := consumer.New(e.db.Pool, cfg, func(ctx context.Context, tx pgx.Tx, msg consumer.Message) error {
		_, err := tx.Exec(ctx, `INSERT INTO "accounts" VALUES ($1, 1) ON CONFLICT ("id") DO UPDATE SET "balance" = "accounts"."balance" + 1`, "hot-"+string(msg.Value))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	start(t, c)
	kafkatest.WaitCommitted(t, e.k.Brokers, e.group, e.topic, e.parts, waitFor)
	var total int64
	for _, b := range e.balances(t) {
		total += b
	}
	if total != n {
		t.Fatalf("hot rows sum to %d, want %d", total, n)
	}
	if d := deadlocks.Load(); d != 0 {
		t.Fatalf("%d deadlocks detected; transactions sorted by LockKey must lock the hot rows in one order", d)
	}
}
