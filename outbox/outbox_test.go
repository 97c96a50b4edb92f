package outbox_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/google/uuid"

	"github.com/sagabox/sagabox/internal/testenv"
	"github.com/sagabox/sagabox/outbox"
)

func TestMain(m *testing.M) { os.Exit(testenv.Run(m)) }

func countRows(t *testing.T, db *testenv.DB) int {
	t.Helper()
	var n int
	if err := db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM "sagabox"."outbox_messages"`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestEnqueue(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("CommitStoresMessagesWithIDs", func(t *testing.T) {
		t.Parallel()
		db := testenv.NewDB(t)
		tx, err := db.Pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		msgs := []outbox.Message{
			{Topic: "orders", Key: "o-1", Payload: []byte(`{"a":1}`), Headers: map[string]string{"traceparent": "00-abc"}},
			{Topic: "orders", Key: "o-1", Payload: []byte(`{"a":2}`)},
		}
		if err := outbox.Enqueue(ctx, tx, msgs...); err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		for _, m := range msgs {
			if m.ID == uuid.Nil || m.ID.Version() != 7 {
				t.Fatalf("id %v is not a UUIDv7", m.ID)
			}
		}
		var topic, key, trace string
		var payload []byte
		err = db.Pool.QueryRow(ctx, `SELECT topic, key, payload, headers->>'traceparent' FROM "sagabox"."outbox_messages" WHERE id = $1`, msgs[0].ID).
			Scan(&topic, &key, &payload, &trace)
		if err != nil {
			t.Fatal(err)
		}
		if topic != "orders" || key != "o-1" || string(payload) != `{"a":1}` || trace != "00-abc" {
			t.Fatalf("stored %q %q %q %q", topic, key, payload, trace)
		}
		if n := countRows(t, db); n != 2 {
			t.Fatalf("rows = %d, want 2", n)
		}
	})

	t.Run("RollbackLeavesNothing", func(t *testing.T) {
		t.Parallel()
		db := testenv.NewDB(t)
		tx, err := db.Pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := outbox.Enqueue(ctx, tx, outbox.Message{Topic: "orders", Payload: []byte("x")}); err != nil {
			t.Fatal(err)
		}
		if err := tx.Rollback(ctx); err != nil {
			t.Fatal(err)
		}
		if n := countRows(t, db); n != 0 {
			t.Fatalf("rows = %d after rollback, want 0", n)
		}
	})

	t.Run("InvalidMessagesRejectedBeforeWriting", func(t *testing.T) {
		t.Parallel()
		db := testenv.NewDB(t)
		w, err := outbox.New(outbox.Config{MaxMessageBytes: 200})
		if err != nil {
			t.Fatal(err)
		}
		good := outbox.Message{Topic: "ok", Payload: []byte("x")}
		cases := []struct {
			name string
			msg  outbox.Message
			want error
		}{
			{"EmptyTopic", outbox.Message{}, outbox.ErrInvalidTopic},
			{"BadTopic", outbox.Message{Topic: "a b"}, outbox.ErrInvalidTopic},
			{"Oversized", outbox.Message{Topic: "t", Payload: make([]byte, 200)}, outbox.ErrMessageTooLarge},
			{"ReservedHeader", outbox.Message{Topic: "t", Headers: map[string]string{"Message-ID": "x"}}, outbox.ErrInvalidHeader},
			{"EmptyHeaderName", outbox.Message{Topic: "t", Headers: map[string]string{"": "x"}}, outbox.ErrInvalidHeader},
			{"NULInHeader", outbox.Message{Topic: "t", Headers: map[string]string{"h": "a\x00b"}}, outbox.ErrInvalidHeader},
			{"InvalidUTF8Key", outbox.Message{Topic: "t", Key: "\xff"}, outbox.ErrInvalidKey},
		}
		for _, c := range cases {
			err := w.Enqueue(ctx, db.Pool, good, c.msg)
			var ve *outbox.ValidationError
			if !errors.Is(err, c.want) || !errors.As(err, &ve) || ve.Index != 1 {
				t.Errorf("%s: err = %v, want %v at index 1", c.name, err, c.want)
			}
			if err != nil && !strings.Contains(err.Error(), "message 1") {
				t.Errorf("%s: error %q does not say which message", c.name, err)
			}
		}
		if n := countRows(t, db); n != 0 {
			t.Fatalf("rows = %d, want 0: a rejected call must write nothing", n)
		}
	})

	t.Run("NegativeLimitIsAConfigError", func(t *testing.T) {
		t.Parallel()
		if _, err := outbox.New(outbox.Config{MaxMessageBytes: -1}); err == nil {
			t.Fatal("want an error for a negative MaxMessageBytes")
		}
	})
}

// TestEnqueueChecksTheWholeRecordAgainstThePublishersLimit: the publisher counts
// payload, key, headers and record overhead against one limit; a row Enqueue
// accepts past it blocks its key until dead-lettered. Enqueue must refuse it.
func TestEnqueueChecksTheWholeRecordAgainstThePublishersLimit(t *testing.T) {
	t.Parallel()
	db := testenv.NewDB(t)
	big := strings.Repeat("x", 600<<10)
	for name, m := range map[string]outbox.Message{
		"KeyAndPayload":     {Topic: "t", Key: big, Payload: []byte(big)},
		"HeadersAndPayload": {Topic: "t", Headers: map[string]string{"a": big}, Payload: []byte(big)},
		"ManyHeaders":       {Topic: "t", Headers: manyHeaders(2 << 10)},
	} {
		err := outbox.Enqueue(context.Background(), db.Pool, m)
		var ve *outbox.ValidationError
		if !errors.As(err, &ve) || !errors.Is(err, outbox.ErrMessageTooLarge) {
			t.Errorf("%s: err = %v; want a ValidationError wrapping ErrMessageTooLarge", name, err)
		}
	}
	if n := countRows(t, db); n != 0 {
		t.Fatalf("%d rows written; want none", n)
	}
}

// manyHeaders returns n headers of 512 bytes each.
func manyHeaders(n int) map[string]string {
	h := make(map[string]string, n)
	for i := range n {
		h[fmt.Sprintf("h%05d", i)] = strings.Repeat("v", 512)
	}
	return h
}

// outbox.New used to accept any schema name while inbox, sagastate and participants
// rejected the same one: every package now validates with migrations.ValidateSchema.
func TestNewRejectsTheSchemaNamesOtherPackagesReject(t *testing.T) {
	t.Parallel()
	for _, bad := range []string{"Bad", "has-dash", "1starts_with_digit"} {
		if _, err := outbox.New(outbox.Config{Schema: bad}); err == nil || !strings.Contains(err.Error(), "invalid schema name") {
			t.Errorf("New(Schema %q) = %v; want the shared invalid schema name error", bad, err)
		}
	}
	if _, err := outbox.New(outbox.Config{Schema: "tenant_7"}); err != nil {
		t.Fatalf("New(Schema tenant_7): %v", err)
	}
}
