package consumer

import (
	"context"
	"fmt"
	"strings"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/sagabox/sagabox/inbox"
	"github.com/sagabox/sagabox/outbox"
)

// Replay puts dead letter id (see inbox.Store.ListDeadLetters) back on its topic, in
// tx: it resolves the dead letter as replayed, deletes its consumer's inbox row for
// the message, and
// enqueues the record through the outbox of schema ("" means "sagabox") under the
// same message id, so the relay publishes it again and that consumer handles it as
// new — once the cause is fixed. Consumer groups that had handled the message skip
// it through their own inbox. A record that had no valid message id gets a new one.
// Nothing happens unless tx commits. It returns the message id enqueued.
func Replay(ctx context.Context, tx pgx.Tx, schema string, id int64) (uuid.UUID, error) {
	store, err := inbox.NewStore(schema)
	if err != nil {
		return uuid.Nil, err
	}
	w, err := outbox.New(outbox.Config{Schema: store.Schema()})
	if err != nil {
		return uuid.Nil, err
	}
	d, err := store.TakeDeadLetter(ctx, tx, id)
	if err != nil {
		return uuid.Nil, fmt.Errorf("consumer: replay: %w", err)
	}
	if d.MessageID != uuid.Nil {
		if _, err := store.Forget(ctx, tx, d.Consumer, d.MessageID); err != nil {
			return uuid.Nil, fmt.Errorf("consumer: replay dead letter %d: %w", id, err)
		}
	}
	headers := make(map[string]string, len(d.Headers))
	for k, v := range d.Headers {
		if !strings.EqualFold(k, outbox.HeaderMessageID) { // the relay sets it from the id
			headers[k] = v
		}
	}
	msgs := []outbox.Message{{ID: d.MessageID, Topic: d.Topic, Key: string(d.Key), Payload: d.Value, Headers: headers}}
	if err := w.Enqueue(ctx, tx, msgs...); err != nil {
		return uuid.Nil, fmt.Errorf("consumer: replay dead letter %d (%s/%d@%d): %w", id, d.Topic, d.Partition, d.Offset, err)
	}
	return msgs[0].ID, nil
}
