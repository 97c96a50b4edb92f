package consumer_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/sagabox/sagabox/inbox"
	"github.com/sagabox/sagabox/inbox/consumer"
	"github.com/sagabox/sagabox/internal/kafkatest"
	"github.com/sagabox/sagabox/outbox"
)

// poisonBytes holds what PostgreSQL text and jsonb refuse: NUL (22P05 in jsonb,
// 22021 in text) and bytes that are not UTF-8 (22021).
const poisonBytes = "a\x00b\xff\xfe"

// poisonRun produces records carrying poisonBytes among good ones, runs the consumer
// with a handler that fails permanently with poisonBytes in its error text for
// values marked "fail", and waits until the partition's offsets are all committed:
// a dead letter that cannot be stored used to stall the partition there forever.
func poisonRun(t *testing.T, poison ...kafkatest.Record) (*env, []inbox.DeadLetter) {
	t.Helper()
	e := setup(t, 1)
	recs := []kafkatest.Record{e.record(0, 0)}
	for i, p := range poison {
		recs = append(recs, p, e.record(0, i+1))
	}
	kafkatest.Produce(t, e.k.Brokers, e.topic, recs...)
	c, err := consumer.New(e.db.Pool, e.config(), func(ctx context.Context, tx pgx.Tx, msg consumer.Message) error {
		if string(msg.Value) == "fail" {
			return consumer.Permanent(errors.New("cannot handle " + poisonBytes))
		}
		return apply(ctx, tx, msg)
	})
	if err != nil {
		t.Fatal(err)
	}
	start(t, c)
	kafkatest.WaitCommitted(t, e.k.Brokers, e.group, e.topic, 1, waitFor)
	if b, want := e.balances(t)["acct-0"], int64((len(poison)+1)*(len(poison)+2)/2); b != want {
		t.Fatalf("balance = %d, want %d: every good record after the poison ones applied", b, want)
	}
	store, _ := inbox.NewStore("")
	dead, err := store.ListDeadLetters(context.Background(), e.db.Pool, e.group, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(dead) != len(poison) {
		t.Fatalf("%d dead letters, want %d", len(dead), len(poison))
	}
	return e, dead
}

func TestPoisonHeaderNULDoesNotStallPartition(t *testing.T) {
	t.Parallel()
	withID := kafkatest.FromOutbox(outbox.Message{Key: "k\x00\xff", Payload: []byte("fail"), Headers: map[string]string{"x-bin": poisonBytes, "n\x00ame": "v"}}, 0)
	noID := kafkatest.Record{Key: poisonBytes, Value: []byte(poisonBytes), Headers: map[string]string{"x-bin": poisonBytes}}
	_, dead := poisonRun(t, withID, noID)
	for i, want := range []kafkatest.Record{withID, noID} {
		d := dead[i]
		if string(d.Key) != want.Key || string(d.Value) != string(want.Value) || fmt.Sprint(d.Headers) != fmt.Sprint(want.Headers) {
			t.Errorf("dead letter %d lost bytes:\n got key %q value %q headers %q\nwant key %q value %q headers %q",
				i, d.Key, d.Value, d.Headers, want.Key, want.Value, want.Headers)
		}
	}
}

func TestPoisonErrorTextNULOrInvalidUTF8DoesNotStallPartition(t *testing.T) {
	t.Parallel()
	fail := kafkatest.FromOutbox(outbox.Message{Key: "acct-0", Payload: []byte("fail")}, 0)
	_, dead := poisonRun(t, fail)
	if want := `cannot handle a\x00b\xff\xfe`; !strings.Contains(dead[0].Reason, want) {
		t.Fatalf("reason %q; want the error text with its NUL and invalid bytes escaped: %q", dead[0].Reason, want)
	}
}
