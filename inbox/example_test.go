package inbox_test

import (
	"context"
	"log"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagabox/sagabox/inbox"
)

// Dedup by hand, for a consumer loop of your own (package inbox/consumer does this
// for Kafka): the effect and the inbox row commit together.
func ExampleRecord() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, "postgres://localhost/shop")
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	messageID := uuid.MustParse("0190a1b2-0000-7000-8000-000000000001") // from the message-id header

	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		first, err := inbox.Record(ctx, tx, "billing", messageID)
		if err != nil || !first {
			return err // a duplicate: acknowledge it and do nothing
		}
		_, err = tx.Exec(ctx, `UPDATE accounts SET balance = balance + 10 WHERE id = 'alice'`)
		return err
	})
	if err != nil {
		log.Fatal(err)
	}
}
