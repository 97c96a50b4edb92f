package consumer

import (
	"fmt"
	"testing"
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
