package participants_test

import (
	"context"
	"encoding/json"
	"log"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagabox/sagabox/participants"
	"github.com/sagabox/sagabox/wire"
)

// A payment participant: two plain functions of (ctx, tx, command). The barrier,
// the inbox and the reply to the orchestrator are the participant's business.
func Example() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, "postgres://localhost/payments")
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()

	type order struct {
		ID     string `json:"id"`
		Amount int64  `json:"amount"`
	}
	charge := func(ctx context.Context, tx pgx.Tx, cmd wire.Command) ([]byte, error) {
		var o order
		if err := json.Unmarshal(cmd.Payload, &o); err != nil {
			return nil, participants.Failf("bad order: %v", err)
		}
		if o.Amount > 1000 {
			return nil, participants.Fail("payment declined: above the limit") // the saga compensates
		}
		_, err := tx.Exec(ctx, `INSERT INTO payments (order_id, amount) VALUES ($1, $2)`, o.ID, o.Amount)
		return nil, err // an error here replies "retryable"
	}
	refund := func(ctx context.Context, tx pgx.Tx, cmd wire.Command) ([]byte, error) {
		var o order
		if err := json.Unmarshal(cmd.Payload, &o); err != nil {
			return nil, participants.Failf("bad order: %v", err)
		}
		_, err := tx.Exec(ctx, `DELETE FROM payments WHERE order_id = $1`, o.ID)
		return nil, err
	}

	p, err := participants.New(pool, participants.Config{
		Brokers: []string{"localhost:9092"}, GroupID: "payments", CommandTopics: []string{"payment.commands"},
	})
	if err != nil {
		log.Fatal(err)
	}
	p.Step("payment.charge", charge, "payment.refund", refund)
	if err := p.Run(ctx); err != nil {
		log.Fatal(err)
	}
}
