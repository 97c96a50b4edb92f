package consumer_test

import (
	"context"
	"encoding/json"
	"log"
	"os/signal"
	"syscall"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagabox/sagabox/inbox/consumer"
	"github.com/sagabox/sagabox/outbox"
)

// A choreography service: each "payment.captured" event marks its order paid and
// announces it, exactly once, whatever Kafka redelivers.
func Example() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	pool, err := pgxpool.New(ctx, "postgres://localhost/shop")
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()

	c, err := consumer.New(pool, consumer.Config{
		Brokers: []string{"localhost:9092"}, GroupID: "orders", Topics: []string{"payment.captured"},
	}, func(ctx context.Context, tx pgx.Tx, msg consumer.Message) error {
		var ev struct {
			OrderID string `json:"order_id"`
		}
		if err := json.Unmarshal(msg.Value, &ev); err != nil {
			return consumer.Permanent(err) // retrying cannot fix it: dead-letter it
		}
		if _, err := tx.Exec(ctx, `UPDATE orders SET status = 'paid' WHERE id = $1`, ev.OrderID); err != nil {
			return err // transient: retried with backoff
		}
		// Commits with the update and the inbox row, or not at all.
		return outbox.Enqueue(ctx, tx, outbox.Message{Topic: "order.paid", Key: ev.OrderID, Payload: msg.Value})
	})
	if err != nil {
		log.Fatal(err)
	}
	if err := c.Run(ctx); err != nil { // until SIGTERM
		log.Fatal(err)
	}
}
