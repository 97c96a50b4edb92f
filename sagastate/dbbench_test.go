package sagastate

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagabox/sagabox/internal/testenv"
	"github.com/sagabox/sagabox/outbox"
	"github.com/sagabox/sagabox/wire"
)

// BenchmarkStateDB measures the orchestrator's own database work for the no-op 4-step
// saga, without Kafka, relay or participants: workers start sagas (a transaction each,
// as a caller would) and apply their replies the way the reply consumer does, several
// sagas' replies per transaction (applyMany), while the sweeper runs every 50ms. The
// baseline, in the same run, is the same transactions writing the same commands into
// the outbox with no saga state. Both are bounded by PostgreSQL's CPU: the ratio is what
// saga state costs. With pg_stat_statements on the server (SAGABOX_TEST_DATABASE_URL),
// its figures cover the saga part only.
func BenchmarkStateDB(b *testing.B) {
	ctx := context.Background()
	steps := []string{"s1", "s2", "s3", "s4"}
	var stages []Stage
	for _, s := range steps {
		stages = append(stages, Step(s, "bench.cmds").Do(s+".do").Undo(s+".undo"))
	}
	def := Define[map[string]any]("bench", stages...)
	out, err := outbox.New(outbox.Config{})
	if err != nil {
		b.Fatal(err)
	}
	for range b.N {
		// Baseline: the commands alone.
		pool := benchPool(b)
		command := func(ctx context.Context, tx pgx.Tx, ids []uuid.UUID, step int) error {
			msgs := make([]outbox.Message, len(ids))
			for i, id := range ids {
				msgs[i] = wire.Command{SagaID: id, SagaType: "bench", Step: steps[step], Op: wire.OpForward, Attempt: 1,
					Name: steps[step] + ".do", ReplyTo: DefaultReplyTopic, Payload: []byte(`{"n":1}`)}.Message("bench.cmds")
			}
			return out.Enqueue(ctx, tx, msgs...)
		}
		base := stateLoad{
			start: func(ctx context.Context, tx pgx.Tx, id uuid.UUID) error { return command(ctx, tx, []uuid.UUID{id}, 0) },
			reply: func(ctx context.Context, tx pgx.Tx, ids []uuid.UUID, step int) error {
				if step+1 < len(steps) {
					return command(ctx, tx, ids, step+1)
				}
				return nil
			},
		}
		base.drive(b, pool, 2) // warm up
		baseRate := base.drive(b, pool, stateRounds)
		pool.Close()

		// The saga.
		pool = benchPool(b)
		o, err := New(pool, Config{Sagas: []Definition{def}})
		if err != nil {
			b.Fatal(err)
		}
		saga := stateLoad{
			start: func(ctx context.Context, tx pgx.Tx, id uuid.UUID) error {
				return o.Start(ctx, tx, "bench", id, map[string]any{"n": 1})
			},
			reply: func(ctx context.Context, tx pgx.Tx, ids []uuid.UUID, step int) error {
				in := make([]sagaInput, len(ids))
				for i, id := range ids {
					in[i] = sagaInput{id, input{kind: inReply, reply: wire.Reply{SagaID: id, Step: steps[step], Op: wire.OpForward,
						Attempt: 1, Outcome: wire.OutcomeSuccess, Payload: []byte(`{"ok":true}`)}}}
				}
				_, err := o.applyMany(ctx, tx, in, nil)
				return err
			},
		}
		// Warm up as on a fresh database: statements prepared, tables past their first
		// pages, statistics what autovacuum left if it came by.
		saga.drive(b, pool, 2)
		if conn, err := pgx.Connect(ctx, testenv.ServerURL(b)); err == nil {
			_, _ = conn.Exec(ctx, "SELECT pg_stat_statements_reset()") // when the server has it
			conn.Close(ctx)
		}
		sweepCtx, stopSweep := context.WithCancel(ctx)
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
		sagaRate := saga.drive(b, pool, stateRounds)
		stopSweep()
		<-swept
		var done int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM "sagabox"."saga_instances" WHERE "status" = 'completed'`).Scan(&done); err != nil {
			b.Fatal(err)
		}
		if want := (2 + stateRounds) * stateWorkers * statePerTx; done != want {
			b.Fatalf("%d of %d sagas completed", done, want)
		}
		pool.Close()
		load, _ := exec.Command("uptime").Output()
		fmt.Fprintf(os.Stderr, "\nsaga state in PostgreSQL, no Kafka (%d workers, %d replies per transaction, fsync off; load: %s)\n",
			stateWorkers, statePerTx, strings.TrimSpace(string(load)))
		fmt.Fprintf(os.Stderr, "  baseline: the same transactions, commands only  %6.0f flows/s\n", baseRate)
		fmt.Fprintf(os.Stderr, "  no-op 4-step saga (sagastate)                    %6.0f sagas/s  %.2f× baseline\n", sagaRate, sagaRate/baseRate)
		tableStats(b, pool.Config().ConnString())
		b.ReportMetric(sagaRate, "sagas/s")
		b.ReportMetric(baseRate, "baseline-flows/s")
		b.ReportMetric(sagaRate/baseRate, "saga/baseline")
	}
}

const stateWorkers, statePerTx, stateRounds = 8, 8, 40

// benchPool is a pool on a fresh database with a connection per worker.
func benchPool(b *testing.B) *pgxpool.Pool {
	db := testenv.NewDB(b)
	cfg, err := pgxpool.ParseConfig(db.URL)
	if err != nil {
		b.Fatal(err)
	}
	cfg.MaxConns = stateWorkers + 2
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(pool.Close)
	return pool
}

// stateLoad is one kind of flow: a transaction that starts it, and one per step that
// applies the replies of several flows.
type stateLoad struct {
	start func(ctx context.Context, tx pgx.Tx, id uuid.UUID) error
	reply func(ctx context.Context, tx pgx.Tx, ids []uuid.UUID, step int) error
}

// drive runs rounds of statePerTx flows on each of stateWorkers workers and returns
// flows per second.
func (l stateLoad) drive(b *testing.B, pool *pgxpool.Pool, rounds int) float64 {
	ctx := context.Background()
	begin := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, stateWorkers)
	for range stateWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range rounds {
				ids := make([]uuid.UUID, statePerTx)
				for i := range ids {
					ids[i] = uuid.New()
					if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return l.start(ctx, tx, ids[i]) }); err != nil {
						errs <- err
						return
					}
				}
				for step := range 4 {
					if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return l.reply(ctx, tx, ids, step) }); err != nil {
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
	return float64(rounds*stateWorkers*statePerTx) / time.Since(begin).Seconds()
}

// tableStats prints how many updates of the saga tables were HOT (no new index entries).
func tableStats(b *testing.B, url string) {
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close(ctx)
	time.Sleep(1500 * time.Millisecond) // the pool's backends flush their statistics as they exit
	rows, _ := conn.Query(ctx, `SELECT relname || ': ' || n_tup_ins || ' inserted, ' || n_tup_upd || ' updated (' || n_tup_hot_upd || ' HOT), ' || pg_size_pretty(pg_total_relation_size(relid))
FROM pg_stat_user_tables WHERE relname IN ('saga_instances', 'saga_steps', 'saga_events') ORDER BY relname`)
	lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		b.Fatal(err)
	}
	for _, l := range lines {
		fmt.Fprintln(os.Stderr, "  "+l)
	}
}
