package relay_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/segmentio/kafka-go"

	"github.com/sagabox/sagabox/internal/testenv"
	"github.com/sagabox/sagabox/outbox"
	"github.com/sagabox/sagabox/relay"
	"github.com/sagabox/sagabox/relay/kafkapub"
)

// The embedded PostgreSQL runs with fsync=off, synchronous_commit=off and
// full_page_writes=off (internal/embedpg); kfake is in-process. Figures are for
// comparison within one run, not absolute capacity.
const benchSettings = "PostgreSQL: embedded, fsync=off synchronous_commit=off full_page_writes=off; Kafka: in-process kfake, 1 broker, acks=all"

// fillBacklog inserts n committed rows of 1 KiB payloads over keys keys.
func fillBacklog(b *testing.B, pool *pgxpool.Pool, topic string, n, keys int) {
	b.Helper()
	_, err := pool.Exec(context.Background(), `INSERT INTO "sagabox"."outbox_messages" ("id", "topic", "key", "payload")
SELECT gen_random_uuid(), $1, 'key-' || (i % $3), convert_to(rpad('k' || (i % $3) || ':' || (i / $3 + 1) || ':', 1024, 'x'), 'UTF8')
FROM generate_series(0, $2 - 1) AS i`, topic, n, keys)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := pool.Exec(context.Background(), `VACUUM ANALYZE "sagabox"."outbox_messages"`); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkRelayThroughput drains a backlog of 100k 1 KiB rows through the relay
// and compares it, in the same run, with (a) kafka-go producing the same records
// straight to the same broker and (b) claiming and deleting them in the same
// database without publishing.
func BenchmarkRelayThroughput(b *testing.B) {
	const n, keys = 100_000, 1000
	ctx := context.Background()
	k := testenv.NewKafka(b)

	// (b) raw claim + delete: the database's ceiling for this loop.
	dbRaw := testenv.NewDB(b)
	fillBacklog(b, dbRaw.Pool, "raw", n, keys)
	start := time.Now()
	for done := 0; done < n; {
		tag, err := dbRaw.Pool.Exec(ctx, `DELETE FROM "sagabox"."outbox_messages" WHERE "id" IN (
    SELECT "id" FROM "sagabox"."outbox_messages" WHERE "dead_at" IS NULL ORDER BY "seq" LIMIT 1000)`)
		if err != nil {
			b.Fatal(err)
		}
		done += int(tag.RowsAffected())
	}
	claimDelete := float64(n) / time.Since(start).Seconds()

	// (a) raw kafka-go produce of the same records, 1000 per call, acks=all.
	rawTopic := testenv.Topic("bench-raw")
	k.CreateTopic(b, rawTopic, 8)
	w := &kafka.Writer{Addr: kafka.TCP(k.Brokers...), Balancer: &kafka.Murmur2Balancer{}, RequiredAcks: kafka.RequireAll,
		BatchSize: 1000, BatchBytes: 2 << 20, BatchTimeout: time.Millisecond}
	defer w.Close()
	payload := make([]byte, 1024)
	start = time.Now()
	for i := 0; i < n; i += 1000 {
		batch := make([]kafka.Message, 1000)
		for j := range batch {
			key := "key-" + strconv.Itoa((i+j)%keys)
			batch[j] = kafka.Message{Topic: rawTopic, Key: []byte(key), Value: payload,
				Headers: []kafka.Header{{Key: outbox.HeaderMessageID, Value: []byte("0190f0e2-0000-7000-8000-000000000000")}}}
		}
		if err := w.WriteMessages(ctx, batch...); err != nil {
			b.Fatal(err)
		}
	}
	rawKafka := float64(n) / time.Since(start).Seconds()

	// The relay, default batch size, with one publish loop and with the default two and four.
	relayRate := map[int]float64{}
	for _, workers := range []int{1, 2, 4} {
		db := testenv.NewDB(b)
		topic := testenv.Topic("bench-relay")
		k.CreateTopic(b, topic, 8)
		fillBacklog(b, db.Pool, topic, n, keys)
		var published atomic.Int64
		allDone := make(chan struct{})
		cfg := relay.Config{Workers: workers, PollInterval: 100 * time.Millisecond}
		cfg.Hooks.Published = func(_ string, c int) {
			if published.Add(int64(c)) == n {
				close(allDone)
			}
		}
		pub, err := kafkapub.New(kafkapub.Config{Brokers: k.Brokers})
		if err != nil {
			b.Fatal(err)
		}
		r, err := relay.New(db.Pool, pub, cfg)
		if err != nil {
			b.Fatal(err)
		}
		runCtx, cancel := context.WithCancel(ctx)
		stopped := make(chan struct{})
		start = time.Now()
		go func() { defer close(stopped); _ = r.Run(runCtx) }()
		select {
		case <-allDone:
		case <-time.After(5 * time.Minute):
			b.Fatalf("relay published %d of %d in 5 minutes", published.Load(), n)
		}
		relayRate[workers] = float64(n) / time.Since(start).Seconds()
		cancel()
		<-stopped
		pub.Close()
	}

	b.ReportMetric(relayRate[2], "relay-msgs/s")
	b.ReportMetric(rawKafka, "kafka-go-msgs/s")
	b.ReportMetric(claimDelete, "claim+delete-msgs/s")
	fmt.Fprintf(os.Stdout, "\nRelay throughput, backlog of %d rows × 1 KiB, %d keys (%s)\n", n, keys, benchSettings)
	for _, w := range []int{1, 2, 4} {
		fmt.Fprintf(os.Stdout, "  %-44s %10.0f msgs/s\n", fmt.Sprintf("relay, batch 500, %d publish loop(s)", w), relayRate[w])
	}
	def := relayRate[2]
	fmt.Fprintf(os.Stdout, "  %-44s %10.0f msgs/s   relay(default) = %.2f× of it\n", "baseline: raw kafka-go produce, 1000/call", rawKafka, def/rawKafka)
	fmt.Fprintf(os.Stdout, "  %-44s %10.0f msgs/s   relay(default) = %.2f× of it\n", "baseline: raw claim+delete, 1000/statement", claimDelete, def/claimDelete)
	serial := 1 / (1/rawKafka + 1/claimDelete)
	fmt.Fprintf(os.Stdout, "  %-44s %10.0f msgs/s   relay(default) = %.2f× of it\n", "both baselines one after the other", serial, def/serial)
}

// BenchmarkCommitToPublishLatency commits single-message transactions at a steady
// 2000/s for 10 s and measures commit → record read back from Kafka, beside the
// same measure for kafka-go producing directly (produce call → record read back).
func BenchmarkCommitToPublishLatency(b *testing.B) {
	const rate, seconds = 2000, 10
	ctx := context.Background()
	k := testenv.NewKafka(b)
	db := testenv.NewDB(b)

	// Relay path.
	topic := testenv.Topic("bench-lat")
	k.CreateTopic(b, topic, 4)
	pub, err := kafkapub.New(kafkapub.Config{Brokers: k.Brokers})
	if err != nil {
		b.Fatal(err)
	}
	defer pub.Close()
	r, err := relay.New(db.Pool, pub, relay.Config{})
	if err != nil {
		b.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	stopped := make(chan struct{})
	go func() { defer close(stopped); _ = r.Run(runCtx) }()
	relayLat := measureLatency(b, k.Brokers, topic, rate, seconds, func(id int) (time.Time, error) {
		tx, err := db.Pool.Begin(ctx)
		if err != nil {
			return time.Time{}, err
		}
		defer tx.Rollback(ctx)
		if err := outbox.Enqueue(ctx, tx, outbox.Message{Topic: topic, Key: "k" + strconv.Itoa(id%100), Payload: []byte(strconv.Itoa(id))}); err != nil {
			return time.Time{}, err
		}
		err = tx.Commit(ctx)
		return time.Now(), err
	})
	cancel()
	<-stopped

	// Baseline: kafka-go straight to the broker, one message per call.
	rawTopic := testenv.Topic("bench-lat-raw")
	k.CreateTopic(b, rawTopic, 4)
	w := &kafka.Writer{Addr: kafka.TCP(k.Brokers...), Balancer: &kafka.Murmur2Balancer{}, RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond}
	defer w.Close()
	rawLat := measureLatency(b, k.Brokers, rawTopic, rate, seconds, func(id int) (time.Time, error) {
		t := time.Now()
		return t, w.WriteMessages(ctx, kafka.Message{Topic: rawTopic, Key: []byte("k" + strconv.Itoa(id%100)), Value: []byte(strconv.Itoa(id))})
	})

	p := func(lat []time.Duration, q float64) time.Duration { return lat[int(float64(len(lat)-1)*q)] }
	b.ReportMetric(float64(p(relayLat, 0.5).Microseconds())/1000, "relay-p50-ms")
	b.ReportMetric(float64(p(relayLat, 0.99).Microseconds())/1000, "relay-p99-ms")
	b.ReportMetric(float64(p(rawLat, 0.5).Microseconds())/1000, "kafka-go-p50-ms")
	b.ReportMetric(float64(p(rawLat, 0.99).Microseconds())/1000, "kafka-go-p99-ms")
	fmt.Fprintf(os.Stdout, "\nCommit → consumer latency at %d msg/s for %d s (%s)\n", rate, seconds, benchSettings)
	fmt.Fprintf(os.Stdout, "  %-48s p50 %8v  p99 %8v  (n=%d)\n", "relay (LISTEN/NOTIFY, defaults)", p(relayLat, 0.5).Round(10*time.Microsecond), p(relayLat, 0.99).Round(10*time.Microsecond), len(relayLat))
	fmt.Fprintf(os.Stdout, "  %-48s p50 %8v  p99 %8v  (n=%d)\n", "baseline: kafka-go produce → read, no database", p(rawLat, 0.5).Round(10*time.Microsecond), p(rawLat, 0.99).Round(10*time.Microsecond), len(rawLat))
}

// measureLatency sends rate messages/s for seconds through send (from 8
// goroutines) and returns, sorted, the delays between send's returned time and
// the record arriving at a reader of topic.
func measureLatency(b *testing.B, brokers []string, topic string, rate, seconds int, send func(id int) (time.Time, error)) []time.Duration {
	b.Helper()
	total := rate * seconds
	sent := make([]atomic.Int64, total) // unix nanos
	lat := make([]time.Duration, 0, total)
	var mu sync.Mutex
	var readErrs atomic.Int64
	readCtx, stopRead := context.WithTimeout(context.Background(), time.Duration(seconds+60)*time.Second)
	defer stopRead()
	var readers sync.WaitGroup
	for p := range 4 {
		readers.Go(func() {
			// A fetch returns as soon as a record arrives, so MaxWait adds nothing; a
			// short one (it was 5ms) made kafka-go's client deadline run out on this
			// loaded machine, and each i/o timeout cost a redial after ReadBackoffMin.
			rd := kafka.NewReader(kafka.ReaderConfig{Brokers: brokers, Topic: topic, Partition: p, MaxWait: 500 * time.Millisecond,
				ReadBackoffMin: 10 * time.Millisecond, MinBytes: 1, MaxBytes: 1 << 20, ErrorLogger: kafka.LoggerFunc(func(string, ...any) { readErrs.Add(1) })})
			defer rd.Close()
			for {
				m, err := rd.ReadMessage(readCtx)
				if err != nil {
					return
				}
				arrived := time.Now()
				id, _ := strconv.Atoi(string(m.Value))
				// The sender stores its time after the call returns; wait for it.
				for sent[id].Load() == 0 && readCtx.Err() == nil {
					time.Sleep(10 * time.Microsecond)
				}
				mu.Lock()
				lat = append(lat, arrived.Sub(time.Unix(0, sent[id].Load())))
				if len(lat) == total {
					stopRead()
				}
				mu.Unlock()
			}
		})
	}
	var next atomic.Int64
	var senders sync.WaitGroup
	begin := time.Now()
	for range 8 {
		senders.Go(func() {
			for {
				id := int(next.Add(1) - 1)
				if id >= total {
					return
				}
				if wait := time.Until(begin.Add(time.Duration(id) * time.Second / time.Duration(rate))); wait > 0 {
					time.Sleep(wait) // pacing the producers to the target rate
				}
				at, err := send(id)
				if err != nil {
					b.Error(err)
					return
				}
				sent[id].Store(at.UnixNano())
			}
		})
	}
	senders.Wait()
	readers.Wait()
	if n := readErrs.Load(); n > 0 {
		b.Logf("%s: the readers logged %d fetch errors (each a redial)", topic, n)
	}
	if len(lat) != total {
		b.Fatalf("received %d of %d messages", len(lat), total)
	}
	slices.Sort(lat)
	return lat
}

// BenchmarkNotifyCost measures what the NOTIFY trigger costs producers: commits/s
// of single-message transactions from 8 connections with the trigger enabled and
// disabled, alternating rounds in the same run (the median of each is reported, so
// load from elsewhere on the machine hits both alike), with a connection LISTENing
// as a relay does.
func BenchmarkNotifyCost(b *testing.B) {
	const window, rounds = 3 * time.Second, 3
	ctx := context.Background()
	db := testenv.NewDB(b)
	listener, err := db.Pool.Acquire(ctx)
	if err != nil {
		b.Fatal(err)
	}
	defer listener.Release()
	if _, err := listener.Exec(ctx, `LISTEN "sagabox.outbox"`); err != nil {
		b.Fatal(err)
	}
	drainCtx, stopDrain := context.WithCancel(ctx)
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		for drainCtx.Err() == nil {
			_, _ = listener.Conn().WaitForNotification(drainCtx)
		}
	}()
	rate := func(trigger bool) float64 {
		state := "DISABLE"
		if trigger {
			state = "ENABLE"
		}
		if _, err := db.Pool.Exec(ctx, `ALTER TABLE "sagabox"."outbox_messages" `+state+` TRIGGER "outbox_messages_notify"`); err != nil {
			b.Fatal(err)
		}
		var commits atomic.Int64
		deadline := time.Now().Add(window)
		var wg sync.WaitGroup
		for range 8 {
			wg.Go(func() {
				for time.Now().Before(deadline) {
					tx, err := db.Pool.Begin(ctx)
					if err != nil {
						b.Error(err)
						return
					}
					if err := outbox.Enqueue(ctx, tx, outbox.Message{Topic: "t", Key: "k", Payload: make([]byte, 1024)}); err != nil {
						b.Error(err)
						return
					}
					if err := tx.Commit(ctx); err != nil {
						b.Error(err)
						return
					}
					commits.Add(1)
				}
			})
		}
		wg.Wait()
		return float64(commits.Load()) / window.Seconds()
	}
	var with, without []float64
	for range rounds {
		without = append(without, rate(false))
		with = append(with, rate(true))
	}
	stopDrain()
	<-drained
	slices.Sort(with)
	slices.Sort(without)
	mWith, mWithout := with[rounds/2], without[rounds/2]
	b.ReportMetric(mWith, "notify-commits/s")
	b.ReportMetric(mWithout, "plain-commits/s")
	fmt.Fprintf(os.Stdout, "\nProducer cost of the NOTIFY trigger, 8 connections, 1 msg/tx, %d alternating rounds of %v (%s)\n", rounds, window, benchSettings)
	fmt.Fprintf(os.Stdout, "  %-32s median %8.0f commits/s  (rounds %.0f)\n", "trigger disabled", mWithout, without)
	fmt.Fprintf(os.Stdout, "  %-32s median %8.0f commits/s  (rounds %.0f)  %.2f× of disabled\n", "statement-level NOTIFY trigger", mWith, with, mWith/mWithout)
}
