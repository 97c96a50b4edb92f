package relay_test

import (
	"context"
	"log"
	"os"
	"os/signal"
	"syscall"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sagabox/sagabox/relay"
	"github.com/sagabox/sagabox/relay/kafkapub"
	"github.com/sagabox/sagabox/relay/relayprom"
)

// Example wires a relay as cmd/outbox-relay does: a pool, the kafka-go
// publisher, Prometheus hooks, and Run until SIGTERM.
func Example() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	pub, err := kafkapub.New(kafkapub.Config{Brokers: []string{"localhost:9092"}})
	if err != nil {
		log.Fatal(err)
	}
	defer pub.Close()
	metrics, err := relayprom.New(prometheus.DefaultRegisterer)
	if err != nil {
		log.Fatal(err)
	}
	r, err := relay.New(pool, pub, relay.Config{Hooks: metrics.Hooks()})
	if err != nil {
		log.Fatal(err)
	}
	if err := r.Run(ctx); err != nil { // returns after SIGTERM, leases handed over
		log.Fatal(err)
	}
}
