//go:build integration

package integration

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/segmentio/kafka-go"

	"github.com/sagabox/sagabox/outbox"
)

// Producer enqueues numbered messages: key k gets payloads "k/1", "k/2", … in commit order.
// Each key belongs to one producer goroutine, so its commit order is its numbering. Every
// message is also recorded in the business table it_produced in the same transaction: that
// table, not the producer's memory, is the truth the check compares Kafka with, so a commit
// whose acknowledgement was lost (the database restarting) is neither lost nor doubled.
type Producer struct {
	mu   sync.Mutex
	sent map[string]int // key → highest committed number
}

const producedTable = `CREATE TABLE IF NOT EXISTS "public"."it_produced" ("key" text, "seq" int, PRIMARY KEY ("key", "seq"))`

func newProducer(t testing.TB, pg *PG) *Producer {
	t.Helper()
	if _, err := pg.Pool.Exec(context.Background(), producedTable); err != nil {
		t.Fatalf("create it_produced: %v", err)
	}
	return &Producer{sent: map[string]int{}}
}

// Total is the number of messages committed so far.
func (p *Producer) Total() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, v := range p.sent {
		n += v
	}
	return n
}

// Enqueue commits perTx messages per transaction for keys until n messages are committed
// or ctx ends. A failed transaction is retried until the database answers again.
func (p *Producer) Enqueue(ctx context.Context, pg *PG, topic string, keys []string, n, perTx int) error {
	next := map[string]int{}
	for done := 0; done < n; {
		batch := make([]outbox.Message, 0, perTx)
		bkeys, bseqs := make([]string, 0, perTx), make([]int, 0, perTx)
		pending := map[string]int{}
		for i := 0; i < perTx && done+i < n; i++ {
			k := keys[(done+i)%len(keys)]
			pending[k]++
			seq := next[k] + pending[k]
			batch = append(batch, outbox.Message{ID: uuid.Must(uuid.NewV7()), Topic: topic, Key: k, Payload: fmt.Appendf(nil, "%s/%d", k, seq)})
			bkeys, bseqs = append(bkeys, k), append(bseqs, seq)
		}
		for {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			err := pgx.BeginFunc(ctx, pg.Pool, func(tx pgx.Tx) error {
				if err := outbox.Enqueue(ctx, tx, slices.Clone(batch)...); err != nil {
					return err
				}
				_, err := tx.Exec(ctx, `INSERT INTO "public"."it_produced" SELECT * FROM unnest($1::text[], $2::int[])`, bkeys, bseqs)
				return err
			})
			if err == nil {
				break
			}
			// Did it commit although the acknowledgement was lost? Ask once the database answers.
			var committed bool
			if qerr := pg.Pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM "public"."it_produced" WHERE "key" = $1 AND "seq" = $2)`, bkeys[0], bseqs[0]).Scan(&committed); qerr == nil && committed {
				break
			}
			select { // back off from a database that is restarting
			case <-ctx.Done():
			case <-time.After(50 * time.Millisecond):
			}
		}
		p.mu.Lock()
		for k, c := range pending {
			next[k] += c
			p.sent[k] = next[k]
		}
		p.mu.Unlock()
		done += len(batch)
	}
	return nil
}

// Committed reads what the database says was committed: key → highest number.
func (p *Producer) Committed(t testing.TB, pg *PG) map[string]int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rows, err := pg.Pool.Query(ctx, `SELECT "key", count(*), max("seq") FROM "public"."it_produced" GROUP BY "key"`)
	if err != nil {
		t.Fatalf("read it_produced: %v", err)
	}
	out := map[string]int{}
	for rows.Next() {
		var k string
		var n, hi int
		if err := rows.Scan(&k, &n, &hi); err != nil {
			t.Fatal(err)
		}
		if n != hi {
			t.Fatalf("it_produced has %d rows for key %s but its highest number is %d: the producer skipped a number", n, k, hi)
		}
		out[k] = hi
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("read it_produced: %v", err)
	}
	return out
}

// record is one delivery read back from Kafka.
type record struct {
	partition int
	key       string
	seq       int
	id        string
}

// Collector reads every partition of a topic from the start, as a plain consumer (no group).
type Collector struct {
	mu      sync.Mutex
	records []record
	bad     []string
	cancel  context.CancelFunc
	wg      sync.WaitGroup
}

func collect(t testing.TB, b *Broker, topic string, partitions int) *Collector {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	c := &Collector{cancel: cancel}
	for p := range partitions {
		r := kafka.NewReader(kafka.ReaderConfig{
			Brokers: b.Brokers(), Topic: topic, Partition: p,
			MinBytes: 1, MaxBytes: 10 << 20, MaxWait: 100 * time.Millisecond,
			ReadBackoffMin: 50 * time.Millisecond, ReadBackoffMax: 500 * time.Millisecond,
		})
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			for {
				m, err := r.ReadMessage(ctx)
				if err != nil {
					if ctx.Err() != nil || errors.Is(err, io.EOF) {
						return
					}
					continue // the broker is down; the reader reconnects
				}
				c.add(p, m)
			}
		}()
		t.Cleanup(func() { _ = r.Close() })
	}
	t.Cleanup(c.Stop)
	return c
}

func (c *Collector) add(p int, m kafka.Message) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var id string
	for _, h := range m.Headers {
		if h.Key == outbox.HeaderMessageID {
			id = string(h.Value)
		}
	}
	k, n, ok := strings.Cut(string(m.Value), "/")
	seq, err := strconv.Atoi(n)
	if !ok || err != nil || k != string(m.Key) || id == "" {
		c.bad = append(c.bad, fmt.Sprintf("partition %d offset %d: key %q value %q message-id %q", p, m.Offset, m.Key, m.Value, id))
		return
	}
	c.records = append(c.records, record{partition: p, key: k, seq: seq, id: id})
}

// Stop ends the readers.
func (c *Collector) Stop() {
	c.cancel()
	c.wg.Wait()
}

func (c *Collector) snapshot() []record {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.records)
}

// distinct is the number of different messages read so far.
func (c *Collector) distinct() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	seen := make(map[string]bool, len(c.records))
	for _, r := range c.records {
		seen[r.id] = true
	}
	return len(seen)
}

// WaitAll waits until every committed message was read back at least once, or until
// nothing new arrived for stall (or timeout passed): what is missing then is reported
// as lost by Check.
func (c *Collector) WaitAll(t testing.TB, p *Producer, timeout, stall time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	last, lastChange := -1, time.Now()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for ; ; <-tick.C {
		missing := c.missing(p)
		if missing == 0 {
			return
		}
		if n := len(c.snapshot()); n != last {
			last, lastChange = n, time.Now()
		}
		if time.Since(lastChange) > stall || time.Now().After(deadline) {
			t.Logf("gave up waiting: %d of %d committed messages still not in Kafka after %s without progress", missing, p.Total(), time.Since(lastChange).Round(time.Second))
			return
		}
	}
}

func (c *Collector) missing(p *Producer) int {
	got := map[string]map[int]bool{}
	for _, r := range c.snapshot() {
		if got[r.key] == nil {
			got[r.key] = map[int]bool{}
		}
		got[r.key][r.seq] = true
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	missing := 0
	for k, n := range p.sent {
		for s := 1; s <= n; s++ {
			if !got[k][s] {
				missing++
			}
		}
	}
	return missing
}

// Report is what the invariant check found.
type Report struct {
	Committed, Delivered, Duplicates int
	Lost                             []string
	OutOfOrder                       []string
	SplitKeys                        []string
	Malformed                        []string
}

func (r Report) String() string {
	return fmt.Sprintf("committed %d, delivered %d (%d duplicate deliveries), lost %d, out of order %d, keys on several partitions %d, malformed %d",
		r.Committed, r.Delivered, r.Duplicates, len(r.Lost), len(r.OutOfOrder), len(r.SplitKeys), len(r.Malformed))
}

// Check verifies the outbox guarantees on what was read: every committed message delivered
// (none lost), each key on one partition, and per key the first delivery of message n+1
// after the first delivery of message n (redelivering an in-flight batch is allowed).
func (c *Collector) Check(sent map[string]int) Report {
	recs := c.snapshot()
	c.mu.Lock()
	rep := Report{Delivered: len(recs), Malformed: slices.Clone(c.bad)}
	c.mu.Unlock()
	for _, n := range sent {
		rep.Committed += n
	}
	partOf := map[string]int{}
	next := map[string]int{} // key → next number expected as a first delivery
	seen := map[string]map[int]bool{}
	ids := map[string]string{}
	for _, r := range recs {
		if p0, ok := partOf[r.key]; ok && p0 != r.partition && !slices.Contains(rep.SplitKeys, r.key) {
			rep.SplitKeys = append(rep.SplitKeys, fmt.Sprintf("%s on partitions %d and %d", r.key, p0, r.partition))
		}
		partOf[r.key] = r.partition
		if seen[r.key] == nil {
			seen[r.key], next[r.key] = map[int]bool{}, 1
		}
		name := fmt.Sprintf("%s/%d", r.key, r.seq)
		if prev, ok := ids[name]; ok && prev != r.id {
			rep.Malformed = append(rep.Malformed, fmt.Sprintf("%s delivered with two message ids %s and %s", name, prev, r.id))
		}
		ids[name] = r.id
		if seen[r.key][r.seq] {
			rep.Duplicates++
			continue
		}
		seen[r.key][r.seq] = true
		if r.seq != next[r.key] {
			rep.OutOfOrder = append(rep.OutOfOrder, fmt.Sprintf("%s first delivered before %s/%d", name, r.key, next[r.key]))
		}
		next[r.key] = max(next[r.key], r.seq) + 1
	}
	for k, n := range sent {
		for s := 1; s <= n; s++ {
			if !seen[k][s] {
				rep.Lost = append(rep.Lost, fmt.Sprintf("%s/%d", k, s))
			}
		}
	}
	slices.Sort(rep.Lost)
	return rep
}

// requireInvariants fails t with the first violations of each kind.
func requireInvariants(t testing.TB, rep Report) {
	t.Helper()
	t.Logf("invariants: %s", rep)
	first := func(s []string) []string { return s[:min(len(s), 5)] }
	if len(rep.Lost) > 0 {
		t.Errorf("outbox messages lost: %d, e.g. %v", len(rep.Lost), first(rep.Lost))
	}
	if len(rep.OutOfOrder) > 0 {
		t.Errorf("per-key order broken: %d, e.g. %v", len(rep.OutOfOrder), first(rep.OutOfOrder))
	}
	if len(rep.SplitKeys) > 0 {
		t.Errorf("keys published to several partitions: %v", first(rep.SplitKeys))
	}
	if len(rep.Malformed) > 0 {
		t.Errorf("malformed deliveries: %v", first(rep.Malformed))
	}
	if rep.Committed == 0 {
		t.Error("nothing was committed: the test proved nothing")
	}
}
