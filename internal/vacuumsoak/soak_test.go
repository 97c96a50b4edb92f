package vacuumsoak_test

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sagabox/sagabox/inbox/consumer"
	"github.com/sagabox/sagabox/internal/testenv"
	"github.com/sagabox/sagabox/outbox"
	"github.com/sagabox/sagabox/relay"
	"github.com/sagabox/sagabox/relay/kafkapub"
	"github.com/sagabox/sagabox/sagastate/sagatest"
)

func TestMain(m *testing.M) { os.Exit(testenv.Run(m)) }

type sample struct {
	size, live, dead, vacuums int64
}

func TestSustainedTableSizes(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("SAGABOX_VACUUM_SOAK"))
	if n <= 0 {
		t.Skip("set SAGABOX_VACUUM_SOAK=<messages> (e.g. 1000000) to run the sustained run")
	}
	db := testenv.NewDB(t)
	k := testenv.NewKafka(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	exec := func(sql string) {
		t.Helper()
		if _, err := db.Pool.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	if os.Getenv("SAGABOX_TEST_DATABASE_URL") == "" {
		naptime := os.Getenv("SAGABOX_VACUUM_SOAK_NAPTIME")
		if naptime == "" {
			naptime = "10s"
		}
		exec(`ALTER SYSTEM SET autovacuum_naptime = '` + naptime + `'`)
		exec(`SELECT pg_reload_conf()`)
		t.Cleanup(func() {
			_, _ = db.Pool.Exec(context.Background(), `ALTER SYSTEM RESET autovacuum_naptime`)
			_, _ = db.Pool.Exec(context.Background(), `SELECT pg_reload_conf()`)
		})
	}
	mode := "migration 00007 settings"
	if os.Getenv("SAGABOX_VACUUM_SOAK_BASELINE") != "" {
		mode = "PostgreSQL defaults (baseline)"
		exec(`ALTER TABLE sagabox.outbox_messages RESET (autovacuum_vacuum_scale_factor, autovacuum_vacuum_threshold,
 autovacuum_vacuum_insert_scale_factor, autovacuum_vacuum_insert_threshold, autovacuum_analyze_scale_factor,
 autovacuum_analyze_threshold, autovacuum_vacuum_cost_delay)`)
		exec(`ALTER TABLE sagabox.inbox_messages RESET (autovacuum_vacuum_scale_factor, autovacuum_vacuum_threshold,
 autovacuum_vacuum_insert_scale_factor, autovacuum_analyze_scale_factor)`)
	}
	var naptime string
	if err := db.Pool.QueryRow(ctx, `SHOW autovacuum_naptime`).Scan(&naptime); err != nil {
		t.Fatal(err)
	}
	topic := testenv.Topic("soak")
	k.CreateTopic(t, topic, 8)

	pub, err := kafkapub.New(kafkapub.Config{Brokers: k.Brokers})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	r, err := relay.New(db.Pool, pub, relay.Config{BatchSize: 1000, PollInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	var consumed atomic.Int64
	cc := sagatest.FastConsumer()
	cc.Brokers, cc.GroupID, cc.Topics, cc.BatchSize = k.Brokers, "soak", []string{topic}, 256
	cc.Retention = 30 * time.Second // the sweep deletes inbox rows during the run
	cc.Hooks.Handled = func(consumer.Message, bool) { consumed.Add(1) }
	c, err := consumer.New(db.Pool, cc, func(context.Context, pgx.Tx, consumer.Message) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() { _ = r.Run(ctx) })
	wg.Go(func() { _ = c.Run(ctx) })

	var produced atomic.Int64
	wg.Go(func() {
		payload := make([]byte, 200)
		const batch = 500
		for produced.Load() < int64(n) && ctx.Err() == nil {
			msgs := make([]outbox.Message, batch)
			for i := range msgs {
				msgs[i] = outbox.Message{Topic: topic, Key: strconv.Itoa(i % 64), Payload: payload}
			}
			if err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error { return outbox.Enqueue(ctx, tx, msgs...) }); err != nil {
				if ctx.Err() == nil {
					t.Errorf("enqueue: %v", err)
				}
				return
			}
			produced.Add(batch)
			// Keep the backlog bounded: a producer far ahead of the relay measures the
			// backlog, not the vacuum.
			for produced.Load()-consumed.Load() > 50000 && ctx.Err() == nil {
				time.Sleep(50 * time.Millisecond)
			}
		}
	})

	tables := []string{"outbox_messages", "inbox_messages"}
	peak := map[string]sample{}
	measure := func() map[string]sample {
		out := map[string]sample{}
		for _, tb := range tables {
			var s sample
			err := db.Pool.QueryRow(ctx, `SELECT pg_total_relation_size(relid), n_live_tup, n_dead_tup, autovacuum_count
FROM pg_stat_user_tables WHERE schemaname = 'sagabox' AND relname = $1`, tb).Scan(&s.size, &s.live, &s.dead, &s.vacuums)
			if err != nil {
				t.Fatal(err)
			}
			out[tb] = s
			p := peak[tb]
			p.size, p.dead, p.live = max(p.size, s.size), max(p.dead, s.dead), max(p.live, s.live)
			peak[tb] = p
		}
		return out
	}
	start := time.Now()
	t.Logf("%d messages, %s, autovacuum_naptime %s", n, mode, naptime)
	t.Logf("%7s %9s %9s | %-40s | %-40s", "t", "produced", "consumed", "outbox: size live dead vacuums", "inbox: size live dead vacuums")
	row := func(m map[string]sample) {
		f := func(s sample) string {
			return fmt.Sprintf("%6.1fMB %8d %8d %4d", float64(s.size)/(1<<20), s.live, s.dead, s.vacuums)
		}
		t.Logf("%6.0fs %9d %9d | %-40s | %-40s", time.Since(start).Seconds(), produced.Load(), consumed.Load(),
			f(m["outbox_messages"]), f(m["inbox_messages"]))
	}
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	deadline := time.After(50 * time.Minute)
	for consumed.Load() < int64(n) {
		select {
		case <-tick.C:
			row(measure())
		case <-deadline:
			t.Fatalf("only %d of %d messages consumed after 50 minutes", consumed.Load(), n)
		}
	}
	elapsed := time.Since(start)
	// Two more naptimes, to see where the tables settle once the load stops.
	settle := time.After(2*napDuration(naptime) + 5*time.Second)
wait:
	for {
		select {
		case <-tick.C:
			row(measure())
		case <-settle:
			break wait
		}
	}
	final := measure()
	for _, tb := range tables {
		t.Logf("%s: peak size %.1fMB, peak dead rows %d, peak live rows %d; after the run %.1fMB, %d live, %d dead, %d autovacuums",
			tb, float64(peak[tb].size)/(1<<20), peak[tb].dead, peak[tb].live, float64(final[tb].size)/(1<<20),
			final[tb].live, final[tb].dead, final[tb].vacuums)
	}
	t.Logf("%d messages in %s (%.0f msg/s)", n, elapsed.Round(time.Second), float64(n)/elapsed.Seconds())
}

func napDuration(s string) time.Duration {
	if d, err := time.ParseDuration(s); err == nil {
		return d
	}
	if d, err := time.ParseDuration(s + "s"); err == nil {
		return d
	}
	return time.Minute
}
