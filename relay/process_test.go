package relay_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagabox/sagabox/internal/kafkatest"
	"github.com/sagabox/sagabox/relay"
	"github.com/sagabox/sagabox/relay/kafkapub"
)

// childEnv makes the test binary run as a relay process (see TestMain), so the
// kill -9 test needs no separate build.
const childEnv = "SAGABOX_RELAY_TEST_CHILD"

// childLeaseTTL is the processes' lease TTL; the takeover bound is this plus one heartbeat.
const (
	childLeaseTTL  = 2 * time.Second
	childHeartbeat = 200 * time.Millisecond
)

func runChild() int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	cfg := fastConfig()
	cfg.ID = os.Getenv("RELAY_ID")
	cfg.BatchSize = 20
	cfg.LeaseTTL, cfg.HeartbeatInterval = childLeaseTTL, childHeartbeat
	return runRelayProcess(ctx, cfg, nil)
}

// runRelayProcess runs a relay with cfg on DATABASE_URL (its pool sized as
// outbox-relay sizes it, unless the URL says) and KAFKA_BROKERS until
// ctx ends, and returns the process's exit code. wrap, if not nil, wraps the
// kafkapub publisher.
func runRelayProcess(ctx context.Context, cfg relay.Config, wrap func(relay.Publisher) relay.Publisher) int {
	url := os.Getenv("DATABASE_URL")
	poolCfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if !strings.Contains(url, "pool_max_conns") { // as outbox-relay sizes its pool
		poolCfg.MaxConns = max(poolCfg.MaxConns, cfg.PoolConns())
	}
	pool, err := pgxpool.NewWithConfig(ctx, poolCfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer pool.Close()
	pub, err := kafkapub.New(kafkapub.Config{Brokers: strings.Split(os.Getenv("KAFKA_BROKERS"), ",")})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer pub.Close()
	var p relay.Publisher = pub
	if wrap != nil {
		p = wrap(pub)
	}
	r, err := relay.New(pool, p, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := r.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

func startChild(t *testing.T, e *env, id string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"=1", "DATABASE_URL="+e.db.URL,
		"KAFKA_BROKERS="+strings.Join(e.kafka.Brokers, ","), "RELAY_ID="+id)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return cmd
}

// TestKilledRelayProcess runs two relay processes, kills one with SIGKILL while
// producers write, and measures how long the survivor takes to own every shard.
func TestKilledRelayProcess(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := setup(t, 4)
	a := startChild(t, e, "relay-a")
	startChild(t, e, "relay-b")
	owned := func(id string) int {
		var n int
		if err := e.db.Pool.QueryRow(ctx, `SELECT count(*) FROM "sagabox"."outbox_leases" WHERE "owner" = $1 AND "expires_at" > now()`, id).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	waitFor(t, 30*time.Second, "two processes to share the shards", func() bool {
		return owned("relay-a") == relay.Shards/2 && owned("relay-b") == relay.Shards/2
	})

	var perKey map[string]int
	done := make(chan struct{})
	go func() { defer close(done); perKey = produceOrdered(t, e, 30, 6, 150, nil) }()
	waitFor(t, 30*time.Second, "some messages published", func() bool { return countRows(t, e.db.Pool, "true") < 400 })
	if err := a.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	bound := childLeaseTTL + 2*childHeartbeat + time.Second // TTL + heartbeat, plus slack for a loaded machine
	waitFor(t, bound, "the survivor to take every shard over", func() bool { return owned("relay-b") == relay.Shards })
	t.Logf("takeover after kill -9: %v (lease TTL %v, heartbeat %v)", time.Since(killed).Round(time.Millisecond), childLeaseTTL, childHeartbeat)
	<-done
	if t.Failed() {
		return
	}
	checkOrder(t, kafkatest.ReadTopic(t, e.kafka.Brokers, e.topic, 900, 60*time.Second), perKey, true)
	waitFor(t, 10*time.Second, "the outbox to drain", func() bool { return countRows(t, e.db.Pool, "true") == 0 })
}
