package testenv

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/segmentio/kafka-go"

	"github.com/sagabox/sagabox/internal/embedkafka"
	"github.com/sagabox/sagabox/internal/embedpg"
	"github.com/sagabox/sagabox/migrations"
)

// Schema is the schema the test databases are migrated into.
const Schema = migrations.DefaultSchema

var (
	pgOnce     sync.Once
	pgErr      error
	pgServer   *embedpg.Cluster
	serverURL  string // a URL of the server's maintenance database
	templateDB string
	dbCounter  atomic.Int64
	runID      = fmt.Sprintf("%d_%04d", os.Getpid(), rand.IntN(10000))
)

// Run runs the tests and stops the servers this package started.
// Use it as: func TestMain(m *testing.M) { os.Exit(testenv.Run(m)) }
func Run(m *testing.M) int {
	code := m.Run()
	shutdown()
	return code
}

func shutdown() {
	if serverURL != "" && templateDB != "" && pgServer == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if conn, err := pgx.Connect(ctx, serverURL); err == nil {
			_, _ = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{templateDB}.Sanitize()+" WITH (FORCE)")
			conn.Close(ctx)
		}
	}
	if pgServer != nil {
		_ = pgServer.Close()
	}
}

func startPostgres() {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if u := os.Getenv("SAGABOX_TEST_DATABASE_URL"); u != "" {
		serverURL = u
	} else {
		pgServer, pgErr = embedpg.Start(ctx)
		if pgErr != nil {
			return
		}
		serverURL = pgServer.URL("postgres")
	}
	templateDB = "sagabox_tmpl_" + runID
	conn, err := pgx.Connect(ctx, serverURL)
	if err != nil {
		pgErr = fmt.Errorf("testenv: connect to %s: %w", redact(serverURL), err)
		return
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{templateDB}.Sanitize()); err != nil {
		pgErr = fmt.Errorf("testenv: create template database: %w", err)
		return
	}
	if err := migrations.Up(ctx, withDatabase(serverURL, templateDB), Schema); err != nil {
		pgErr = fmt.Errorf("testenv: migrate template database: %w", err)
	}
}

// ServerURL returns a URL of the test PostgreSQL server's maintenance database,
// starting the server if needed.
func ServerURL(t testing.TB) string {
	t.Helper()
	pgOnce.Do(startPostgres)
	if pgErr != nil {
		t.Fatal(pgErr)
	}
	return serverURL
}

// DB is a database of one test's own.
type DB struct {
	Name string
	URL  string
	Pool *pgxpool.Pool
}

// NewDB creates a migrated database for t, with a pool, both gone when t ends.
func NewDB(t testing.TB) *DB {
	t.Helper()
	return withPool(t, newEmptyDB(t, templateName(t)))
}

// withPool opens db's pool, closed when t ends.
func withPool(t testing.TB, db *DB) *DB {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), db.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	db.Pool = pool
	return db
}

// NewEmptyDB creates an unmigrated database for t (no pool), dropped when t ends.
func NewEmptyDB(t testing.TB) *DB {
	t.Helper()
	ServerURL(t)
	return newEmptyDB(t, "template0")
}

// NewSchemaDB creates a database for t migrated into schema instead of the
// default one, with a pool, both gone when t ends.
func NewSchemaDB(t testing.TB, schema string) *DB {
	t.Helper()
	db := NewEmptyDB(t)
	if err := migrations.Up(context.Background(), db.URL, schema); err != nil {
		t.Fatal(err)
	}
	return withPool(t, db)
}

func templateName(t testing.TB) string {
	ServerURL(t)
	return templateDB
}

func newEmptyDB(t testing.TB, template string) *DB {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	name := fmt.Sprintf("sagabox_t_%s_%d", runID, dbCounter.Add(1))
	conn, err := pgx.Connect(ctx, serverURL)
	if err != nil {
		t.Fatalf("testenv: connect: %v", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()+" TEMPLATE "+pgx.Identifier{template}.Sanitize()); err != nil {
		t.Fatalf("testenv: create database: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, serverURL)
		if err != nil {
			return // the server is gone; nothing to drop
		}
		defer conn.Close(ctx)
		_, _ = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
	})
	return &DB{Name: name, URL: withDatabase(serverURL, name)}
}

func withDatabase(rawURL, db string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		panic(fmt.Sprintf("testenv: database URL must be a URL (postgres://...): %v", err))
	}
	u.Path = "/" + db
	if mode := os.Getenv("SAGABOX_TEST_QUERY_EXEC_MODE"); mode != "" {
		setQueryExecMode(u, mode)
	}
	return u.String()
}

// InQueryExecMode returns db with a pool of its own whose queries run in pgx's query
// exec mode mode (default_query_exec_mode), closed when t ends.
func (db *DB) InQueryExecMode(t testing.TB, mode string) *DB {
	t.Helper()
	u, err := url.Parse(db.URL)
	if err != nil {
		t.Fatal(err)
	}
	setQueryExecMode(u, mode)
	return withPool(t, &DB{Name: db.Name, URL: u.String()})
}

func setQueryExecMode(u *url.URL, mode string) {
	q := u.Query()
	q.Set("default_query_exec_mode", mode)
	u.RawQuery = q.Encode()
}

func redact(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}

// Kafka is a Kafka-protocol cluster for one test.
type Kafka struct {
	Brokers []string
	// Cluster is the in-process cluster, nil when SAGABOX_TEST_KAFKA_BROKERS is set.
	Cluster *embedkafka.Cluster
}

// NewKafka returns the configured cluster, or starts an in-process one closed when t ends.
func NewKafka(t testing.TB) *Kafka {
	t.Helper()
	if b := os.Getenv("SAGABOX_TEST_KAFKA_BROKERS"); b != "" {
		return &Kafka{Brokers: strings.Split(b, ",")}
	}
	c, err := embedkafka.Start(embedkafka.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return &Kafka{Brokers: c.Addrs(), Cluster: c}
}

var topicCounter atomic.Int64

// Topic returns a topic name unique to this test run, starting with prefix.
func Topic(prefix string) string {
	return fmt.Sprintf("%s.%s.%d", prefix, runID, topicCounter.Add(1))
}

// CreateTopic creates topic with the given partition count (replication factor 1).
func (k *Kafka) CreateTopic(t testing.TB, topic string, partitions int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tr := &kafka.Transport{}
	defer tr.CloseIdleConnections() // or its connection pool outlives the call (goleak)
	client := &kafka.Client{Addr: kafka.TCP(k.Brokers...), Transport: tr}
	resp, err := client.CreateTopics(ctx, &kafka.CreateTopicsRequest{
		Topics: []kafka.TopicConfig{{Topic: topic, NumPartitions: partitions, ReplicationFactor: 1}},
	})
	if err != nil {
		t.Fatalf("testenv: create topic %s: %v", topic, err)
	}
	if err := resp.Errors[topic]; err != nil {
		t.Fatalf("testenv: create topic %s: %v", topic, err)
	}
}

// SyncBuffer collects output (a test's logs) written from several goroutines.
type SyncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns what was written so far.
func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
