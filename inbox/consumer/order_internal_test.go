package consumer

import (
	"context"
	"fmt"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/segmentio/kafka-go"

	"github.com/sagabox/sagabox/internal/testenv"
	"github.com/sagabox/sagabox/outbox"
)

func TestLockOrderKeepsPerKeyOrder(t *testing.T) {
	t.Parallel()
	msg := func(partition int, offset int64, key, lock string) Message {
		return Message{Topic: "t", Partition: partition, Offset: offset, Key: []byte(key), Value: []byte(lock)}
	}
	// Fetch order: partition 0 and 1 interleaved, as one worker's queue sees them.
	msgs := []Message{
		msg(0, 10, "b", "sku-2"), msg(1, 5, "a", "sku-9"), msg(0, 11, "a", "sku-1"),
		msg(0, 12, "b", "sku-0"), // same key as offset 10: must stay after it although its lock sorts first
		msg(1, 6, "c", "sku-1"), msg(0, 13, "a", "sku-3"),
	}
	show := func(order []int) string {
		s := ""
		for _, i := range order {
			s += fmt.Sprintf("%d@%d ", msgs[i].Partition, msgs[i].Offset)
		}
		return s
	}
	if got, want := show(lockOrder(msgs, nil)), "0@11 0@13 1@5 0@10 0@12 1@6 "; got != want {
		t.Errorf("by Kafka key: order %q, want %q", got, want)
	}
	byValue := func(m Message) []byte { return m.Value }
	if got, want := show(lockOrder(msgs, byValue)), "0@11 0@13 1@6 0@10 0@12 1@5 "; got != want {
		t.Errorf("by LockKey: order %q, want %q (key a under sku-1, c under sku-1, b under sku-2, a@1 under sku-9)", got, want)
	}
}

// TestMixedPartitionBatchCommitsEveryPartition: one worker serves several partitions,
// so one shared transaction can hold records of each; after it commits, the newest
// offset of every one of them must be marked for the offset commit, not only that of
// the batch's last record.
func TestMixedPartitionBatchCommitsEveryPartition(t *testing.T) {
	t.Parallel()
	db := testenv.NewDB(t)
	c, err := New(db.Pool, Config{Brokers: []string{"127.0.0.1:1"}, GroupID: "g", Topics: []string{"t"}},
		func(context.Context, pgx.Tx, Message) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	r := &run{c: c, done: make(chan kafka.Message, 100)}
	r.stop, r.halt = context.WithCancel(context.Background())
	defer r.halt()
	r.ctx, r.cancel = context.WithCancel(context.Background())
	defer r.cancel()
	var batch []kafka.Message
	for off := range int64(3) {
		for _, p := range []int{2, 0, 1} {
			id := uuid.New().String()
			batch = append(batch, kafka.Message{Topic: "t", Partition: p, Offset: off, Key: []byte(id),
				Headers: []kafka.Header{{Key: outbox.HeaderMessageID, Value: []byte(id)}}})
		}
	}
	r.handleBatch(batch)
	close(r.done)
	newest := map[int]int64{}
	for m := range r.done {
		newest[m.Partition] = max(newest[m.Partition], m.Offset)
	}
	if fmt.Sprint(newest) != "map[0:2 1:2 2:2]" {
		t.Fatalf("offsets marked for commit per partition %v; want offset 2 of partitions 0, 1 and 2", newest)
	}
}
