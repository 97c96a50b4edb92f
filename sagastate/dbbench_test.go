package sagastate

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagabox/sagabox/internal/testenv"
	"github.com/sagabox/sagabox/wire"
)

// BenchmarkStateDB measures the orchestrator's own database work for the no-op 4-step
// saga, without Kafka, relay or participants: workers start sagas (a transaction each,
// as a caller would) and apply their replies the way the reply consumer does, several
// sagas' replies per transaction (applyMany). What it prints is bounded by PostgreSQL's
// CPU per saga, the cost this package's statements and schema decide.
func BenchmarkStateDB(b *testing.B) {
	const workers, perTx, rounds = 8, 8, 40
	ctx := context.Background()
	db := testenv.NewDB(b)
	cfg, err := pgxpool.ParseConfig(db.URL)
	if err != nil {
		b.Fatal(err)
	}
	cfg.MaxConns = workers + 2
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer pool.Close()
	steps := []string{"s1", "s2", "s3", "s4"}
	var stages []Stage
	for _, s := range steps {
		stages = append(stages, Step(s, "bench.cmds").Do(s+".do").Undo(s+".undo"))
	}
	o, err := New(pool, Config{Sagas: []Definition{Define[map[string]any]("bench", stages...)}})
	if err != nil {
		b.Fatal(err)
	}
	run := func(rounds int) {
		var wg sync.WaitGroup
		errs := make(chan error, workers)
		for range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range rounds {
					ids := make([]uuid.UUID, perTx)
					for i := range ids {
						ids[i] = uuid.New()
						if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
							return o.Start(ctx, tx, "bench", ids[i], map[string]any{"n": i})
						}); err != nil {
							errs <- err
							return
						}
					}
					for _, s := range steps {
						in := make([]sagaInput, len(ids))
						for i, id := range ids {
							in[i] = sagaInput{id, input{kind: inReply, reply: wire.Reply{SagaID: id, Step: s, Op: wire.OpForward, Attempt: 1, Outcome: wire.OutcomeSuccess, Payload: []byte(`{"ok":true}`)}}}
						}
						if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
							_, err := o.applyMany(ctx, tx, in)
							return err
						}); err != nil {
							errs <- err
							return
						}
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		if err := <-errs; err != nil {
			b.Fatal(err)
		}
	}
	// Warm up (groups of statements prepared, tables past their first pages), as on a
	// fresh database: the statistics are what autovacuum left, if it came by yet.
	run(2)
	if os.Getenv("SAGADB_ANALYZE") != "" {
		if _, err := pool.Exec(ctx, `ANALYZE "sagabox"."saga_instances", "sagabox"."saga_steps", "sagabox"."saga_events"`); err != nil {
			b.Fatal(err)
		}
	}
	pool.Reset()
	if conn, err := pgx.Connect(ctx, testenv.ServerURL(b)); err == nil {
		_, _ = conn.Exec(ctx, "SELECT pg_stat_statements_reset()") // when the server has it
		conn.Close(ctx)
	}
	sweepCtx, stopSweep := context.WithCancel(ctx)
	defer stopSweep()
	swept := make(chan struct{})
	go func() { // the sweeper, as sagatest runs it
		defer close(swept)
		for sweepCtx.Err() == nil {
			_, _ = o.Sweep(sweepCtx)
			select {
			case <-sweepCtx.Done():
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	for range b.N {
		begin := time.Now()
		run(rounds)
		n := workers * rounds * perTx
		var done int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM "sagabox"."saga_instances" WHERE "status" = 'completed'`).Scan(&done); err != nil {
			b.Fatal(err)
		}
		if done < n+2*workers*perTx {
			b.Fatalf("%d of %d sagas completed", done, n)
		}
		el := time.Since(begin)
		stopSweep()
		<-swept
		defer func() { pool.Close(); tableStats(b, db) }()
		b.ReportMetric(float64(n)/el.Seconds(), "sagas/s")
		fmt.Fprintf(os.Stderr, "state db: %d sagas (%d workers, %d replies per tx) in %v: %.0f sagas/s\n", n, workers, perTx, el.Round(time.Millisecond), float64(n)/el.Seconds())
	}
}

// tableStats prints how many updates of the saga tables were HOT (no index entries).
func tableStats(b *testing.B, db *testenv.DB) {
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, db.URL)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close(ctx)
	time.Sleep(1500 * time.Millisecond) // the pool's backends flush their statistics as they exit
	rows, _ := conn.Query(ctx, `SELECT relname || ': ins ' || n_tup_ins || ' upd ' || n_tup_upd || ' hot ' || n_tup_hot_upd || ' del ' || n_tup_del || ' size ' || pg_size_pretty(pg_total_relation_size(relid))
FROM pg_stat_user_tables WHERE relname LIKE 'saga_%' ORDER BY relname`)
	lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		b.Fatal(err)
	}
	for _, l := range lines {
		fmt.Fprintln(os.Stderr, "  "+l)
	}
}
