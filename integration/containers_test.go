//go:build integration

package integration

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	_ "github.com/jackc/pgx/v5/stdlib" // the postgres module's Snapshot/Restore use database/sql
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/network"
	"github.com/segmentio/kafka-go"
	"github.com/testcontainers/testcontainers-go"
	"github.com/testcontainers/testcontainers-go/modules/postgres"
	"github.com/testcontainers/testcontainers-go/wait"

	"github.com/sagabox/sagabox/migrations"
)

const (
	defaultPostgresImage = "postgres:16-alpine"
	defaultKafkaImage    = "apache/kafka:3.9.1"
	itLabel              = "sagabox-it"
	schema               = migrations.DefaultSchema
)

func postgresImage() string { return envOr("SAGABOX_IT_POSTGRES_IMAGE", defaultPostgresImage) }
func kafkaImage() string    { return envOr("SAGABOX_IT_KAFKA_IMAGE", defaultKafkaImage) }

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// freePort returns a host port that was free a moment ago. Containers publish their port
// 1:1 on it so a stopped and started container keeps its address, and so the broker can
// advertise the address clients dial.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("find a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func publish(containerPort string, hostPort int) testcontainers.CustomizeRequestOption {
	return testcontainers.WithHostConfigModifier(func(hc *container.HostConfig) {
		if hc.PortBindings == nil {
			hc.PortBindings = network.PortMap{}
		}
		hc.PortBindings[network.MustParsePort(containerPort)] = []network.PortBinding{
			{HostIP: netip.MustParseAddr("127.0.0.1"), HostPort: strconv.Itoa(hostPort)},
		}
	})
}

// PG is a PostgreSQL container with the sagabox schema migrated.
type PG struct {
	C    *postgres.PostgresContainer
	URL  string
	Pool *pgxpool.Pool
}

func startPostgres(t testing.TB) *PG {
	t.Helper()
	pg, err := runPostgres(t)
	if err != nil {
		t.Fatal(err)
	}
	return pg
}

// runPostgres is startPostgres for any goroutine: it reports errors instead of failing t.
func runPostgres(t testing.TB) (*PG, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	port := freePort(t)
	c, err := postgres.Run(ctx, postgresImage(),
		postgres.WithDatabase("sagabox"),
		postgres.WithUsername("sagabox"),
		postgres.WithPassword("sagabox"),
		postgres.BasicWaitStrategies(),
		postgres.WithSQLDriver("pgx"),
		publish("5432/tcp", port),
		// Fast shutdown on stop, as the official image's STOPSIGNAL does (docker import cannot set it).
		testcontainers.WithConfigModifier(func(c *container.Config) { c.StopSignal = "SIGINT" }),
		testcontainers.WithLabels(map[string]string{itLabel: "1"}),
	)
	testcontainers.CleanupContainer(t, c)
	if err != nil {
		return nil, fmt.Errorf("start PostgreSQL container from %s: %w (build it with scripts/build-images.sh, or set SAGABOX_IT_POSTGRES_IMAGE)", postgresImage(), err)
	}
	url, err := c.ConnectionString(ctx, "sslmode=disable")
	if err != nil {
		return nil, err
	}
	if err := migrations.Up(ctx, url, schema); err != nil {
		return nil, fmt.Errorf("migrate %s: %w", url, err)
	}
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, err
	}
	cfg.MaxConns = 8
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	t.Cleanup(pool.Close)
	return &PG{C: c, URL: url, Pool: pool}, nil
}

// startContainers starts a PostgreSQL and a broker container, in parallel.
func startContainers(t testing.TB) (*PG, *Broker) {
	t.Helper()
	type result struct {
		pg  *PG
		err error
	}
	pgc := make(chan result, 1)
	go func() {
		pg, err := runPostgres(t)
		pgc <- result{pg, err}
	}()
	received := false
	defer func() { // if startBroker fails t, the PostgreSQL start still ends before the test does
		if !received {
			<-pgc
		}
	}()
	b := startBroker(t)
	r := <-pgc
	received = true
	if r.err != nil {
		t.Fatal(r.err)
	}
	return r.pg, b
}

// Restart stops the container (PostgreSQL gets its stop signal, then SIGKILL after 2 s) and
// starts it again on the same port, returning once it accepts queries.
func (p *PG) Restart(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	grace := 2 * time.Second
	if err := p.C.Stop(ctx, &grace); err != nil {
		t.Fatalf("stop PostgreSQL: %v", err)
	}
	if err := p.C.Start(ctx); err != nil {
		t.Fatalf("start PostgreSQL again: %v", err)
	}
	waitFor(t, time.Minute, "PostgreSQL to accept queries after restart", func() error {
		conn, err := pgx.Connect(ctx, p.URL)
		if err != nil {
			return err
		}
		defer conn.Close(ctx)
		_, err = conn.Exec(ctx, "SELECT 1")
		return err
	})
}

// Broker is a Kafka-protocol broker container listening on one host port mapped 1:1.
type Broker struct {
	C    testcontainers.Container
	Addr string
}

func (b *Broker) Brokers() []string { return []string{b.Addr} }

func startBroker(t testing.TB) *Broker {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	port := freePort(t)
	portSpec := fmt.Sprintf("%d/tcp", port)
	img := kafkaImage()
	opts := []testcontainers.ContainerCustomizer{
		testcontainers.WithExposedPorts(portSpec),
		publish(portSpec, port),
		testcontainers.WithLabels(map[string]string{itLabel: "1"}),
	}
	if strings.Contains(img, "kafkabroker") {
		// cmd/kafkabroker keeps its log in /data, which lives in the container's own layer and
		// so survives a stop and start of the container.
		opts = append(opts,
			testcontainers.WithCmd("-listen", "0.0.0.0", "-advertise", "127.0.0.1",
				"-ports", strconv.Itoa(port), "-data-dir", "/data", "-partitions", "6",
				"-group-min-session-timeout", "100ms"),
			testcontainers.WithWaitStrategy(wait.ForLog("kafkabroker ready").WithStartupTimeout(time.Minute)),
		)
	} else {
		// The official apache/kafka image in KRaft combined mode, advertising the host port.
		opts = append(opts,
			testcontainers.WithEnv(map[string]string{
				"KAFKA_NODE_ID":                                  "1",
				"KAFKA_PROCESS_ROLES":                            "broker,controller",
				"KAFKA_LISTENERS":                                fmt.Sprintf("PLAINTEXT://:%d,CONTROLLER://:9093", port),
				"KAFKA_ADVERTISED_LISTENERS":                     fmt.Sprintf("PLAINTEXT://127.0.0.1:%d", port),
				"KAFKA_CONTROLLER_LISTENER_NAMES":                "CONTROLLER",
				"KAFKA_LISTENER_SECURITY_PROTOCOL_MAP":           "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
				"KAFKA_CONTROLLER_QUORUM_VOTERS":                 "1@localhost:9093",
				"KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR":         "1",
				"KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
				"KAFKA_TRANSACTION_STATE_LOG_MIN_ISR":            "1",
				"KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS":         "0",
				"KAFKA_NUM_PARTITIONS":                           "6",
			}),
			testcontainers.WithWaitStrategy(wait.ForLog("Kafka Server started").WithStartupTimeout(2*time.Minute)),
		)
	}
	c, err := testcontainers.Run(ctx, img, opts...)
	testcontainers.CleanupContainer(t, c)
	if err != nil {
		t.Fatalf("start broker container from %s: %v (build it with scripts/build-images.sh, or set SAGABOX_IT_KAFKA_IMAGE)", img, err)
	}
	b := &Broker{C: c, Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port))}
	b.waitReady(t)
	return b
}

func (b *Broker) waitReady(t testing.TB) {
	t.Helper()
	waitFor(t, time.Minute, "the broker to answer metadata requests", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err := (&kafka.Client{Addr: kafka.TCP(b.Addr)}).Metadata(ctx, &kafka.MetadataRequest{})
		return err
	})
}

// Stop stops the broker container; its log stays in the container for Start.
func (b *Broker) Stop(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	grace := 5 * time.Second
	if err := b.C.Stop(ctx, &grace); err != nil {
		t.Fatalf("stop broker: %v", err)
	}
}

// Start starts a stopped broker container again and waits until it answers.
func (b *Broker) Start(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := b.C.Start(ctx); err != nil {
		t.Fatalf("start broker again: %v", err)
	}
	b.waitReady(t)
}

// CreateTopic creates topic with the given partitions (replication factor 1).
func (b *Broker) CreateTopic(t testing.TB, topic string, partitions int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := (&kafka.Client{Addr: kafka.TCP(b.Addr)}).CreateTopics(ctx, &kafka.CreateTopicsRequest{
		Topics: []kafka.TopicConfig{{Topic: topic, NumPartitions: partitions, ReplicationFactor: 1}},
	})
	if err == nil {
		err = resp.Errors[topic]
	}
	if err != nil {
		t.Fatalf("create topic %s: %v", topic, err)
	}
}

// waitFor polls cond until it returns nil or timeout passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var err error
	for {
		if err = cond(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s: %v", timeout, what, err)
		}
		<-tick.C
	}
}
