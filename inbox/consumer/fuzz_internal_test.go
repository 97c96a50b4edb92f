package consumer

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/segmentio/kafka-go"

	"github.com/sagabox/sagabox/internal/testenv"
	"github.com/sagabox/sagabox/outbox"
)

// FuzzDecodeAndDeadLetter: any record decodes without panicking (into a message or
// ErrMalformed), and any record — whatever bytes its key, value, headers and the
// handler's error text hold — is stored as a dead letter in PostgreSQL and reads
// back byte for byte. A dead letter that cannot be stored would stall its partition.
func FuzzDecodeAndDeadLetter(f *testing.F) {
	f.Add([]byte("k"), []byte("v"), "message-id", "0190a0c4-5b7e-7000-8000-000000000001", "x-trace", "00-x", "boom")
	f.Add([]byte("k\x00\xff"), []byte{0, 0xfe}, "message-id", "not-a-uuid", "x-bin", "a\x00b\xff", "bad \x00 byte \xfe")
	f.Add([]byte(nil), []byte(nil), "", "", "n\x00ame", "\xc3\x28", "")
	f.Add([]byte{}, []byte("{}"), "message-id", "00000000-0000-0000-0000-000000000000", "message-id", "dup", "\\x00")
	db := testenv.NewDB(f)
	c, err := New(db.Pool, Config{Brokers: []string{"127.0.0.1:1"}, GroupID: "fuzz", Topics: []string{"t"}},
		func(context.Context, pgx.Tx, Message) error { return nil })
	if err != nil {
		f.Fatal(err)
	}
	var n atomic.Int64
	f.Fuzz(func(t *testing.T, key, value []byte, idName, idValue, hName, hValue, reason string) {
		km := kafka.Message{Topic: "t", Partition: 3, Offset: n.Add(1), Key: key, Value: value}
		if idName != "" {
			km.Headers = append(km.Headers, kafka.Header{Key: idName, Value: []byte(idValue)})
		}
		if hName != "" {
			km.Headers = append(km.Headers, kafka.Header{Key: hName, Value: []byte(hValue)})
		}
		m, err := decode(km)
		switch {
		case err != nil && !errors.Is(err, ErrMalformed):
			t.Fatalf("decode error %v does not wrap ErrMalformed", err)
		case err == nil && (m.ID == uuid.Nil || m.ID.String() != strings.ToLower(uuid.MustParse(m.Headers[outbox.HeaderMessageID]).String())):
			t.Fatalf("decoded id %s from header %q", m.ID, m.Headers[outbox.HeaderMessageID])
		}
		if err == nil {
			err = errors.New(reason)
		}
		// What deadLetter stores, in the same transaction shape, one consumer name per
		// input so each reads back its own.
		consumer := fmt.Sprintf("fuzz-%d", km.Offset)
		r := &run{c: c, ctx: context.Background()}
		if err := r.inTx(nil, nil, func(_ context.Context, tx pgx.Tx, _ []bool) error {
			_, err := c.store.AddDeadLetter(r.ctx, tx, deadLetterOf(consumer, m, 1, err))
			return err
		}); err != nil {
			t.Fatalf("storing the dead letter failed (the partition would stall): %v", err)
		}
		got, lerr := c.store.ListDeadLetters(context.Background(), db.Pool, consumer, 0)
		if lerr != nil || len(got) != 1 {
			t.Fatalf("read back %d dead letters, %v", len(got), lerr)
		}
		d := got[0]
		if string(d.Key) != string(key) || string(d.Value) != string(value) || fmt.Sprint(d.Headers) != fmt.Sprint(m.Headers) || d.MessageID != m.ID {
			t.Fatalf("dead letter lost bytes:\n got key %q value %q headers %q id %s\nwant key %q value %q headers %q id %s",
				d.Key, d.Value, d.Headers, d.MessageID, key, value, m.Headers, m.ID)
		}
		if !utf8.ValidString(d.Reason) || strings.ContainsRune(d.Reason, 0) || (utf8.ValidString(err.Error()) && !strings.ContainsRune(err.Error(), 0) && d.Reason != err.Error()) {
			t.Fatalf("reason %q for error %q: want valid text, unchanged when it was valid", d.Reason, err.Error())
		}
	})
}
