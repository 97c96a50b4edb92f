package relay_test

// The relay's benchmarks (issue 11). `make bench` runs them once each
// (-benchtime 1x); every figure is printed beside its baseline or limit measured
// in the same run, with the ratio, and with the machine's load, since the figures
// of a shared 2-core machine mean something only relative to each other.
//
// What runs where: PostgreSQL is a durable cluster of the benchmarks' own
// (benchServer); the broker (kfake) and every relay are processes of their own
// (the test binary run again, see benchenv_test.go), each relay with the
// library's defaults (its pool sized by Config.PoolConns, as outbox-relay sizes it)
// unless a line says otherwise; producers, readers and the
// baselines run in the benchmark process.
//
// Knobs (environment):
//
//	SAGABOX_BENCH_BACKLOG=N     rows of the drain backlogs (default 100000)
//	SAGABOX_BENCH_PROFILE=DIR   write the relay drains' CPU profiles to DIR/relay-drain.pprof (×1) and relay-drain-x3-N.pprof
//	SAGABOX_BENCH_MEMORY=1      run BenchmarkRelayMemory: RSS draining 1M rows of 1 KiB (about 3 minutes)
//	SAGABOX_BENCH_DELAYS=D,…    injected broker latencies of the scale-out figures (default 50ms,100ms)
//	SAGABOX_BENCH_WAKE=TEXT     BenchmarkRelayWakeup runs only the relay lines whose name contains TEXT
//	SAGABOX_BENCH_WAKE_DELAY=D  BenchmarkRelayWakeup's broker delays every produce request by D (default none)

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/segmentio/kafka-go"

	"github.com/sagabox/sagabox/outbox"
	"github.com/sagabox/sagabox/relay"
)

const (
	benchKeys       = 1000
	benchPartitions = 8
)

// benchProduceDelays are the broker latencies injected for the scale-out figures:
// 50, 100 and 200 ms (a broker in another region, or one struggling). Three relays
// scale out only while one waits for the broker and three still leave the two
// cores room: one relay's two loops move 2 × 2000 rows per round trip (about 53k,
// 31k and 15k msgs/s), so at 50 ms one relay already uses most of what the cores
// give and ×3/×1 shows how much CPU is left, at 200 ms what the coordination
// costs. (With 500-row batches one relay was latency-bound from 50 ms: 16k msgs/s.)
var benchProduceDelays = []time.Duration{50 * time.Millisecond, 100 * time.Millisecond, 200 * time.Millisecond}

// benchDelays returns the injected broker latencies of the scale-out figures:
// SAGABOX_BENCH_DELAYS (comma-separated durations), else benchProduceDelays.
func benchDelays() []time.Duration {
	var out []time.Duration
	for f := range strings.SplitSeq(os.Getenv("SAGABOX_BENCH_DELAYS"), ",") {
		if d, err := time.ParseDuration(strings.TrimSpace(f)); err == nil && d > 0 {
			out = append(out, d)
		}
	}
	if len(out) == 0 {
		out = benchProduceDelays
	}
	return out
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }

// BenchmarkRelayDrain drains backlogs of 1 KiB rows: the database's and the
// broker's own limits first (raw claim+delete on one connection, raw kafka-go
// produce), then relay processes ×1 and ×3, on the plain broker and on one that
// delays every produce request by each of benchDelays.
func BenchmarkRelayDrain(b *testing.B) {
	n := envInt("SAGABOX_BENCH_BACKLOG", 200_000)
	// The delayed drains are as long as the plain ones: ×3 then lasts 2-4 s, and the
	// relays' first claims on busy cores, which spread their starts by up to 200 ms,
	// weigh half as much as with n/2.
	nDelayed := n
	load0, cpu0 := loadAvg(), sampleCPU()
	plain := startBroker(b, 0)

	rawBefore, rawDeleteCPU := rawDrain(b, n, false)
	rawReturning, rawReturningCPU := rawDrain(b, n, true)
	rawProduce, rawProduceCPU := rawKafkaProduce(b, plain, n)
	var prof string
	if dir := os.Getenv("SAGABOX_BENCH_PROFILE"); dir != "" {
		prof = filepath.Join(dir, "relay-drain.pprof")
	}
	one := relayDrain(b, plain, n, 1, benchRelayOpts{CPUProfile: prof}, true)
	// The raw drain again right after relay ×1: one connection's rate varies by
	// a third between runs minutes apart on these shared cores, so relay ×1 is
	// compared with the mean of the drains on either side of it.
	rawAfter, _ := rawDrain(b, n, false)
	rawDelete := (rawBefore + rawAfter) / 2
	var prof3 string
	if prof != "" {
		prof3 = filepath.Join(filepath.Dir(prof), "relay-drain-x3.pprof")
	}
	three := relayDrain(b, plain, n, 3, benchRelayOpts{CPUProfile: prof3}, true)
	// With one publish loop per relay, each loop's claim scans past the rows of the
	// other relays' loops only (2 loops in all for ×1 … 6 for ×3 by default).
	oneW1 := relayDrain(b, plain, n, 1, benchRelayOpts{Workers: 1}, false)
	threeW1 := relayDrain(b, plain, n, 3, benchRelayOpts{Workers: 1}, false)
	type delayedRun struct {
		delay      time.Duration
		one, three drainResult
	}
	var delayedRuns []delayedRun
	for _, d := range benchDelays() {
		k := startBroker(b, d)
		delayedRuns = append(delayedRuns, delayedRun{delay: d,
			one: relayDrain(b, k, nDelayed, 1, benchRelayOpts{}, false), three: relayDrain(b, k, nDelayed, 3, benchRelayOpts{}, false)})
	}
	busy := sampleCPU().since(cpu0)

	b.ReportMetric(one.rate, "relay-msgs/s")
	b.ReportMetric(rawDelete, "claim+delete-rows/s")
	b.ReportMetric(one.rate/rawDelete, "relay/raw-drain")
	b.ReportMetric(three.rate/one.rate, "x3/x1")
	for _, d := range delayedRuns {
		b.ReportMetric(d.three.rate/d.one.rate, "x3/x1-"+d.delay.String())
	}
	b.ReportMetric(mib(one.rss), "relay-rss-MiB")

	w := os.Stdout
	fmt.Fprintf(w, "\nRelay drain, backlog of %d rows × 1 KiB, %d keys, topic of %d partitions\n", n, benchKeys, benchPartitions)
	fmt.Fprintf(w, "  %s; broker: kfake, 1 broker, own process, acks=all; relays: own processes, library defaults, pool sized as outbox-relay sizes it (Config.PoolConns)\n", benchPG.settings)
	fmt.Fprintf(w, "  load average %s at start, %s at end; machine CPU busy %.0f%% during the benchmark (%d cores, shared)\n",
		load0, loadAvg(), 100*busy, runtimeCPUs())
	line := func(name string, v float64, unit, cmp string) {
		fmt.Fprintf(w, "  %-52s %9.0f %-7s %s\n", name, v, unit, cmp)
	}
	line("baseline: raw claim+delete, 1 connection, 1000/stmt", rawDelete, "rows/s",
		fmt.Sprintf("mean of %.0f before the relays and %.0f after relay ×1; %s", rawBefore, rawAfter, rawDeleteCPU.perMsg(n)))
	line("baseline: same, DELETE … RETURNING the rows", rawReturning, "rows/s", fmt.Sprintf("%.2f× of raw claim+delete; %s", rawReturning/rawDelete, rawReturningCPU.perMsg(n)))
	line("baseline: raw kafka-go produce, 1000/call, acks=all", rawProduce, "msgs/s", rawProduceCPU.perMsg(n))
	serial := 1 / (1/rawReturning + 1/rawProduce)
	line("bound: RETURNING drain and produce one after the other", serial, "msgs/s", "")
	line("relay ×1", one.rate, "msgs/s", fmt.Sprintf("%.2f× raw claim+delete (target ≥ 0.85); %.2f× with RETURNING; %.2f× raw produce; %.2f× the bound",
		one.rate/rawDelete, one.rate/rawReturning, one.rate/rawProduce, one.rate/serial))
	fmt.Fprintf(w, "  %52s %s; %s\n", "", one.cpuNote(n), one.spreadNote())
	line("relay ×3", three.rate, "msgs/s", fmt.Sprintf("%.2f× relay ×1 (target ≥ 0.95)%s; published per relay %v", three.rate/one.rate, three.dupNote(), three.published))
	fmt.Fprintf(w, "  %52s %s\n", "", three.cpuNote(n))
	fmt.Fprintf(w, "  %52s %s\n", "", three.spreadNote())
	line("relay ×1, Workers 1", oneW1.rate, "msgs/s", fmt.Sprintf("%.2f× relay ×1", oneW1.rate/one.rate))
	fmt.Fprintf(w, "  %52s %s\n", "", oneW1.cpuNote(n))
	line("relay ×3, Workers 1 each", threeW1.rate, "msgs/s", fmt.Sprintf("%.2f× relay ×1, Workers 1%s", threeW1.rate/oneW1.rate, threeW1.dupNote()))
	fmt.Fprintf(w, "  %52s %s\n", "", threeW1.cpuNote(n))
	for _, d := range delayedRuns {
		fmt.Fprintf(w, "  broker latency %v per produce request, backlog of %d:\n", d.delay, nDelayed)
		line("  relay ×1", d.one.rate, "msgs/s", "")
		fmt.Fprintf(w, "  %52s %s; %s\n", "", d.one.cpuNote(nDelayed), d.one.spreadNote())
		line("  relay ×3", d.three.rate, "msgs/s", fmt.Sprintf("%.2f× relay ×1 (target ≥ 2.5)%s; published per relay %v", d.three.rate/d.one.rate, d.three.dupNote(), d.three.published))
		fmt.Fprintf(w, "  %52s %s\n", "", d.three.cpuNote(nDelayed))
		fmt.Fprintf(w, "  %52s %s\n", "", d.three.spreadNote())
	}
	fmt.Fprintf(w, "  relay ×1 memory: peak RSS %.1f MiB (limit 100 MiB at 1M rows: SAGABOX_BENCH_MEMORY=1), peak heap in use %.1f MiB\n", mib(one.rss), mib(one.heap))
	fmt.Fprintf(w, "  relay ×1: drained (deleted) %v after its first record; busiest statements (pg_stat_statements):\n", one.toEmpty.Round(time.Millisecond))
	for _, s := range one.statements {
		fmt.Fprintf(w, "    %s\n", s)
	}
	fmt.Fprintf(w, "  relay ×3: drained (deleted) %v after its first record; busiest statements:\n", three.toEmpty.Round(time.Millisecond))
	for _, s := range three.statements {
		fmt.Fprintf(w, "    %s\n", s)
	}
	if prof != "" {
		fmt.Fprintf(w, "  relay ×1 CPU profile: %s (go tool pprof -top %s)\n", prof, prof)
		fmt.Fprintf(w, "  relay ×3 CPU profiles: %s-{0,1,2}.pprof\n", strings.TrimSuffix(prof3, ".pprof"))
	}
}

// BenchmarkRelayMemory drains 1M rows of 1 KiB with one relay and reports its peak
// RSS against the 100 MiB limit. It takes minutes, so `make bench` skips it unless
// SAGABOX_BENCH_MEMORY=1:
//
//	SAGABOX_BENCH_MEMORY=1 go test -run '^$' -bench BenchmarkRelayMemory -benchtime 1x ./relay/
func BenchmarkRelayMemory(b *testing.B) {
	if os.Getenv("SAGABOX_BENCH_MEMORY") == "" {
		b.Skip("takes minutes; run with SAGABOX_BENCH_MEMORY=1 (BenchmarkRelayDrain reports the RSS of its smaller drain)")
	}
	n := envInt("SAGABOX_BENCH_BACKLOG", 1_000_000)
	load0 := loadAvg()
	k := startBroker(b, 0)
	r := relayDrain(b, k, n, 1, benchRelayOpts{}, false)
	b.ReportMetric(mib(r.rss), "relay-rss-MiB")
	fmt.Fprintf(os.Stdout, "\nRelay memory draining %d rows × 1 KiB (%s; load %s → %s)\n", n, benchPG.settings, load0, loadAvg())
	fmt.Fprintf(os.Stdout, "  peak RSS %.1f MiB (limit 100 MiB: %.2f of it), peak heap in use %.1f MiB, %.0f msgs/s\n",
		mib(r.rss), mib(r.rss)/100, mib(r.heap), r.rate)
}

// rawDrain deletes a backlog of n rows in seq order, 1000 per statement, on one
// connection: the database's limit for the relay's work. With returning, the
// statement also sends the rows back, as a claim must.
func rawDrain(b *testing.B, n int, returning bool) (float64, cpuSplit) {
	b.Helper()
	ctx := context.Background()
	db := newBenchDB(b, 2)
	defer db.drop()
	fill(b, db.pool, "raw", n, benchKeys)
	conn, err := db.pool.Acquire(ctx)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Release()
	sql := `DELETE FROM "sagabox"."outbox_messages" WHERE "id" IN (
    SELECT "id" FROM "sagabox"."outbox_messages" WHERE "dead_at" IS NULL ORDER BY "seq" LIMIT 1000)`
	if returning {
		sql += ` RETURNING "id", "topic", "key", "payload", "headers", "attempts"`
	}
	postmaster := serverPID(db.pool)
	cpu0 := sampleSplit(postmaster, 0, nil)
	start := time.Now()
	for done := 0; done < n; {
		rows, err := conn.Query(ctx, sql)
		if err != nil {
			b.Fatal(err)
		}
		for rows.Next() {
			_ = rows.RawValues()
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			b.Fatal(err)
		}
		affected := int(rows.CommandTag().RowsAffected())
		if affected == 0 {
			b.Fatalf("raw drain stopped after %d of %d rows", done, n)
		}
		done += affected
	}
	rate := float64(n) / time.Since(start).Seconds()
	return rate, sampleSplit(postmaster, 0, nil).since(cpu0)
}

// rawKafkaProduce writes n 1 KiB records, 1000 per call, acks=all: the broker's limit.
func rawKafkaProduce(b *testing.B, k *benchKafka, n int) (float64, cpuSplit) {
	b.Helper()
	ctx := context.Background()
	topic := k.createTopic(b, "raw", benchPartitions)
	w := &kafka.Writer{Addr: kafka.TCP(k.brokers...), Balancer: &kafka.Murmur2Balancer{}, RequiredAcks: kafka.RequireAll,
		BatchSize: 1000, BatchBytes: 2 << 20, BatchTimeout: time.Millisecond}
	defer w.Close()
	payload := make([]byte, 1024)
	cpu0 := sampleSplit(0, k.cmd.Process.Pid, nil)
	start := time.Now()
	for i := 0; i < n; i += 1000 {
		batch := make([]kafka.Message, min(1000, n-i))
		for j := range batch {
			batch[j] = kafka.Message{Topic: topic, Key: []byte("key-" + strconv.Itoa((i+j)%benchKeys)), Value: payload,
				Headers: []kafka.Header{{Key: outbox.HeaderMessageID, Value: []byte("0190f0e2-0000-7000-8000-000000000000")}}}
		}
		if err := w.WriteMessages(ctx, batch...); err != nil {
			b.Fatal(err)
		}
	}
	rate := float64(n) / time.Since(start).Seconds()
	cpu := sampleSplit(0, k.cmd.Process.Pid, nil).since(cpu0)
	k.deleteTopics(b, topic)
	return rate, cpu
}

type drainResult struct {
	rate       float64 // msgs/s from the first record in Kafka to the last
	toEmpty    time.Duration
	rss, heap  int64   // the largest of the relays'
	dups       int64   // records beyond n (redeliveries)
	published  []int64 // per relay
	statements []string
	vacuums    int64    // autovacuums of outbox_messages during the drain (their CPU counts as PostgreSQL's)
	cpu        cpuSplit // from the first record to the backlog deleted
	// How evenly the relays shared the work: the spread of their first publishes
	// and of their last settles, and the rows of the busiest publish loop over the
	// mean (a drain lasts as long as its busiest loop: keys sit on shards, a
	// loop's shards are its relay's leased ones with shard mod Workers its number).
	startSpread, endSpread time.Duration
	busiestLoop            float64
	shards                 string // each relay's leased shards, as ranges (shardLayout)
	// The publish calls' mean time, and the share of the drain the publish loops
	// spent in them: below 1, the loops waited for their claims and settles (the
	// database, or CPU) instead of the broker.
	publishMean time.Duration
	publishing  float64
}

// spreadNote says how evenly the relays of a drain shared it.
func (d drainResult) spreadNote() string {
	loops := fmt.Sprintf("publish calls %.1f ms on average, the loops %.0f%% of the drain in them; busiest publish loop %.2f× the mean rows",
		float64(d.publishMean.Microseconds())/1000, 100*d.publishing, d.busiestLoop)
	if len(d.published) == 1 {
		return loops
	}
	return fmt.Sprintf("relays' first publishes %v apart, last settles %v apart; %s; shards leased %s",
		d.startSpread.Round(time.Millisecond), d.endSpread.Round(time.Millisecond), loops, d.shards)
}

// cpuNote is the drain's CPU split per message, and whether autovacuum ran on
// the table meanwhile (its CPU is then part of PostgreSQL's).
func (d drainResult) cpuNote(n int) string {
	if d.vacuums > 0 {
		return d.cpu.perMsg(n) + fmt.Sprintf("; autovacuum ran %d×", d.vacuums)
	}
	return d.cpu.perMsg(n)
}

func (d drainResult) dupNote() string {
	if d.dups > 0 {
		return fmt.Sprintf("; %d redelivered", d.dups)
	}
	return ""
}

// relayDrain fills a backlog of n rows, leases each relay its share of the shards
// beforehand, starts the relays together on it, and times them from the first
// record in Kafka to the last.
func relayDrain(b *testing.B, k *benchKafka, n, relays int, o benchRelayOpts, pgss bool) drainResult {
	b.Helper()
	ctx := context.Background()
	db := newBenchDB(b, 4)
	defer db.drop()
	topic := k.createTopic(b, "drain", benchPartitions)
	fill(b, db.pool, topic, n, benchKeys)
	// A relay publishes every committed row at once, so the backlog cannot be held
	// back until the relays have shared the shards (it was, by an open transaction,
	// when a row waited for every older one). Instead each relay finds its share
	// leased to it, so it moves no shard, and holds its publishes until the signal
	// (startGate): relays started one after the other (a process start takes
	// 100-300 ms on busy cores), each connected and with its first batches
	// claimed, publish together.
	leaseShares(b, db.pool, "bench-", relays)
	warm := k.createTopic(b, "warm", 1)
	procs := make([]*relayProc, relays)
	for i := range procs {
		oi := o
		oi.WarmTopic = warm
		if o.CPUProfile != "" && relays > 1 { // a profile per relay process
			oi.CPUProfile = strings.TrimSuffix(o.CPUProfile, ".pprof") + fmt.Sprintf("-%d.pprof", i)
		}
		if o.Trace != "" && relays > 1 { // a trace per relay process
			oi.Trace = o.Trace + fmt.Sprintf("-%d", i)
		}
		procs[i] = startRelayProc(b, db.url, k.brokers, fmt.Sprintf("bench-%d", i), oi)
	}
	layout := shardLayout(b, db.pool)
	workers := o.Workers
	if workers == 0 {
		workers = relay.WorkersDefault
	}
	var busiest float64
	if err := db.pool.QueryRow(ctx, `SELECT max(n)::float8 / avg(n)::float8 FROM (
    SELECT count(*) AS n FROM "sagabox"."outbox_messages" AS m JOIN "sagabox"."outbox_leases" AS l ON l."shard" = m."shard"
    GROUP BY l."owner", m."shard" % $1) AS loops`, workers).Scan(&busiest); err != nil {
		b.Fatal(err)
	}
	postmaster := serverPID(db.pool)
	tr := &kafka.Transport{}
	defer tr.CloseIdleConnections()
	client := &kafka.Client{Addr: kafka.TCP(k.brokers...), Transport: tr}
	if pgss {
		_, _ = db.pool.Exec(ctx, `SELECT pg_stat_statements_reset()`)
	}
	startGated(b, procs)
	var first time.Time
	var cpu0 cpuSplit
	var n0, seen int64
	deadline := time.Now().Add(10 * time.Minute)
	for seen < int64(n) {
		if time.Now().After(deadline) {
			b.Fatalf("relays published %d of %d in 10 minutes", seen, n)
		}
		// Each poll (ListOffsets) costs this process and the broker CPU that the relays
		// then lack: at 10 ms, 8-9 µs per message of relay ×1 with 100 ms injected,
		// against 3-4 on the plain broker (at 2 ms: 5.9 there). So polls come every
		// 10 ms until the first record, then every quarter of the time the rest should
		// take at the rate so far, between 5 and 50 ms: the window's ends stay within
		// 10 ms and 5 ms.
		wait := 10 * time.Millisecond
		if !first.IsZero() && seen > n0 {
			rate := float64(seen-n0) / time.Since(first).Seconds()
			left := time.Duration(float64(int64(n)-seen) / rate * float64(time.Second))
			wait = min(max(left/4, 5*time.Millisecond), 50*time.Millisecond)
		}
		time.Sleep(wait)
		seen = k.ends(client, topic, benchPartitions)
		if seen > 0 && first.IsZero() {
			first, n0 = time.Now(), seen
			cpu0 = sampleSplit(postmaster, k.cmd.Process.Pid, procs)
			if o.CPUProfile != "" {
				for _, p := range procs {
					_ = p.cmd.Process.Signal(syscall.SIGUSR1) // start the profile
				}
			}
		}
	}
	window := time.Since(first)
	res := drainResult{rate: float64(int64(n)-n0) / window.Seconds()}
	for {
		var left bool
		if err := db.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM "sagabox"."outbox_messages" WHERE "dead_at" IS NULL)`).Scan(&left); err != nil {
			b.Fatal(err)
		}
		if !left {
			break
		}
		if time.Now().After(deadline) {
			b.Fatal("the relays published everything but did not delete it")
		}
		time.Sleep(10 * time.Millisecond)
	}
	res.toEmpty = time.Since(first)
	cpu1 := sampleSplit(postmaster, k.cmd.Process.Pid, procs)
	res.cpu = cpu1.since(cpu0)
	_ = db.pool.QueryRow(ctx, `SELECT autovacuum_count FROM pg_stat_user_tables WHERE relid = '"sagabox"."outbox_messages"'::regclass`).Scan(&res.vacuums)
	if pgss {
		res.statements = db.topStatements(4)
	}
	res.busiestLoop = busiest
	res.shards = layout
	var firsts, lasts []int64
	var publishes, publishNanos int64
	for _, p := range procs {
		st := p.stop(b)
		res.rss, res.heap = max(res.rss, st.PeakRSS), max(res.heap, st.PeakHeap)
		res.published = append(res.published, st.Published)
		firsts, lasts = append(firsts, st.FirstPublish), append(lasts, st.LastSettle)
		publishes, publishNanos = publishes+st.Publishes, publishNanos+st.PublishNanos
	}
	res.publishMean = time.Duration(publishNanos / max(publishes, 1))
	res.publishing = float64(publishNanos) / float64(int64(relays*workers)*int64(window))
	res.startSpread = time.Duration(slices.Max(firsts) - slices.Min(firsts))
	res.endSpread = time.Duration(slices.Max(lasts) - slices.Min(lasts))
	res.dups = k.ends(client, topic, benchPartitions) - int64(n)
	k.deleteTopics(b, topic, warm)
	return res
}

// BenchmarkRelayWakeup offers 2,000 single-message transactions per second from
// 16 producer connections for 10 s and measures, per wake-up, commit → record
// readable in Kafka, and what the producers achieve (rate, transaction latency)
// beside the same producers with no relay running.
func BenchmarkRelayWakeup(b *testing.B) {
	const rate, seconds = 2000, 10
	load0, cpu0 := loadAvg(), sampleCPU()
	delay, _ := time.ParseDuration(os.Getenv("SAGABOX_BENCH_WAKE_DELAY"))
	k := startBroker(b, delay)
	modes := []wakeMode{
		{name: "baseline: kafka-go produce → read, 1 msg/call", direct: true},
		{name: "no relay, no trigger (producers' baseline)"},
		{name: "NOTIFY trigger + LISTEN (Listen)", relay: true, trigger: true, opts: benchRelayOpts{Listen: true}},
		{name: "busy re-claim and probe every 5ms (before)", relay: true, opts: benchRelayOpts{BusyInterval: 5 * time.Millisecond}},
		{name: "1 pub/loop, Workers 2 (the default)", relay: true},
		{name: "1 pub/loop, Workers 1", relay: true, opts: benchRelayOpts{Workers: 1}},
		{name: "the default, background CPU priority", relay: true, opts: benchRelayOpts{Background: true}},
		{name: "MaxPublishes 2, Workers 2, pool 8", relay: true, opts: benchRelayOpts{MaxPublishes: 2, MaxConns: 8}},
		{name: "1 pub/loop, Workers 2, pool 8", relay: true, opts: benchRelayOpts{MaxConns: 8}},
		{name: "no relay, no trigger (baseline again)"},
	}
	if only := os.Getenv("SAGABOX_BENCH_WAKE"); only != "" { // keep the baselines and the relay lines naming it
		modes = slices.DeleteFunc(modes, func(m wakeMode) bool { return m.relay && !strings.Contains(m.name, only) })
	}
	results := make([]wakeResult, len(modes))
	for i, m := range modes {
		results[i] = wakeRun(b, k, rate, seconds, m)
	}
	base := results[1].merge(results[len(results)-1])
	busy := sampleCPU().since(cpu0)

	w := os.Stdout
	fmt.Fprintf(w, "\nWake-ups at %d msgs/s offered for %d s: 16 producer connections, 1 msg (1 KiB) per transaction, %d partitions\n", rate, seconds, benchPartitions)
	fmt.Fprintf(w, "  %s; broker: kfake, own process, %v injected per produce request; relay: own process\n", benchPG.settings, delay)
	fmt.Fprintf(w, "  load average %s at start, %s at end; machine CPU busy %.0f%% (%d cores, shared)\n", load0, loadAvg(), 100*busy, runtimeCPUs())
	fmt.Fprintf(w, "  %-44s %26s %26s %s\n", "", "commit → Kafka", "producer tx", "producer rate")
	for i, m := range modes {
		r := results[i]
		lat := "           (no relay)     "
		if m.relay || m.direct {
			lat = fmt.Sprintf("p50 %7.2fms p99 %7.2fms", ms(r.pct(r.lat, 0.5)), ms(r.pct(r.lat, 0.99)))
		}
		fmt.Fprintf(w, "  %-44s %s p50 %6.2fms p99 %6.2fms %6.0f/s", m.name, lat, ms(r.pct(r.tx, 0.5)), ms(r.pct(r.tx, 0.99)), r.rate)
		if m.relay {
			fmt.Fprintf(w, "  rate %.2f× baseline, tx p50 %.2f× (targets: p99 ≤ 20ms, rate ≥ 0.95×, tx p50 ≤ 1/0.95×)",
				r.rate/base.rate, ms(r.pct(r.tx, 0.5))/ms(base.pct(base.tx, 0.5)))
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintf(w, "  what the producers' statements wait for (pg_stat_activity every 10ms; CPU: no wait event):\n")
	for i, m := range modes {
		if !m.direct {
			fmt.Fprintf(w, "    %-44s %s\n", m.name, waitSummary(results[i].waits))
		}
	}
	fmt.Fprintf(w, "  the server's WAL while the producers ran (pg_stat_wal; every fsync of a durable commit is one the others may queue behind):\n")
	for i, m := range modes {
		if !m.direct {
			wl, secs := results[i].wal, results[i].walSecs
			fmt.Fprintf(w, "    %-44s %6.2f MB/s, %5.0f writes/s, %5.0f fsyncs/s, %d writes by full WAL buffers\n", m.name,
				float64(wl.bytes)/1e6/secs, float64(wl.writes)/secs, float64(wl.syncs)/secs, wl.buffersFull)
		}
	}
	fmt.Fprintf(w, "  where commit → Kafka goes, p50 / p99 (the relay's publish trace):\n")
	for i, m := range modes {
		if r := results[i]; len(r.claim) > 0 {
			fmt.Fprintf(w, "    %-42s commit → publish %6.2f / %6.2fms, publish %5.2f / %6.2fms, ack → read %5.2f / %6.2fms; relay CPU %.0f ms\n", m.name,
				ms(r.pct(r.claim, 0.5)), ms(r.pct(r.claim, 0.99)), ms(r.pct(r.pub, 0.5)), ms(r.pct(r.pub, 0.99)),
				ms(r.pct(r.read, 0.5)), ms(r.pct(r.read, 0.99)), ms(r.relayCPU))
			for _, st := range r.statements {
				fmt.Fprintf(w, "      %s\n", st)
			}
		}
	}
	for i, m := range modes {
		if m.relay && results[i].readErrs > 0 {
			fmt.Fprintf(w, "  (%s: the latency readers logged %d fetch errors)\n", m.name, results[i].readErrs)
		}
	}
	for i, m := range modes {
		if m.relay {
			b.ReportMetric(ms(results[i].pct(results[i].lat, 0.99)), "p99-ms-"+strconv.Itoa(i))
			b.ReportMetric(results[i].rate/base.rate, "rate-ratio-"+strconv.Itoa(i))
		}
	}
}

// sampleWaits samples, every 10ms until ctx ends, what the producers' backends that
// are running a statement (their INSERT or COMMIT) wait for: "CPU" when
// pg_stat_activity shows no wait event (running or waiting for a CPU), else
// type:event (IO:WALSync, LWLock:WALWrite, Lock:...). A look costs the server about
// 0.5 ms: every 2 ms it took 0.9 s of the two cores in each 10 s line, baselines
// included, beside what it measured.
func sampleWaits(ctx context.Context, pool *pgxpool.Pool) map[string]int {
	out := map[string]int{}
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return out
	}
	defer conn.Release()
	for ctx.Err() == nil {
		rows, err := conn.Query(ctx, `SELECT coalesce(wait_event_type || ':' || wait_event, 'CPU') FROM pg_stat_activity
WHERE datname = current_database() AND state = 'active' AND pid <> pg_backend_pid()
  AND (query LIKE 'INSERT INTO %outbox_messages%' OR query = 'commit')`)
		if err != nil {
			return out
		}
		for rows.Next() {
			var w string
			if rows.Scan(&w) == nil {
				out[w]++
			}
		}
		rows.Close()
		time.Sleep(10 * time.Millisecond)
	}
	return out
}

// waitSummary renders the largest shares of a sampleWaits map.
func waitSummary(m map[string]int) string {
	total := 0
	keys := make([]string, 0, len(m))
	for k, n := range m {
		total += n
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b string) int { return m[b] - m[a] })
	var parts []string
	for i, k := range keys {
		if i == 5 {
			break
		}
		parts = append(parts, fmt.Sprintf("%s %.0f%%", k, 100*float64(m[k])/float64(max(total, 1))))
	}
	return fmt.Sprintf("%d samples: %s", total, strings.Join(parts, ", "))
}

// enqueueTx commits msg in a transaction of its own on conn.
func enqueueTx(ctx context.Context, conn *pgxpool.Conn, msg outbox.Message) error {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx)
	if err := outbox.Enqueue(ctx, tx, msg); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

type wakeResult struct {
	lat, tx []time.Duration // sorted
	// The relay's part of lat (sorted, from its publish trace): commit → publish
	// call (finding and claiming the row), the publish call, its end → read.
	claim, pub, read []time.Duration
	statements       []string       // the database's busiest statements (pg_stat_statements)
	waits            map[string]int // samples of the producers' busy backends by wait event
	rate             float64
	readErrs         int64
	relayCPU         time.Duration // the relay process's user + system time
	wal              walStats      // the server's WAL activity while the producers ran (pg_stat_wal)
	walSecs          float64       // how long they ran
}

// walStats is what pg_stat_wal counts: WAL written (bytes), writes and fsyncs,
// and writes forced by full WAL buffers.
type walStats struct{ bytes, writes, syncs, buffersFull int64 }

func readWAL(b *testing.B, pool *pgxpool.Pool) walStats {
	b.Helper()
	var w walStats
	if err := pool.QueryRow(context.Background(), `SELECT wal_bytes::bigint, wal_write, wal_sync, wal_buffers_full FROM pg_stat_wal`).Scan(&w.bytes, &w.writes, &w.syncs, &w.buffersFull); err != nil {
		b.Fatal(err)
	}
	return w
}

func (w walStats) since(o walStats) walStats {
	return walStats{w.bytes - o.bytes, w.writes - o.writes, w.syncs - o.syncs, w.buffersFull - o.buffersFull}
}

func (r wakeResult) pct(s []time.Duration, q float64) time.Duration {
	if len(s) == 0 {
		return 0
	}
	return s[int(float64(len(s)-1)*q)]
}

// merge pools two runs of the same mode.
func (r wakeResult) merge(o wakeResult) wakeResult {
	tx := slices.Concat(r.tx, o.tx)
	slices.Sort(tx)
	return wakeResult{tx: tx, rate: (r.rate + o.rate) / 2}
}

// wakeRun runs the producers for seconds at rate, with a relay process (when
// withRelay) and readers timing each record's arrival.
// wakeMode is one line of BenchmarkRelayWakeup.
type wakeMode struct {
	name    string
	relay   bool // a relay process publishes the outbox
	trigger bool // the NOTIFY trigger is enabled
	direct  bool // the producers write to Kafka themselves, no database
	opts    benchRelayOpts
}

func wakeRun(b *testing.B, k *benchKafka, rate, seconds int, m wakeMode) wakeResult {
	b.Helper()
	ctx := context.Background()
	const producers = 16
	db := newBenchDB(b, producers+2)
	defer db.drop()
	db.setTrigger(b, m.trigger)
	topic := k.createTopic(b, "wake", benchPartitions)
	defer k.deleteTopics(b, topic)
	var proc *relayProc
	trace := ""
	if m.relay {
		trace = filepath.Join(b.TempDir(), "trace")
		opts := m.opts
		opts.Trace = trace
		proc = startRelayProc(b, db.url, k.brokers, "bench-wake", opts)
		waitShares(b, db.pool, 1)
	}
	withRelay := m.relay || m.direct // records to time in Kafka
	direct := &kafka.Writer{Addr: kafka.TCP(k.brokers...), Balancer: &kafka.Murmur2Balancer{}, RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond}
	defer direct.Close()
	total := rate * seconds
	committed := make([]atomic.Int64, total) // unix nanos of each commit
	arrivedAt := make([]int64, total)        // unix nanos of each record's arrival; under mu
	var res wakeResult
	var mu sync.Mutex
	var readErrs atomic.Int64
	readCtx, stopRead := context.WithCancel(ctx) // and 60s after the producers are done
	defer stopRead()
	var readers sync.WaitGroup
	if withRelay {
		res.lat = make([]time.Duration, 0, total)
		for p := range benchPartitions {
			readers.Go(func() {
				// A fetch returns as soon as a record arrives, so MaxWait adds nothing; a short
				// one makes kafka-go's client deadline run out on a loaded machine.
				rd := kafka.NewReader(kafka.ReaderConfig{Brokers: k.brokers, Topic: topic, Partition: p, MaxWait: 500 * time.Millisecond,
					ReadBackoffMin: 10 * time.Millisecond, MinBytes: 1, MaxBytes: 4 << 20,
					ErrorLogger: kafka.LoggerFunc(func(string, ...any) { readErrs.Add(1) })})
				defer rd.Close()
				for {
					m, err := rd.ReadMessage(readCtx)
					if err != nil {
						return
					}
					arrived := time.Now()
					idStr, _, _ := strings.Cut(string(m.Value), ":")
					id, _ := strconv.Atoi(idStr)
					for committed[id].Load() == 0 && readCtx.Err() == nil {
						time.Sleep(10 * time.Microsecond) // the producer stores its time after Commit returns
					}
					mu.Lock()
					arrivedAt[id] = arrived.UnixNano()
					res.lat = append(res.lat, arrived.Sub(time.Unix(0, committed[id].Load())))
					if len(res.lat) == total {
						stopRead()
					}
					mu.Unlock()
				}
			})
		}
	}
	pad := strings.Repeat("x", 1024)
	txLat := make([]time.Duration, total)
	var lastCommit atomic.Int64
	var producing sync.WaitGroup
	sampleCtx, stopSampling := context.WithCancel(ctx)
	waits := make(chan map[string]int, 1)
	go func() { waits <- sampleWaits(sampleCtx, db.pool) }()
	wal0 := readWAL(b, db.pool)
	begin := time.Now()
	for g := range producers {
		producing.Go(func() {
			conn, err := db.pool.Acquire(ctx)
			if err != nil {
				b.Error(err)
				return
			}
			defer conn.Release()
			for id := g; id < total; id += producers {
				if wait := time.Until(begin.Add(time.Duration(id) * time.Second / time.Duration(rate))); wait > 0 {
					time.Sleep(wait)
				}
				t0 := time.Now()
				body := strconv.Itoa(id) + ":"
				msg := outbox.Message{Topic: topic, Key: "k" + strconv.Itoa(id%100), Payload: []byte(body + pad[len(body):])}
				if m.direct {
					if err := direct.WriteMessages(ctx, kafka.Message{Topic: topic, Key: []byte(msg.Key), Value: msg.Payload}); err != nil {
						b.Error(err)
						return
					}
				} else if err := enqueueTx(ctx, conn, msg); err != nil {
					b.Error(err)
					return
				}
				t1 := time.Now()
				if m.direct {
					committed[id].Store(t0.UnixNano()) // produce call → read, as the relay's is commit → read
				} else {
					committed[id].Store(t1.UnixNano())
				}
				txLat[id] = t1.Sub(t0)
				lastCommit.Store(t1.UnixNano())
			}
		})
	}
	producing.Wait()
	res.wal, res.walSecs = readWAL(b, db.pool).since(wal0), time.Since(begin).Seconds()
	stopSampling()
	res.waits = <-waits
	res.rate = float64(total) / time.Unix(0, lastCommit.Load()).Sub(begin).Seconds()
	// Slow producers (NOTIFY on a loaded machine) must not eat the readers' time.
	defer time.AfterFunc(60*time.Second, stopRead).Stop()
	readers.Wait()
	if proc != nil {
		proc.stop(b)
		res.relayCPU = proc.cmd.ProcessState.UserTime() + proc.cmd.ProcessState.SystemTime()
		res.statements = db.topStatements(4)
	}
	if withRelay && len(res.lat) != total {
		var pending int
		_ = db.pool.QueryRow(ctx, `SELECT count(*) FROM "sagabox"."outbox_messages"`).Scan(&pending)
		tr := &kafka.Transport{}
		defer tr.CloseIdleConnections()
		inKafka := k.ends(&kafka.Client{Addr: kafka.TCP(k.brokers...), Transport: tr}, topic, benchPartitions)
		b.Fatalf("%s: readers received %d of %d records (%d in the topic, %d rows left in the outbox, %d reader errors)",
			m.name, len(res.lat), total, inKafka, pending, readErrs.Load())
	}
	slices.Sort(res.lat)
	slices.Sort(txLat)
	res.tx, res.readErrs = txLat, readErrs.Load()
	if trace != "" {
		start, end, err := readTrace(trace, total)
		if err != nil {
			b.Fatal(err)
		}
		for id := range total {
			if start[id] == 0 {
				continue
			}
			c := committed[id].Load()
			res.claim = append(res.claim, time.Duration(start[id]-c))
			res.pub = append(res.pub, time.Duration(end[id]-start[id]))
			res.read = append(res.read, time.Duration(arrivedAt[id]-end[id]))
		}
		slices.Sort(res.claim)
		slices.Sort(res.pub)
		slices.Sort(res.read)
	}
	return res
}
