package consumer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/sagabox/sagabox/inbox"
	"github.com/sagabox/sagabox/migrations"
)

// Config configures a Consumer.
type Config struct {
	// Brokers are the Kafka bootstrap addresses (host:port). Required.
	Brokers []string
	// GroupID is the Kafka consumer group. Required.
	GroupID string
	// Topics are the topics to consume. Required.
	Topics []string
	// Name scopes the inbox rows and dead letters of this consumer. Two consumers with
	// the same Name share dedup: a message handled by one is skipped by the other.
	// Defaults to GroupID.
	Name string
	// Schema holds the inbox tables. Defaults to "sagabox".
	Schema string

	// Retention is the dedup window of this consumer's inbox rows: Run deletes rows of
	// its Name older than that, every minute (a redelivery arriving later than Retention
	// after the first delivery is processed again; see package inbox). Negative turns the
	// sweep (and that of resolved dead letters) off, for when an inbox.Sweeper runs
	// elsewhere. Defaults to 7 days.
	Retention time.Duration

	// DeadLetterRetention is how long this consumer's dead letters are kept once
	// resolved (replayed or deleted); Run sweeps them with its inbox rows. Unresolved
	// dead letters are never swept. Negative keeps them forever. Defaults to 30 days.
	DeadLetterRetention time.Duration

	// Concurrency is the number of workers; each partition is handled by one of them,
	// in order. It must not exceed the pool's MaxConns. Defaults to 8, or the pool's
	// MaxConns if that is smaller.
	Concurrency int
	// BatchSize is the most records, already queued for one worker, handled in one
	// transaction. 1 disables batching. Defaults to 32.
	BatchSize int
	// BatchWait is how long a worker whose batch is not full waits for one more
	// record before it starts the transaction; each record that comes meanwhile
	// extends the wait by BatchWait again, up to 5×BatchWait in all. The records of
	// one relay publish reach the workers spread over many partitions' fetches,
	// within a fraction of a millisecond: without the wait, the first of them
	// started a transaction of its own and the rest another (package doc, Batching,
	// has the figures). A lone record waits BatchWait once. Negative turns the wait
	// off. Defaults to 200µs.
	BatchWait time.Duration
	// LockKey names, for a record, the rows its handler locks (an account id, a SKU),
	// to order the records of a shared transaction: they are handled sorted by it, so
	// the transactions of all workers take those rows' locks in one global order and
	// cannot deadlock on them. Records of one Kafka key in one partition stay in offset
	// order: they are sorted together, by the LockKey of the first of them. Defaults
	// to the record's Kafka key.
	LockKey func(Message) []byte
	// QueueCapacity is the number of fetched records buffered per worker. Defaults to 256.
	QueueCapacity int

	// MaxAttempts is how many times a failing handler runs on one record before the
	// record is dead-lettered. Defaults to 10.
	MaxAttempts int
	// MinBackoff is the wait before the second attempt; it doubles per attempt, with
	// jitter. Defaults to 100ms.
	MinBackoff time.Duration
	// MaxBackoff caps the wait between attempts. Defaults to 10s.
	MaxBackoff time.Duration

	// CommitInterval is how often offsets of handled records are committed to Kafka.
	// A crash loses at most this much offset progress, which the inbox turns into
	// skipped redeliveries. Defaults to 500ms.
	CommitInterval time.Duration
	// CommitTimeout bounds each offset commit. Defaults to 10s.
	CommitTimeout time.Duration
	// ShutdownTimeout is how long Run, once its context ended, lets the records in
	// flight finish before canceling their handlers' context (they are then rolled back
	// and come again after a restart). Defaults to 10s.
	ShutdownTimeout time.Duration

	// SessionTimeout is the consumer-group session timeout. Defaults to 10s.
	SessionTimeout time.Duration
	// HeartbeatInterval is the group heartbeat period; below SessionTimeout. Defaults to 3s.
	HeartbeatInterval time.Duration
	// RebalanceTimeout is how long the group waits for members to rejoin. Defaults to 30s.
	RebalanceTimeout time.Duration
	// JoinGroupBackoff is the wait before rejoining after a group error. Defaults to 5s.
	JoinGroupBackoff time.Duration
	// MaxWait is how long a fetch waits for new records; records that arrive meanwhile
	// are returned at once, so it adds no latency. kafka-go asks the broker to answer an
	// empty fetch after 3/4 of MaxWait and drops the connection (an i/o timeout, then a
	// redial) when the answer comes later than MaxWait: values below ~200ms see that
	// often on a loaded machine. Defaults to 500ms.
	MaxWait time.Duration
	// StartAtLatest makes a group with no committed offset start at the newest record.
	// Defaults to false: it starts at the earliest, so nothing produced before the
	// consumer first ran is missed.
	StartAtLatest bool
	// Dialer connects to the brokers; set its TLS and SASLMechanism fields for secured
	// clusters. Defaults to kafka-go's default dialer (plaintext).
	Dialer *kafka.Dialer

	// Hooks observe handled, retried and dead-lettered records, e.g. for metrics.
	// Defaults to none.
	Hooks Hooks

	// Logger receives retries, dead letters and Kafka errors (kafka-go's own messages at
	// debug level). Defaults to discarding.
	Logger *slog.Logger
}

func (c *Config) applyDefaults(poolMaxConns int) {
	if c.Name == "" {
		c.Name = c.GroupID
	}
	if c.Schema == "" {
		c.Schema = migrations.DefaultSchema
	}
	if c.Concurrency == 0 {
		c.Concurrency = 8
		if poolMaxConns > 0 && poolMaxConns < c.Concurrency {
			c.Concurrency = poolMaxConns
		}
	}
	setDefault(&c.Retention, inbox.DefaultRetention)
	setDefault(&c.DeadLetterRetention, inbox.DefaultDeadLetterRetention)
	setDefault(&c.BatchSize, 32)
	setDefault(&c.QueueCapacity, 256)
	setDefault(&c.BatchWait, BatchWaitDefault)
	setDefault(&c.MaxAttempts, 10)
	setDefault(&c.MinBackoff, 100*time.Millisecond)
	setDefault(&c.MaxBackoff, 10*time.Second)
	setDefault(&c.CommitInterval, 500*time.Millisecond)
	setDefault(&c.CommitTimeout, 10*time.Second)
	setDefault(&c.ShutdownTimeout, 10*time.Second)
	setDefault(&c.SessionTimeout, 10*time.Second)
	setDefault(&c.HeartbeatInterval, 3*time.Second)
	setDefault(&c.RebalanceTimeout, 30*time.Second)
	setDefault(&c.JoinGroupBackoff, 5*time.Second)
	setDefault(&c.MaxWait, 500*time.Millisecond)
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
}

// BatchWaitDefault is Config.BatchWait's default.
const BatchWaitDefault = 200 * time.Microsecond

func setDefault[T int | time.Duration](p *T, v T) {
	if *p == 0 {
		*p = v
	}
}

func (c *Config) validate(poolMaxConns int) error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if len(c.Brokers) == 0 {
		add("Brokers is empty; give the Kafka bootstrap addresses (host:port)")
	}
	for i, b := range c.Brokers {
		if b == "" {
			add("Brokers[%d] is empty", i)
		}
	}
	if c.GroupID == "" {
		add("GroupID is empty; name the consumer group (e.g. the service name)")
	}
	if len(c.Topics) == 0 {
		add("Topics is empty; name at least one topic to consume")
	}
	for i, t := range c.Topics {
		if t == "" {
			add("Topics[%d] is empty", i)
		}
	}
	if err := migrations.ValidateSchema(c.Schema); err != nil {
		add("Schema: %w", err)
	}
	for _, f := range []struct {
		name string
		v    int
	}{{"Concurrency", c.Concurrency}, {"BatchSize", c.BatchSize}, {"QueueCapacity", c.QueueCapacity}, {"MaxAttempts", c.MaxAttempts}} {
		if f.v < 0 {
			add("%s is %d; it must be positive (0 means the default)", f.name, f.v)
		}
	}
	for _, f := range []struct {
		name string
		v    time.Duration
	}{
		{"MinBackoff", c.MinBackoff}, {"MaxBackoff", c.MaxBackoff}, {"CommitInterval", c.CommitInterval},
		{"CommitTimeout", c.CommitTimeout}, {"ShutdownTimeout", c.ShutdownTimeout}, {"SessionTimeout", c.SessionTimeout}, {"HeartbeatInterval", c.HeartbeatInterval},
		{"RebalanceTimeout", c.RebalanceTimeout}, {"JoinGroupBackoff", c.JoinGroupBackoff}, {"MaxWait", c.MaxWait},
	} {
		if f.v < 0 {
			add("%s is %s; it must be positive (0 means the default)", f.name, f.v)
		}
	}
	if poolMaxConns > 0 && c.Concurrency > poolMaxConns {
		add("Concurrency %d exceeds the pool's MaxConns %d; workers would wait for connections (raise pool_max_conns or lower Concurrency)", c.Concurrency, poolMaxConns)
	}
	if c.MinBackoff > c.MaxBackoff {
		add("MinBackoff %s is above MaxBackoff %s", c.MinBackoff, c.MaxBackoff)
	}
	if c.HeartbeatInterval >= c.SessionTimeout {
		add("HeartbeatInterval %s must be below SessionTimeout %s, or the group evicts a healthy consumer", c.HeartbeatInterval, c.SessionTimeout)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("consumer: %w: %w", ErrInvalidConfig, err)
	}
	return nil
}

// Hooks observe a consumer, e.g. to count records for metrics (a Prometheus adapter
// needs nothing else). Each is optional, runs on the worker that handled the record,
// and must return quickly: the partition waits for it.
type Hooks struct {
	// Handled is called for every record whose transaction committed; duplicate tells a
	// record the inbox skipped without running the handler (a redelivery).
	Handled func(msg Message, duplicate bool)
	// HandlerDone is called after every run of the handler with its duration and
	// error; a record's handler may run more than once (retries, a batch redone
	// record by record), and a nil error here is not yet a commit (see Handled).
	HandlerDone func(msg Message, d time.Duration, err error)
	// Retry is called when a handler failed with an error that is not transient and
	// the record will be tried again after a backoff; attempt counts from 1 up to
	// MaxAttempts-1.
	Retry func(msg Message, attempt int, err error)
	// LocalRetry is called each time a transaction is run again because of a database
	// error that spends no attempt: a transient error (IsTransient: deadlock,
	// serialization failure, lock timeout, lost connection) from the handler or
	// around it, or any error of the inbox statements, begin or commit. topic and
	// partition are those of the (first) record of the transaction.
	LocalRetry func(topic string, partition int, err error)
	// DeadLettered is called after a record was stored as a dead letter.
	DeadLettered func(d inbox.DeadLetter)
	// Lag is called after records of a partition were handled or dead-lettered, with
	// how many records the partition had after the newest of them when it was fetched
	// (its high-water mark - offset - 1): the consumer lag of that partition, as of
	// that fetch. It is not called for an idle partition, whose lag stays what it was.
	Lag func(topic string, partition int, lag int64)
	// Trace wraps every run of the handler, for tracing (package sagaotel): the handler
	// gets the context it returns, and end, if not nil, is called with the handler's
	// error. A trace context travels in msg.Headers ("traceparent"). A BatchHandler
	// gets it per record by calling the package's Trace function.
	Trace func(ctx context.Context, msg Message) (_ context.Context, end func(err error))
}
