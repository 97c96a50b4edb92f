package outbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/sagabox/sagabox/internal/pguuid"
	"github.com/sagabox/sagabox/migrations"
)

// HeaderMessageID is the Kafka header that carries the outbox message id. The relay
// sets it on every record; consumers deduplicate on it.
const HeaderMessageID = "message-id"

// DefaultSchema is the schema holding the outbox table unless Config says otherwise.
//
// Deprecated: use migrations.DefaultSchema, the one default every package shares; this is
// the same constant.
const DefaultSchema = migrations.DefaultSchema

// DefaultMaxMessageBytes is the record size limit unless Config says otherwise:
// Kafka's default message.max.bytes is about 1 MiB, and a larger record could never
// be published. Package kafkapub refuses what is larger by the same measure
// (RecordSize), by default against the same limit.
const DefaultMaxMessageBytes = 1 << 20

// Errors returned by Enqueue. Each is wrapped in a *ValidationError naming the message.
var (
	// ErrInvalidTopic means a message's topic is empty or not a valid Kafka topic name.
	ErrInvalidTopic = errors.New("invalid topic")
	// ErrMessageTooLarge means a message's record (RecordSize: payload, key,
	// headers and overhead) exceeds the writer's MaxMessageBytes.
	ErrMessageTooLarge = errors.New("message too large")
	// ErrInvalidHeader means a header name or value cannot be stored or sent.
	ErrInvalidHeader = errors.New("invalid header")
	// ErrInvalidKey means a message key cannot be stored.
	ErrInvalidKey = errors.New("invalid key")
)

// Message is one record to publish.
type Message struct {
	// ID identifies the message end to end; consumers deduplicate on it. Enqueue
	// assigns a UUIDv7 when it is the zero UUID and writes the assigned id back.
	ID uuid.UUID
	// Topic is the Kafka topic. Required.
	Topic string
	// Key is the Kafka record key. Messages with the same key are published in
	// commit order. Empty means no key.
	Key string
	// Payload is the record value.
	Payload []byte
	// Headers are copied to the Kafka record, next to the message-id header.
	Headers map[string]string
}

// ValidationError reports which message of an Enqueue call was rejected and why.
type ValidationError struct {
	Index int    // position in the Enqueue call
	Topic string // the message's topic, as given
	Err   error  // one of the Err* sentinels, wrapped with detail
}

func (e *ValidationError) Error() string {
	return fmt.Sprintf("outbox: message %d (topic %q): %v", e.Index, e.Topic, e.Err)
}

func (e *ValidationError) Unwrap() error { return e.Err }

// Execer is the part of pgx.Tx that Enqueue needs. Pass the transaction that makes the
// business change; passing a pool or connection writes the messages in a transaction of
// their own and loses the all-or-nothing guarantee.
type Execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// Config configures a Writer.
type Config struct {
	// Schema holds the outbox_messages table. Defaults to "sagabox".
	Schema string
	// MaxMessageBytes rejects messages whose record (RecordSize) is larger at
	// Enqueue. Defaults to 1 MiB (Kafka's default message.max.bytes). Set it, and
	// the relay's publisher limit (kafkapub.Config.MaxMessageBytes), to the broker's.
	MaxMessageBytes int
}

// Writer enqueues messages into one schema's outbox. It is safe for concurrent use.
type Writer struct {
	opts  Config
	store *Store
}

// New returns a Writer with cfg' defaults applied, or an error if opts are invalid.
func New(opts Config) (*Writer, error) {
	if opts.Schema == "" {
		opts.Schema = migrations.DefaultSchema
	}
	if err := migrations.ValidateSchema(opts.Schema); err != nil {
		return nil, fmt.Errorf("outbox: Schema: %w", err)
	}
	if opts.MaxMessageBytes == 0 {
		opts.MaxMessageBytes = DefaultMaxMessageBytes
	}
	if opts.MaxMessageBytes < 0 {
		return nil, fmt.Errorf("outbox: MaxMessageBytes is %d; it must be positive (or 0 for the 1 MiB default)", opts.MaxMessageBytes)
	}
	return &Writer{opts: opts, store: NewStore(opts.Schema)}, nil
}

var defaultWriter, _ = New(Config{})

// Enqueue writes msgs into the outbox of the default schema ("sagabox") within tx.
// See Writer.Enqueue.
func Enqueue(ctx context.Context, tx Execer, msgs ...Message) error {
	return defaultWriter.Enqueue(ctx, tx, msgs...)
}

// Enqueue validates msgs, assigns missing ids (written back into msgs) and inserts
// them in one statement within tx. Nothing is published unless tx commits.
// If any message is invalid, nothing is written and the error is a *ValidationError.
func (w *Writer) Enqueue(ctx context.Context, tx Execer, msgs ...Message) error {
	if len(msgs) == 0 {
		return nil
	}
	ids := make([]uuid.UUID, len(msgs))
	topics := make([]string, len(msgs))
	keys := make([]string, len(msgs))
	payloads := make([][]byte, len(msgs))
	headers := make([]string, len(msgs)) // JSON text: encodable in every query exec mode
	for i := range msgs {
		m := &msgs[i]
		if err := w.validate(m); err != nil {
			return &ValidationError{Index: i, Topic: m.Topic, Err: err}
		}
		h, err := json.Marshal(m.Headers)
		if err != nil {
			return &ValidationError{Index: i, Topic: m.Topic, Err: fmt.Errorf("%w: %v", ErrInvalidHeader, err)}
		}
		if m.Headers == nil {
			h = []byte("{}")
		}
		payload := m.Payload
		if payload == nil {
			payload = []byte{}
		}
		ids[i], topics[i], keys[i], payloads[i], headers[i] = m.ID, m.Topic, m.Key, payload, string(h)
	}
	for i := range msgs {
		if msgs[i].ID == uuid.Nil {
			id, err := uuid.NewV7()
			if err != nil {
				return fmt.Errorf("outbox: generate message id: %w", err)
			}
			ids[i] = id
		}
	}
	if _, err := tx.Exec(ctx, w.store.stmt("enqueue"), pguuid.Array(ids), topics, keys, payloads, headers); err != nil {
		return fmt.Errorf("outbox: enqueue %d message(s) into %s: %w", len(msgs), w.opts.Schema, err)
	}
	for i := range msgs {
		msgs[i].ID = ids[i]
	}
	return nil
}

// Kafka's rule for topic names: ASCII letters, digits, '.', '_' and '-', at most 249 bytes.
var topicName = regexp.MustCompile(`^[a-zA-Z0-9._-]{1,249}$`)

func (w *Writer) validate(m *Message) error {
	switch {
	case m.Topic == "":
		return fmt.Errorf("%w: topic is empty; every message needs the Kafka topic to publish to", ErrInvalidTopic)
	case !topicName.MatchString(m.Topic) || m.Topic == "." || m.Topic == "..":
		return fmt.Errorf("%w: %q is not a Kafka topic name (use ASCII letters, digits, '.', '_' and '-', at most 249 characters)", ErrInvalidTopic, m.Topic)
	case RecordSize(m) > w.opts.MaxMessageBytes:
		return fmt.Errorf("%w: %d bytes (payload %d, key %d, headers and overhead) exceeds the limit of %d; store large data elsewhere and send a reference, or raise MaxMessageBytes together with the broker's message.max.bytes and the relay's",
			ErrMessageTooLarge, RecordSize(m), len(m.Payload), len(m.Key), w.opts.MaxMessageBytes)
	}
	if err := storableText(m.Key); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidKey, err)
	}
	for k, v := range m.Headers {
		switch {
		case k == "":
			return fmt.Errorf("%w: empty header name", ErrInvalidHeader)
		case strings.EqualFold(k, HeaderMessageID):
			return fmt.Errorf("%w: %q is reserved; the relay sets it from Message.ID", ErrInvalidHeader, k)
		}
		if err := storableText(k); err != nil {
			return fmt.Errorf("%w: name %q: %v", ErrInvalidHeader, k, err)
		}
		if err := storableText(v); err != nil {
			return fmt.Errorf("%w: value of %q: %v", ErrInvalidHeader, k, err)
		}
	}
	return nil
}

// RecordSize is the size a message counts for against MaxMessageBytes: payload,
// key, headers (the message-id header included) and a record's overhead. It
// over-estimates Kafka's own accounting a little, so what it admits the broker takes.
func RecordSize(m *Message) int {
	n := 64 + len(m.Key) + len(m.Payload) + len(HeaderMessageID) + 36
	for k, v := range m.Headers {
		n += 8 + len(k) + len(v)
	}
	return n
}

// storableText rejects what PostgreSQL text and jsonb cannot hold.
func storableText(s string) error {
	if !utf8.ValidString(s) {
		return errors.New("not valid UTF-8")
	}
	if strings.IndexByte(s, 0) >= 0 {
		return errors.New("contains a NUL byte")
	}
	return nil
}
