package relay_test

// The benchmark environment (issue 11): a durable PostgreSQL of the benchmarks'
// own, and the broker and the relays as processes of their own, so the figures
// are not those of one Go runtime doing everything. The broker and relay
// processes are this test binary run again (see TestMain and benchChildEnv).

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/sagabox/sagabox/internal/cpuprio"
	"github.com/sagabox/sagabox/internal/embedkafka"
	"github.com/sagabox/sagabox/internal/embedpg"
	"github.com/sagabox/sagabox/internal/testenv"
	"github.com/sagabox/sagabox/migrations"
	"github.com/sagabox/sagabox/outbox"
	"github.com/sagabox/sagabox/relay"
)

// benchChildEnv makes the test binary run as a benchmark's broker ("broker") or
// relay ("relay") process.
const benchChildEnv = "SAGABOX_RELAY_BENCH_CHILD"

// benchPG is the benchmarks' PostgreSQL: durable commits (fsync, synchronous_commit
// and full_page_writes on), unlike the tests' cluster, because what producers pay
// for a wake-up depends on how long a commit holds its locks.
var benchPG struct {
	once     sync.Once
	cluster  *embedpg.Cluster
	url      string
	settings string
	err      error
	dbs      atomic.Int64
}

func benchServer(b *testing.B) string {
	b.Helper()
	benchPG.once.Do(func() {
		if u := os.Getenv("SAGABOX_TEST_DATABASE_URL"); u != "" {
			benchPG.url, benchPG.settings = u, "PostgreSQL at SAGABOX_TEST_DATABASE_URL, its own settings"
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		durable := []string{"fsync=on", "synchronous_commit=on", "full_page_writes=on", "max_wal_size=4GB"}
		c, err := embedpg.Start(ctx, append(durable, "shared_preload_libraries=pg_stat_statements")...)
		if err != nil { // no contrib: do without pg_stat_statements
			c, err = embedpg.Start(ctx, durable...)
		}
		if err != nil {
			benchPG.err = err
			return
		}
		benchPG.cluster, benchPG.url = c, c.URL("postgres")
		benchPG.settings = "PostgreSQL 15 embedded, fsync=on synchronous_commit=on full_page_writes=on"
	})
	if benchPG.err != nil {
		b.Fatal(benchPG.err)
	}
	return benchPG.url
}

func closeBenchServer() {
	if benchPG.cluster != nil {
		_ = benchPG.cluster.Close()
	}
}

// benchDB is a freshly migrated database on the benchmark server.
type benchDB struct {
	url  string
	pool *pgxpool.Pool
	drop func() // closes the pool and drops the database; once
}

// newBenchDB creates a database for one run. A run drops its database when it has
// measured it (defer db.drop()), and the next one checkpoints first: a run must
// not find the shared buffers full of the earlier runs' dirty pages and write
// them out itself. With every database kept to the end, the raw claim+delete
// drain fell from 157k to 85k rows/s within one benchmark and the relay's
// PostgreSQL CPU per message doubled, so a baseline measured first flattered
// itself against the runs after it.
func newBenchDB(b *testing.B, maxConns int32) *benchDB {
	b.Helper()
	ctx := context.Background()
	server := benchServer(b)
	name := fmt.Sprintf("relaybench_%d_%d", os.Getpid(), benchPG.dbs.Add(1))
	admin, err := pgx.Connect(ctx, server)
	if err != nil {
		b.Fatal(err)
	}
	defer admin.Close(ctx)
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		b.Fatal(err)
	}
	_, _ = admin.Exec(ctx, "CHECKPOINT") // needs a superuser or pg_checkpoint: a server of one's own
	url := withDatabase(server, name)
	if err := migrations.Up(ctx, url, testenv.Schema); err != nil {
		b.Fatal(err)
	}
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		b.Fatal(err)
	}
	cfg.MaxConns = maxConns
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		b.Fatal(err)
	}
	drop := sync.OnceFunc(func() {
		pool.Close()
		conn, err := pgx.Connect(context.Background(), server)
		if err == nil {
			_, _ = conn.Exec(context.Background(), "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
			conn.Close(context.Background())
		}
	})
	b.Cleanup(drop)
	_, _ = pool.Exec(ctx, `CREATE EXTENSION IF NOT EXISTS pg_stat_statements`)
	return &benchDB{url: url, pool: pool, drop: drop}
}

func withDatabase(server, name string) string {
	i := strings.LastIndex(server, "/")
	q := ""
	if j := strings.Index(server[i:], "?"); j >= 0 {
		q = server[i+j:]
	}
	return server[:i+1] + name + q
}

// setTrigger enables or disables the NOTIFY trigger.
func (d *benchDB) setTrigger(b *testing.B, on bool) {
	b.Helper()
	state := "DISABLE"
	if on {
		state = "ENABLE"
	}
	if _, err := d.pool.Exec(context.Background(), `ALTER TABLE "sagabox"."outbox_messages" `+state+` TRIGGER "outbox_messages_notify"`); err != nil {
		b.Fatal(err)
	}
}

// topStatements returns pg_stat_statements' busiest statements of this database.
func (d *benchDB) topStatements(n int) []string {
	rows, err := d.pool.Query(context.Background(), `SELECT calls, total_exec_time, rows, wal_bytes::int8, wal_fpi,
    jit_generation_time + jit_inlining_time + jit_optimization_time + jit_emission_time, shared_blks_hit + shared_blks_read, left(regexp_replace(query, '\s+', ' ', 'g'), 70)
FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
ORDER BY total_exec_time DESC LIMIT $1`, n)
	if err != nil {
		return []string{"(pg_stat_statements unavailable: " + err.Error() + ")"}
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var calls, nrows, walBytes, fpi, blocks int64
		var total, jit float64
		var q string
		if rows.Scan(&calls, &total, &nrows, &walBytes, &fpi, &jit, &blocks, &q) == nil {
			c := float64(max(calls, 1))
			jitNote := "" // JIT compiles a plan whose estimated cost passes jit_above_cost, per execution
			if jit > 0 {
				jitNote = fmt.Sprintf(" (JIT %.3f ms/call)", jit/c)
			}
			out = append(out, fmt.Sprintf("%8d calls %9.0f ms total %7.3f ms/call%s %7.1f rows/call %7.0f buffers/call %8.0f WAL B/call %5.2f FPI/call  %s",
				calls, total, total/c, jitNote, float64(nrows)/c, float64(blocks)/c, float64(walBytes)/c, float64(fpi)/c, q))
		}
	}
	return out
}

// fill inserts n committed rows of 1 KiB payloads over keys keys, in one transaction.
func fill(b *testing.B, pool *pgxpool.Pool, topic string, n, keys int) {
	b.Helper()
	ctx := context.Background()
	for done := 0; done < n; done += 100_000 { // one statement per 100 MiB keeps WAL bursts moderate
		part := min(100_000, n-done)
		if _, err := pool.Exec(ctx, `INSERT INTO "sagabox"."outbox_messages" ("id", "topic", "key", "payload")
SELECT gen_random_uuid(), $1, 'key-' || (i % $3), convert_to(rpad('k' || (i % $3) || ':' || (i / $3 + 1) || ':', 1024, 'x'), 'UTF8')
FROM generate_series($4::int, $4::int + $2 - 1) AS i`, topic, part, keys, done); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := pool.Exec(ctx, `VACUUM ANALYZE "sagabox"."outbox_messages"`); err != nil {
		b.Fatal(err)
	}
}

// benchKafka is a broker process of its own.
type benchKafka struct {
	brokers []string
	cmd     *exec.Cmd
	stdin   io.WriteCloser
}

// startBroker starts a one-broker kfake process; every produce request waits
// produceDelay (0: none) before the broker handles it, as a remote broker's
// network and replication latency would.
func startBroker(b *testing.B, produceDelay time.Duration) *benchKafka {
	b.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$", "-test.bench=^$")
	cmd.Env = append(os.Environ(), benchChildEnv+"=broker", "BENCH_PRODUCE_DELAY="+produceDelay.String())
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	k := &benchKafka{cmd: cmd, stdin: stdin}
	b.Cleanup(k.close)
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		if addrs, ok := strings.CutPrefix(sc.Text(), "BROKERS "); ok {
			k.brokers = strings.Split(addrs, ",")
			break
		}
	}
	if k.brokers == nil {
		b.Fatal("broker process did not report its address")
	}
	go func() { _, _ = io.Copy(io.Discard, stdout) }()
	return k
}

func (k *benchKafka) close() {
	_ = k.stdin.Close() // the broker exits when its stdin closes
	done := make(chan struct{})
	go func() { _ = k.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = k.cmd.Process.Kill()
		<-done
	}
}

func (k *benchKafka) createTopic(b *testing.B, prefix string, partitions int) string {
	b.Helper()
	topic := testenv.Topic(prefix)
	(&testenv.Kafka{Brokers: k.brokers}).CreateTopic(b, topic, partitions)
	return topic
}

// deleteTopics deletes topics once a run has measured them. kfake keeps every
// record in its heap: a broker that kept the earlier runs' backlogs (100 MB each)
// spent 15-28 µs of CPU per message in a later run, against 3-4 on a fresh one,
// and the runs that came later (×3 after ×1) measured the broker's growing heap.
func (k *benchKafka) deleteTopics(b *testing.B, topics ...string) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tr := &kafka.Transport{}
	defer tr.CloseIdleConnections()
	c := &kafka.Client{Addr: kafka.TCP(k.brokers...), Transport: tr}
	resp, err := c.DeleteTopics(ctx, &kafka.DeleteTopicsRequest{Topics: topics})
	if err != nil {
		b.Fatalf("delete topics %v: %v", topics, err)
	}
	for t, err := range resp.Errors {
		if err != nil {
			b.Fatalf("delete topic %s: %v", t, err)
		}
	}
}

// ends returns the sum of topic's end offsets (0 on error, the caller polls again).
func (k *benchKafka) ends(c *kafka.Client, topic string, partitions int) int64 {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	reqs := make([]kafka.OffsetRequest, partitions)
	for i := range reqs {
		reqs[i] = kafka.LastOffsetOf(i)
	}
	resp, err := c.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: reqs}})
	if err != nil {
		return 0
	}
	var n int64
	for _, p := range resp.Topics[topic] {
		n += p.LastOffset
	}
	return n
}

func runBenchBroker() int {
	c, err := embedkafka.Start(embedkafka.Options{Brokers: 1})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer c.Close()
	if delay, _ := time.ParseDuration(os.Getenv("BENCH_PRODUCE_DELAY")); delay > 0 {
		k := c.Kfake()
		// Not handled (false): after the sleep the broker handles the request as usual.
		// A connection's requests are answered in order, as a real broker does.
		k.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
			k.SleepControl(func() { time.Sleep(delay) })
			return nil, nil, false
		})
	}
	fmt.Println("BROKERS " + strings.Join(c.Addrs(), ","))
	_, _ = io.Copy(io.Discard, os.Stdin)
	return 0
}

// benchRelayOpts are a relay process's settings; zero fields keep the library's defaults.
type benchRelayOpts struct {
	Workers       int
	MaxPublishes  int
	BatchSize     int
	PollInterval  time.Duration
	ProbeInterval time.Duration
	BusyInterval  time.Duration
	Listen        bool
	MaxConns      int // the relay's pool size (pool_max_conns); 0: pgxpool's default
	CPUProfile    string
	// Background lowers the relay process's CPU priority (cpuprio.Background), as
	// outbox-relay does by default (--cpu-priority background).
	Background bool
	// WarmTopic, when set, gates the relay process's publishes (startGated): its
	// first publish sends one message to WarmTopic instead, says READY and waits
	// for SIGUSR2.
	WarmTopic string
	// Trace names a file the relay writes, at its end, "id start end" for every
	// message it published: the payload's number before ':' and the publish call's
	// start and end (unix nanos), for BenchmarkRelayWakeup's breakdown.
	Trace string
}

// procStats is what a relay process reports when it stops.
type procStats struct {
	PeakRSS   int64 // VmHWM, bytes
	PeakHeap  int64 // largest HeapInuse sampled every 50ms, bytes
	Published int64 // messages acknowledged
	// FirstPublish and LastSettle are unix nanos of the first publish call's start and
	// the last settle of published rows: how far apart the relays of a drain started and ended.
	FirstPublish, LastSettle int64
	// Publishes and PublishNanos count the publish calls and their time in all.
	Publishes, PublishNanos int64
}

type relayProc struct {
	cmd   *exec.Cmd
	stats chan procStats
	ready chan struct{} // closed when a gated relay is ready to publish (startGated)
}

func startRelayProc(b *testing.B, dbURL string, brokers []string, id string, o benchRelayOpts) *relayProc {
	b.Helper()
	opts, _ := json.Marshal(o)
	cmd := exec.Command(os.Args[0], "-test.run=^$", "-test.bench=^$")
	cmd.Env = append(os.Environ(), benchChildEnv+"=relay", "DATABASE_URL="+dbURL,
		"KAFKA_BROKERS="+strings.Join(brokers, ","), "RELAY_ID="+id, "BENCH_RELAY_OPTS="+string(opts))
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	p := &relayProc{cmd: cmd, stats: make(chan procStats, 1), ready: make(chan struct{})}
	go func() {
		var st procStats
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if sc.Text() == "READY" {
				close(p.ready)
			}
			if js, ok := strings.CutPrefix(sc.Text(), "STATS "); ok {
				_ = json.Unmarshal([]byte(js), &st)
			}
		}
		p.stats <- st
	}()
	b.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return p
}

// startGate holds a relay's publishes until startGated's SIGUSR2, so that relays
// started one after the other publish together: each runs, renews the shares
// leased to it and claims its first batches meanwhile, and its first publish
// warms the broker's metadata and connections with one message to warm.
type startGate struct {
	relay.Publisher
	warm  string
	once  sync.Once
	open  chan struct{}
	first atomic.Int64 // unix nanos of the first publish through the open gate
}

func (g *startGate) Publish(ctx context.Context, msgs []outbox.Message) error {
	g.once.Do(func() {
		if err := g.Publisher.Publish(ctx, []outbox.Message{{ID: uuid.New(), Topic: g.warm, Payload: []byte("warm")}}); err != nil {
			fmt.Fprintln(os.Stderr, "warm-up publish:", err)
		}
		fmt.Println("READY")
	})
	select {
	case <-g.open:
	case <-ctx.Done():
		return ctx.Err()
	}
	g.first.CompareAndSwap(0, time.Now().UnixNano())
	return g.Publisher.Publish(ctx, msgs)
}

// startGated opens the start gates of relay processes (benchRelayOpts.WarmTopic)
// together: it waits until each is ready to publish, then signals them all.
func startGated(b *testing.B, procs []*relayProc) {
	b.Helper()
	for _, p := range procs {
		select {
		case <-p.ready:
		case <-time.After(60 * time.Second):
			b.Fatal("a gated relay process was not ready within 60s")
		}
	}
	for _, p := range procs {
		if err := p.cmd.Process.Signal(syscall.SIGUSR2); err != nil {
			b.Fatal(err)
		}
	}
}

// leaseShares gives relay "<prefix>i" of relays the i-th of relays equal ranges of
// the shards, and registers it as live, as its own heartbeats would: a relay that
// starts with that ID renews its leases at once and moves nothing.
func leaseShares(b *testing.B, pool *pgxpool.Pool, prefix string, relays int) {
	b.Helper()
	if _, err := pool.Exec(context.Background(), `WITH l AS (
    UPDATE "sagabox"."outbox_leases" SET "owner" = $1 || ("shard" * $2 / $3), "expires_at" = now() + interval '1 minute', "epoch" = "epoch" + 1)
INSERT INTO "sagabox"."outbox_relays" ("id", "expires_at")
SELECT $1 || i, now() + interval '1 minute' FROM generate_series(0, $2 - 1) AS i`, prefix, relays, relay.Shards); err != nil {
		b.Fatal(err)
	}
}

// stop ends the relay gracefully and returns its figures.
func (p *relayProc) stop(b *testing.B) procStats {
	b.Helper()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case st := <-p.stats:
		_ = p.cmd.Wait()
		return st
	case <-time.After(30 * time.Second):
		b.Fatal("relay process did not stop within 30s of SIGTERM")
		return procStats{}
	}
}

func runBenchRelay() int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	var o benchRelayOpts
	if err := json.Unmarshal([]byte(os.Getenv("BENCH_RELAY_OPTS")), &o); err != nil {
		fmt.Fprintln(os.Stderr, "BENCH_RELAY_OPTS:", err)
		return 1
	}
	if o.Background {
		if err := cpuprio.Background(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	if o.CPUProfile != "" {
		f, err := os.Create(o.CPUProfile)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer f.Close()
		// The profile covers the drain only: it starts at SIGUSR1, which relayDrain
		// sends at the first record (before it, the loops claim the held-back
		// backlog again and again).
		usr1 := make(chan os.Signal, 1)
		signal.Notify(usr1, syscall.SIGUSR1)
		started := make(chan bool, 1)
		go func() {
			select {
			case <-usr1:
				started <- pprof.StartCPUProfile(f) == nil
			case <-ctx.Done():
				started <- false
			}
		}()
		defer func() {
			stop()
			if <-started {
				pprof.StopCPUProfile()
			}
		}()
	}
	var peakHeap atomic.Int64
	go func() {
		var ms runtime.MemStats
		for ctx.Err() == nil {
			runtime.ReadMemStats(&ms)
			if h := int64(ms.HeapInuse); h > peakHeap.Load() {
				peakHeap.Store(h)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	cfg := relay.Config{ID: os.Getenv("RELAY_ID"), Workers: o.Workers, MaxPublishes: o.MaxPublishes, BatchSize: o.BatchSize,
		PollInterval: o.PollInterval, ProbeInterval: o.ProbeInterval, BusyInterval: o.BusyInterval, Listen: o.Listen}
	var tr publishTrace
	var firstPublish, lastSettle, publishes, publishNanos atomic.Int64
	cfg.Hooks.Publish = func(msgs []outbox.Message) func(error) {
		start := time.Now()
		firstPublish.CompareAndSwap(0, start.UnixNano())
		var traced func(error)
		if o.Trace != "" {
			traced = tr.hook(msgs)
		}
		return func(err error) {
			publishes.Add(1)
			publishNanos.Add(int64(time.Since(start)))
			if traced != nil {
				traced(err)
			}
		}
	}
	var published atomic.Int64
	cfg.Hooks.Published = func(_ string, n int) { published.Add(int64(n)); lastSettle.Store(time.Now().UnixNano()) }
	if o.MaxConns > 0 {
		u := os.Getenv("DATABASE_URL")
		sep := "?"
		if strings.Contains(u, "?") {
			sep = "&"
		}
		os.Setenv("DATABASE_URL", u+sep+"pool_max_conns="+strconv.Itoa(o.MaxConns))
	}
	var wrap func(relay.Publisher) relay.Publisher
	var gate *startGate
	if o.WarmTopic != "" {
		gate = &startGate{warm: o.WarmTopic, open: make(chan struct{})}
		usr2 := make(chan os.Signal, 1)
		signal.Notify(usr2, syscall.SIGUSR2)
		go func() {
			select {
			case <-usr2:
				close(gate.open)
			case <-ctx.Done():
			}
		}()
		wrap = func(p relay.Publisher) relay.Publisher { gate.Publisher = p; return gate }
	}
	if code := runRelayProcess(ctx, cfg, wrap); code != 0 {
		return code
	}
	if o.Trace != "" {
		if err := tr.write(o.Trace); err != nil {
			fmt.Fprintln(os.Stderr, "trace:", err)
			return 1
		}
	}
	first := firstPublish.Load()
	if gate != nil { // the gated publish started when the gate opened, not when it was called
		first = gate.first.Load()
	}
	st, _ := json.Marshal(procStats{PeakRSS: selfHWM(), PeakHeap: peakHeap.Load(), Published: published.Load(),
		FirstPublish: first, LastSettle: lastSettle.Load(), Publishes: publishes.Load(), PublishNanos: publishNanos.Load()})
	fmt.Println("STATS " + string(st))
	return 0
}

// publishTrace records when each message's publish started and ended.
type publishTrace struct {
	mu    sync.Mutex
	lines []string
}

func (t *publishTrace) hook(msgs []outbox.Message) func(error) {
	start := time.Now().UnixNano()
	return func(err error) {
		if err != nil {
			return
		}
		end := time.Now().UnixNano()
		t.mu.Lock()
		defer t.mu.Unlock()
		for _, m := range msgs {
			id, _, _ := strings.Cut(string(m.Payload), ":")
			t.lines = append(t.lines, fmt.Sprintf("%s %d %d", id, start, end))
		}
	}
}

func (t *publishTrace) write(path string) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return os.WriteFile(path, []byte(strings.Join(t.lines, "\n")), 0o644)
}

// readTrace reads a publishTrace file into per-id publish start and end times
// (the first publish of each id; 0 where none).
func readTrace(path string, total int) (start, end []int64, err error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	start, end = make([]int64, total), make([]int64, total)
	for line := range strings.SplitSeq(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) != 3 {
			continue
		}
		id, _ := strconv.Atoi(f[0])
		s, _ := strconv.ParseInt(f[1], 10, 64)
		e, _ := strconv.ParseInt(f[2], 10, 64)
		if id >= 0 && id < total && start[id] == 0 {
			start[id], end[id] = s, e
		}
	}
	return start, end, nil
}

// selfHWM returns this process's peak resident set size (VmHWM) in bytes.
func selfHWM() int64 {
	data, _ := os.ReadFile("/proc/self/status")
	for line := range strings.SplitSeq(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// waitShares waits until relays relay processes together own every shard, each
// at most its fair share.
func waitShares(b *testing.B, pool *pgxpool.Pool, relays int) {
	b.Helper()
	share := (relay.Shards + relays - 1) / relays
	deadline := time.Now().Add(60 * time.Second)
	for {
		var owners, owned, most int
		err := pool.QueryRow(context.Background(), `SELECT count(*), coalesce(sum(n), 0), coalesce(max(n), 0) FROM (
    SELECT count(*) AS n FROM "sagabox"."outbox_leases" WHERE "owner" IS NOT NULL AND "expires_at" > now() GROUP BY "owner") AS o`).Scan(&owners, &owned, &most)
		if err != nil {
			b.Fatal(err)
		}
		if owners == relays && owned == relay.Shards && most <= share {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("relays did not share the shards within 60s: %d owners, %d shards owned, largest share %d", owners, owned, most)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// shardLayout says which shards each relay leases, as ranges: a relay's claims
// read the index range between its lowest and highest shard (outbox claim), so
// runs far apart cost it the other relays' rows in between.
func shardLayout(b *testing.B, pool *pgxpool.Pool) string {
	b.Helper()
	rows, err := pool.Query(context.Background(), `SELECT "owner", "shard" FROM "sagabox"."outbox_leases" WHERE "owner" IS NOT NULL ORDER BY "owner", "shard"`)
	if err != nil {
		b.Fatal(err)
	}
	type span struct{ lo, hi int16 }
	var owners []string
	spans := map[string][]span{}
	for rows.Next() {
		var owner string
		var shard int16
		if err := rows.Scan(&owner, &shard); err != nil {
			b.Fatal(err)
		}
		sp := spans[owner]
		switch {
		case len(sp) == 0:
			owners = append(owners, owner)
			sp = append(sp, span{shard, shard})
		case sp[len(sp)-1].hi == shard-1:
			sp[len(sp)-1].hi = shard
		default:
			sp = append(sp, span{shard, shard})
		}
		spans[owner] = sp
	}
	if err := rows.Err(); err != nil {
		b.Fatal(err)
	}
	var parts []string
	for _, o := range owners {
		var r []string
		for _, sp := range spans[o] {
			r = append(r, fmt.Sprintf("%d-%d", sp.lo, sp.hi))
		}
		parts = append(parts, "["+strings.Join(r, " ")+"]")
	}
	return strings.Join(parts, " ")
}

// loadAvg returns /proc/loadavg's three load averages.
func loadAvg() string {
	data, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// cpuSampler measures the machine's busy CPU fraction over an interval (from /proc/stat).
type cpuSampler struct{ busy, total int64 }

func sampleCPU() cpuSampler {
	data, _ := os.ReadFile("/proc/stat")
	line, _, _ := strings.Cut(string(data), "\n")
	var s cpuSampler
	for i, f := range strings.Fields(line)[1:] {
		v, _ := strconv.ParseInt(f, 10, 64)
		s.total += v
		if i != 3 && i != 4 { // idle, iowait
			s.busy += v
		}
	}
	return s
}

func (s cpuSampler) since(prev cpuSampler) float64 {
	if s.total == prev.total {
		return 0
	}
	return float64(s.busy-prev.busy) / float64(s.total-prev.total)
}

func runtimeCPUs() int { return runtime.NumCPU() }
