//go:build integration

package integration

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagabox/sagabox/relay"
	"github.com/sagabox/sagabox/relay/kafkapub"
)

// childEnv, when set, makes the test binary run as a helper process instead of the tests:
// the suite re-executes itself so a fault can SIGKILL a real relay process.
const childEnv = "SAGABOX_IT_CHILD"

// Relay timings for the suite: a killed relay's shards move within LeaseTTL plus one
// heartbeat (≈7 s) instead of the default ≈12 s, which keeps the suite short.
const (
	childLeaseTTL  = 6 * time.Second
	childHeartbeat = time.Second
	childPublish   = 4 * time.Second
)

// runChild runs the helper named by childEnv until SIGTERM and returns the exit code.
func runChild(role string) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	var err error
	switch role {
	case "relay":
		err = runRelay(ctx, log)
	default:
		err = fmt.Errorf("unknown %s=%q", childEnv, role)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s child: %v\n", role, err)
		return 1
	}
	return 0
}

// runRelay is what cmd/outbox-relay does, with the suite's shorter lease timings.
func runRelay(ctx context.Context, log *slog.Logger) error {
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		return err
	}
	defer pool.Close()
	pub, err := kafkapub.New(kafkapub.Config{Brokers: strings.Split(os.Getenv("KAFKA_BROKERS"), ","), Logger: log})
	if err != nil {
		return err
	}
	defer pub.Close()
	r, err := relay.New(pool, pub, relay.Config{
		LeaseTTL: childLeaseTTL, HeartbeatInterval: childHeartbeat, PublishTimeout: childPublish,
		PollInterval: 200 * time.Millisecond, ErrorBackoffMax: 2 * time.Second, Logger: log,
	})
	if err != nil {
		return err
	}
	return r.Run(ctx)
}
