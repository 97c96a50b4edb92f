package kafkatest

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/segmentio/kafka-go"
	"go.uber.org/goleak"

	"github.com/sagabox/sagabox/internal/testenv"
	"github.com/sagabox/sagabox/outbox"
)

// Record is one record to produce. Partition is honoured as given.
type Record struct {
	Partition int
	Key       string
	Value     []byte
	Headers   map[string]string
}

// FromOutbox turns an outbox message into a record the way the relay publishes it:
// the message id in the message-id header.
func FromOutbox(m outbox.Message, partition int) Record {
	if m.ID == uuid.Nil {
		m.ID = uuid.Must(uuid.NewV7())
	}
	h := map[string]string{outbox.HeaderMessageID: m.ID.String()}
	for k, v := range m.Headers {
		h[k] = v
	}
	return Record{Partition: partition, Key: m.Key, Value: m.Payload, Headers: h}
}

type fixedPartition struct{}

// Balance places each record on the partition its Record asked for (carried in the
// message's Partition field, which kafka-go's Writer otherwise ignores).
func (fixedPartition) Balance(m kafka.Message, partitions ...int) int { return m.Partition }

// Produce writes records to topic, in order, and fails t on error.
func Produce(t testing.TB, brokers []string, topic string, records ...Record) {
	t.Helper()
	tr := &kafka.Transport{}
	defer tr.CloseIdleConnections() // no goroutines left for goleak
	w := &kafka.Writer{
		Transport:    tr,
		Addr:         kafka.TCP(brokers...),
		Topic:        topic,
		Balancer:     fixedPartition{},
		BatchTimeout: 2 * time.Millisecond,
		BatchSize:    1000,
		RequiredAcks: kafka.RequireAll,
	}
	defer w.Close()
	msgs := make([]kafka.Message, len(records))
	for i, r := range records {
		msgs[i] = kafka.Message{Partition: r.Partition, Value: r.Value}
		if r.Key != "" {
			msgs[i].Key = []byte(r.Key)
		}
		for k, v := range r.Headers {
			msgs[i].Headers = append(msgs[i].Headers, kafka.Header{Key: k, Value: []byte(v)})
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := w.WriteMessages(ctx, msgs...); err != nil {
		t.Fatalf("kafkatest: produce %d records to %s: %v", len(msgs), topic, err)
	}
}

// Committed returns the group's committed offset per partition of topic (-1 when none).
func Committed(t testing.TB, brokers []string, group, topic string, partitions int) []int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tr := &kafka.Transport{}
	defer tr.CloseIdleConnections()
	client := &kafka.Client{Addr: kafka.TCP(brokers...), Transport: tr}
	parts := make([]int, partitions)
	for i := range parts {
		parts[i] = i
	}
	resp, err := client.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: group, Topics: map[string][]int{topic: parts}})
	if err != nil {
		t.Fatalf("kafkatest: fetch offsets of group %s: %v", group, err)
	}
	out := make([]int64, partitions)
	for i := range out {
		out[i] = -1
	}
	for _, p := range resp.Topics[topic] {
		if p.Error == nil && p.Partition < partitions {
			out[p.Partition] = p.CommittedOffset
		}
	}
	return out
}

// Partitions returns how many partitions topic has.
func Partitions(t testing.TB, brokers []string, topic string) int {
	t.Helper()
	conn, err := kafka.Dial("tcp", brokers[0])
	if err != nil {
		t.Fatalf("kafkatest: dial %s: %v", brokers[0], err)
	}
	parts, err := conn.ReadPartitions(topic)
	conn.Close()
	if err != nil {
		t.Fatalf("kafkatest: partitions of %s: %v", topic, err)
	}
	return len(parts)
}

// Ends returns the end offset (next offset to be written) of each partition of topic.
func Ends(t testing.TB, brokers []string, topic string, partitions int) []int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tr := &kafka.Transport{}
	defer tr.CloseIdleConnections()
	client := &kafka.Client{Addr: kafka.TCP(brokers...), Transport: tr}
	reqs := make([]kafka.OffsetRequest, partitions)
	for i := range reqs {
		reqs[i] = kafka.LastOffsetOf(i)
	}
	resp, err := client.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: reqs}})
	if err != nil {
		t.Fatalf("kafkatest: list offsets of %s: %v", topic, err)
	}
	out := make([]int64, partitions)
	for _, p := range resp.Topics[topic] {
		if p.Error != nil {
			t.Fatalf("kafkatest: list offsets of %s/%d: %v", topic, p.Partition, p.Error)
		}
		out[p.Partition] = p.LastOffset
	}
	return out
}

// WaitCommitted polls until group has committed every record of topic, or fails t
// after timeout. It proves the consumer got past every record, duplicates included.
func WaitCommitted(t testing.TB, brokers []string, group, topic string, partitions int, timeout time.Duration) {
	t.Helper()
	ends := Ends(t, brokers, topic, partitions)
	var got []int64
	Poll(t, timeout, func() bool {
		got = Committed(t, brokers, group, topic, partitions)
		for i := range ends {
			if ends[i] > 0 && got[i] < ends[i] { // an empty partition has nothing to commit
				return false
			}
		}
		return true
	}, func() string { return fmt.Sprintf("group %s committed %v of %s, want %v", group, got, topic, ends) })
}

// Poll checks cond every 20ms until it holds, or fails t after timeout with what() as
// the explanation.
func Poll(t testing.TB, timeout time.Duration, cond func() bool, what func() string) {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-deadline.C:
			t.Fatalf("after %s: %s", timeout, what())
		case <-tick.C:
		}
	}
}

// Main runs the tests of a package that starts goroutines: testenv.Run, then a goleak
// check. Use it as: func TestMain(m *testing.M) { os.Exit(kafkatest.Main(m)) }
func Main(m *testing.M) int {
	code := testenv.Run(m)
	if code != 0 {
		return code
	}
	// testenv's CreateTopic uses kafka-go's shared DefaultTransport, whose idle
	// connection pool lives for the process; everything else must be gone.
	if err := goleak.Find(
		goleak.IgnoreTopFunction("github.com/segmentio/kafka-go.(*connPool).discover"),
		goleak.IgnoreTopFunction("github.com/segmentio/kafka-go.(*conn).run"),
	); err != nil {
		fmt.Fprintln(os.Stderr, "goroutines left behind:", err)
		return 1
	}
	return 0
}

// ReadTopic reads every partition of topic from the beginning until want records
// arrived or the deadline passed, and returns them per partition in offset order.
func ReadTopic(t testing.TB, brokers []string, topic string, want int, timeout time.Duration) [][]kafka.Message {
	t.Helper()
	parts := Partitions(t, brokers, topic)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out := make([][]kafka.Message, parts)
	var mu sync.Mutex
	total := 0
	var wg sync.WaitGroup
	for p := range parts {
		wg.Go(func() {
			rd := kafka.NewReader(kafka.ReaderConfig{
				Brokers: brokers, Topic: topic, Partition: p,
				MinBytes: 1, MaxBytes: 10 << 20, MaxWait: 50 * time.Millisecond,
			})
			defer rd.Close()
			for {
				m, err := rd.ReadMessage(ctx)
				if err != nil {
					return
				}
				mu.Lock()
				out[p] = append(out[p], m)
				total++
				if total >= want {
					cancel()
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if total < want {
		t.Fatalf("read %d records from %s within %v, want %d", total, topic, timeout, want)
	}
	return out
}
