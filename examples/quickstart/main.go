// Command quickstart runs one order saga of two steps, from the business transaction that
// starts it to its completion, on your PostgreSQL and Kafka:
//
//	DATABASE_URL=postgres://localhost:5432/postgres KAFKA_BROKERS=localhost:9092 go run ./examples/quickstart
package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/segmentio/kafka-go"

	"github.com/sagabox/sagabox/migrations"
	"github.com/sagabox/sagabox/participants"
	"github.com/sagabox/sagabox/relay"
	"github.com/sagabox/sagabox/relay/kafkapub"
	"github.com/sagabox/sagabox/sagastate"
	"github.com/sagabox/sagabox/wire"
)

// The payload of an order saga.
type Order struct{ Item string }

// The saga: reserve the stock, then charge the card; a refused charge releases the stock.
var orderSaga = sagastate.Define[Order]("order",
	sagastate.Step("reserve", "shop.commands").Do("stock.reserve").Undo("stock.release"),
	sagastate.Step("charge", "shop.commands").Do("card.charge").Undo("card.refund"),
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	brokers := strings.Split(cmp.Or(os.Getenv("KAFKA_BROKERS"), "localhost:9092"), ",")
	if err := run(ctx, os.Getenv("DATABASE_URL"), brokers); err != nil {
		fmt.Fprintln(os.Stderr, "quickstart:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, databaseURL string, brokers []string) error {
	// The toolkit's tables (schema "sagabox"), the shop's own table and the topics.
	if err := migrations.Up(ctx, databaseURL, migrations.DefaultSchema); err != nil {
		return fmt.Errorf("migrate (check DATABASE_URL): %w", err)
	}
	pool, err := pgxpool.New(ctx, databaseURL)
	if err != nil {
		return err
	}
	defer pool.Close()
	if _, err := pool.Exec(ctx, `CREATE TABLE IF NOT EXISTS orders (id uuid PRIMARY KEY, item text, status text)`); err != nil {
		return err
	}
	if err := createTopics(ctx, brokers, "shop.commands", sagastate.DefaultReplyTopic); err != nil {
		return err
	}

	// A participant: each step's effect commits in the transaction that records the command.
	shop, err := participants.New(pool, participants.Config{Brokers: brokers, GroupID: "shop", CommandTopics: []string{"shop.commands"}})
	if err != nil {
		return err
	}
	setStatus := func(status string) participants.Handler {
		return func(ctx context.Context, tx pgx.Tx, cmd wire.Command) ([]byte, error) {
			_, err := tx.Exec(ctx, `UPDATE orders SET status = $1 WHERE id = $2`, status, cmd.SagaID)
			return nil, err
		}
	}
	shop.Step("stock.reserve", setStatus("reserved"), "stock.release", setStatus("released"))
	shop.Step("card.charge", setStatus("charged"), "card.refund", setStatus("refunded"))

	// The orchestrator, and the relay that publishes everyone's outbox to Kafka.
	orch, err := sagastate.New(pool, sagastate.Config{Brokers: brokers, Sagas: []sagastate.Definition{orderSaga}})
	if err != nil {
		return err
	}
	pub, err := kafkapub.New(kafkapub.Config{Brokers: brokers})
	if err != nil {
		return err
	}
	defer pub.Close()
	rel, err := relay.New(pool, pub, relay.Config{})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait() // after cancel: nothing runs once run returns
	defer cancel()
	failed := make(chan error, 3)
	for _, svc := range []interface{ Run(context.Context) error }{shop, orch, rel} {
		wg.Go(func() {
			if err := svc.Run(ctx); err != nil {
				failed <- err
			}
		})
	}

	// The business transaction: the order row and its saga commit together, or neither does.
	id := uuid.New()
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO orders (id, item, status) VALUES ($1, 'book', 'new')`, id); err != nil {
			return err
		}
		return orderSaga.Start(ctx, tx, orch, id, Order{Item: "book"})
	})
	if err != nil {
		return err
	}
	for {
		saga, err := orch.Get(ctx, id)
		if err != nil {
			return err
		}
		if saga.Status.Final() {
			fmt.Printf("saga %s %s\n", id, saga.Status)
			return nil
		}
		select {
		case err := <-failed:
			return err
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// createTopics creates the topics that do not exist yet.
func createTopics(ctx context.Context, brokers []string, topics ...string) error {
	req := &kafka.CreateTopicsRequest{}
	for _, t := range topics {
		req.Topics = append(req.Topics, kafka.TopicConfig{Topic: t, NumPartitions: 8, ReplicationFactor: 1})
	}
	resp, err := (&kafka.Client{Addr: kafka.TCP(brokers...)}).CreateTopics(ctx, req)
	if err != nil {
		return fmt.Errorf("create topics on %v (check KAFKA_BROKERS): %w", brokers, err)
	}
	for t, err := range resp.Errors {
		if err != nil && !errors.Is(err, kafka.TopicAlreadyExists) {
			return fmt.Errorf("create topic %s: %w", t, err)
		}
	}
	return nil
}
