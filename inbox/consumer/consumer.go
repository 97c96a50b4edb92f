package consumer

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/segmentio/kafka-go"

	"github.com/sagabox/sagabox/inbox"
)

// Errors of this package.
var (
	// ErrInvalidConfig means New rejected the Config; the error lists every problem.
	ErrInvalidConfig = errors.New("invalid consumer config")
	// ErrMalformed means a record has no valid message-id header; it is dead-lettered
	// because it can neither be deduplicated nor fixed by retrying.
	ErrMalformed = errors.New("malformed record")
	// ErrAlreadyRunning means Run was called while the same Consumer was already running
	// (the one name every package with a Run uses).
	ErrAlreadyRunning = errors.New("consumer already running")
	// ErrRunning is the former name of ErrAlreadyRunning.
	//
	// Deprecated: use ErrAlreadyRunning; this is the same error.
	ErrRunning = ErrAlreadyRunning
	// ErrHandlerPanic is the reason recorded for a record whose handler panicked; the
	// panic value and the stack follow it. Such a record is dead-lettered at once.
	ErrHandlerPanic = errors.New("handler panicked")
	// ErrGaveUp is the reason recorded for a record still failing after MaxAttempts;
	// the handler's last error is wrapped next to it.
	ErrGaveUp = errors.New("gave up after max attempts")
)

// Message is one Kafka record as handed to a Handler.
type Message struct {
	// ID is the outbox message id from the "message-id" header (outbox.HeaderMessageID).
	ID        uuid.UUID
	Topic     string
	Partition int
	Offset    int64
	Key       []byte
	Value     []byte
	// Headers are the record's headers (for a repeated name, the last value).
	Headers map[string]string
	Time    time.Time
}

// Handler handles one message inside the inbox transaction: its writes commit together
// with the inbox row, or not at all. It must not commit or roll back tx. Return an
// error to retry the message later, or Permanent(err) to dead-letter it now.
//
// A handler's writes take effect once, but the handler itself may run more than once
// for a message whose transaction rolled back (a retry, a batch redone one record at a
// time, a shutdown), so effects outside tx must be idempotent. Several messages may
// share one transaction (BatchSize): leave no session or transaction state behind
// (SET LOCAL, open cursors). Handlers of different partitions run concurrently.
type Handler func(ctx context.Context, tx pgx.Tx, msg Message) error

type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// Permanent marks err as one retrying cannot fix (an unknown message type, a payload
// that does not decode): the message is dead-lettered at once with err as the reason.
// Permanent(nil) is nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err}
}

// IsPermanent reports whether err, or an error it wraps, was marked by Permanent.
func IsPermanent(err error) bool {
	var p *permanentError
	return errors.As(err, &p)
}

// Consumer consumes records through the inbox. Create it with New and start it with Run.
type Consumer struct {
	pool    *pgxpool.Pool
	cfg     Config
	handler Handler
	batch   BatchHandler // nil unless made by NewBatch
	// prefetch queues a handler's first reads with BEGIN (Prefetch); nil for none.
	prefetch func(msgs []Message, b *pgx.Batch) any
	store    *inbox.Store
	sweeper  *inbox.Sweeper // nil when Retention < 0
	running  atomic.Bool

	// crashAfterDBCommit, set by tests, simulates a process killed after the database
	// commit and before the offset commit of msg: when it returns true, Run stops at
	// once without marking or committing anything more.
	crashAfterDBCommit func(Message) bool
}

// New returns a Consumer of cfg.Topics that hands each record to h. The pool's
// database must have the sagabox migrations applied in cfg.Schema.
func New(pool *pgxpool.Pool, cfg Config, h Handler) (*Consumer, error) {
	if pool == nil {
		return nil, fmt.Errorf("consumer: %w: pool is nil", ErrInvalidConfig)
	}
	if h == nil {
		return nil, fmt.Errorf("consumer: %w: handler is nil", ErrInvalidConfig)
	}
	maxConns := int(pool.Config().MaxConns)
	cfg.applyDefaults(maxConns)
	if err := cfg.validate(maxConns); err != nil {
		return nil, err
	}
	store, err := inbox.NewStore(cfg.Schema)
	if err != nil {
		return nil, err
	}
	cfg.Brokers = append([]string(nil), cfg.Brokers...)
	cfg.Topics = append([]string(nil), cfg.Topics...)
	c := &Consumer{pool: pool, cfg: cfg, handler: h, store: store}
	if cfg.Retention > 0 {
		c.sweeper, err = inbox.NewSweeper(pool, inbox.SweeperConfig{Schema: cfg.Schema, Consumer: cfg.Name,
			Retention: cfg.Retention, DeadLetterRetention: cfg.DeadLetterRetention, Interval: min(time.Minute, cfg.Retention), Logger: cfg.Logger})
		if err != nil {
			return nil, fmt.Errorf("consumer: %w: %w", ErrInvalidConfig, err)
		}
	}
	return c, nil
}

// BatchHandler handles the new records of one shared transaction (BatchSize) at once,
// in the order a Handler would see them, so it can read and write for all of them in a
// few statements. Its writes commit with the records' inbox rows, or not at all. When it
// fails, the records are tried again one at a time (each as a batch of one), so a
// failure counts against the record that causes it, as for a Handler.
type BatchHandler func(ctx context.Context, tx pgx.Tx, msgs []Message) error

// NewBatch is New for a BatchHandler.
func NewBatch(pool *pgxpool.Pool, cfg Config, h BatchHandler) (*Consumer, error) {
	if h == nil {
		return nil, fmt.Errorf("consumer: %w: handler is nil", ErrInvalidConfig)
	}
	c, err := New(pool, cfg, func(ctx context.Context, tx pgx.Tx, m Message) error { return h(ctx, tx, []Message{m}) })
	if err != nil {
		return nil, err
	}
	c.batch = h
	return c, nil
}

// Config returns the configuration with defaults applied.
func (c *Consumer) Config() Config { return c.cfg }

// run is the state of one Run call.
type run struct {
	c       *Consumer
	stop    context.Context // ends when Run's ctx ends (or on a crash): stop fetching and retrying
	halt    context.CancelFunc
	ctx     context.Context // handlers' context: ends ShutdownTimeout after stop, or on a crash
	cancel  context.CancelFunc
	done    chan kafka.Message // handled records, in order per partition
	crashed atomic.Bool
}

// Run consumes until ctx ends. Then it stops fetching, lets the records in flight
// finish (for at most ShutdownTimeout; after that their handlers' context is canceled
// and they roll back), abandons records fetched but not started, commits the offsets
// of everything handled, closes the Kafka reader and returns nil. Abandoned records
// come again after a restart. Run returns an error only if the consumer cannot run
// at all; it may be called again after it returned.
func (c *Consumer) Run(ctx context.Context) error {
	if !c.running.CompareAndSwap(false, true) {
		return fmt.Errorf("consumer %q: %w", c.cfg.Name, ErrAlreadyRunning)
	}
	defer c.running.Store(false)

	reader := kafka.NewReader(c.readerConfig())
	r := &run{c: c, done: make(chan kafka.Message, c.cfg.Concurrency*c.cfg.BatchSize)}
	r.stop, r.halt = context.WithCancel(ctx)
	defer r.halt()
	r.ctx, r.cancel = context.WithCancel(context.WithoutCancel(ctx))
	defer r.cancel()

	committed := make(chan struct{})
	go func() {
		defer close(committed)
		r.commitLoop(reader)
	}()

	swept := make(chan struct{})
	go func() {
		defer close(swept)
		if c.sweeper != nil {
			_ = c.sweeper.Run(r.stop) // logs its own failures; returns nil when stopped
		}
	}()

	queues := make([]chan kafka.Message, c.cfg.Concurrency)
	var workers sync.WaitGroup
	for i := range queues {
		queues[i] = make(chan kafka.Message, c.cfg.QueueCapacity)
		workers.Add(1)
		go func() {
			defer workers.Done()
			r.work(queues[i])
		}()
	}

	r.fetchLoop(reader, queues)

	// Let the records in flight finish, within ShutdownTimeout; queued ones are
	// abandoned and come again after the restart.
	deadline := time.AfterFunc(c.cfg.ShutdownTimeout, r.cancel)
	for _, q := range queues {
		close(q)
	}
	workers.Wait()
	deadline.Stop()
	close(r.done)
	<-committed
	<-swept
	// Only now: closing the reader while a commit is in flight can hang kafka-go.
	if err := reader.Close(); err != nil {
		c.cfg.Logger.Warn("consumer: close kafka reader", "consumer", c.cfg.Name, "err", err)
	}
	return nil
}

func (c *Consumer) readerConfig() kafka.ReaderConfig {
	start := kafka.FirstOffset
	if c.cfg.StartAtLatest {
		start = kafka.LastOffset
	}
	return kafka.ReaderConfig{
		Brokers:           c.cfg.Brokers,
		GroupID:           c.cfg.GroupID,
		GroupTopics:       c.cfg.Topics,
		Dialer:            c.cfg.Dialer,
		MaxWait:           c.cfg.MaxWait,
		SessionTimeout:    c.cfg.SessionTimeout,
		HeartbeatInterval: c.cfg.HeartbeatInterval,
		RebalanceTimeout:  c.cfg.RebalanceTimeout,
		JoinGroupBackoff:  c.cfg.JoinGroupBackoff,
		StartOffset:       start,
		QueueCapacity:     c.cfg.QueueCapacity,
		// kafka-go waits ReadBackoffMin·n² (capped at ReadBackoffMax) before it redials a
		// partition whose fetch failed, e.g. with an i/o timeout when the broker's empty
		// answer came later than MaxWait on a loaded machine. Its 100ms default put that
		// much latency on every record of the partition each time; 10ms keeps the backoff
		// (10, 40, 90ms … up to its 1s default) for a broker that is really gone.
		ReadBackoffMin: 10 * time.Millisecond,
		// Commits are synchronous calls from our own commit loop, batched there.
		CommitInterval: 0,
		Logger:         c.kafkaLogger(slog.LevelDebug),
		ErrorLogger:    c.kafkaLogger(slog.LevelWarn),
	}
}

// kafkaLogger forwards kafka-go's messages at level, or returns nil when the logger
// would drop them: kafka-go logs per fetch, and formatting costs.
func (c *Consumer) kafkaLogger(level slog.Level) kafka.Logger {
	logger := c.cfg.Logger
	if !logger.Enabled(context.Background(), level) {
		return nil
	}
	return kafka.LoggerFunc(func(msg string, args ...any) {
		logger.Log(context.Background(), level, "kafka: "+strings.TrimSpace(fmt.Sprintf(msg, args...)), "consumer", c.cfg.Name)
	})
}

func (r *run) fetchLoop(reader *kafka.Reader, queues []chan kafka.Message) {
	failures := 0
	for {
		m, err := reader.FetchMessage(r.stop)
		if r.stopping() {
			return
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				return
			}
			failures++
			r.c.cfg.Logger.Warn("consumer: fetch failed", "consumer", r.c.cfg.Name, "err", err)
			if !r.sleep(r.c.backoff(failures)) {
				return
			}
			continue
		}
		failures = 0
		select {
		case queues[queueIndex(m.Topic, m.Partition, len(queues))] <- m:
		case <-r.stop.Done():
			return
		}
	}
}

func queueIndex(topic string, partition, n int) int {
	h := fnv.New32a()
	_, _ = h.Write([]byte(topic))
	return int((h.Sum32() + uint32(partition)) % uint32(n))
}

// stopping reports whether Run's context ended: no new record is started and no
// failed one retried.
func (r *run) stopping() bool { return r.stop.Err() != nil }

// sleep waits d and reports false if the run ended meanwhile.
func (r *run) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-r.stop.Done():
		return false
	}
}

// backoff is the wait before retry number attempt (from 1) of a failing handler.
func (c *Consumer) backoff(attempt int) time.Duration { return c.jittered(c.cfg.MinBackoff, attempt) }

// localBackoff is the wait before local retry number n of a database error: it
// starts shorter than MinBackoff (contention clears quickly) and keeps doubling up
// to MaxBackoff, where it stays while the database is unreachable.
func (c *Consumer) localBackoff(n int) time.Duration {
	return c.jittered(min(c.cfg.MinBackoff, localMinBackoff), n)
}

func (c *Consumer) jittered(base time.Duration, attempt int) time.Duration {
	d := base
	for i := 1; i < attempt && d < c.cfg.MaxBackoff; i++ {
		d *= 2
	}
	d = min(d, c.cfg.MaxBackoff)
	// Full jitter on the upper half keeps retries of many consumers apart.
	return d/2 + rand.N(d/2+1)
}

// commitLoop commits the newest handled offset per partition every CommitInterval
// and once more when r.done is closed (after every worker stopped).
func (r *run) commitLoop(reader *kafka.Reader) {
	type tp struct {
		topic     string
		partition int
	}
	pending := map[tp]kafka.Message{}
	commit := func() {
		if len(pending) == 0 || r.crashed.Load() {
			return
		}
		msgs := make([]kafka.Message, 0, len(pending))
		for _, m := range pending {
			msgs = append(msgs, m)
		}
		ctx, cancel := context.WithTimeout(context.Background(), r.c.cfg.CommitTimeout)
		defer cancel()
		if err := reader.CommitMessages(ctx, msgs...); err != nil {
			// Kept for the next tick; meanwhile a redelivery is skipped by the inbox.
			r.c.cfg.Logger.Warn("consumer: offset commit failed", "consumer", r.c.cfg.Name, "err", err)
			return
		}
		clear(pending)
	}
	t := time.NewTicker(r.c.cfg.CommitInterval)
	defer t.Stop()
	for {
		select {
		case m, ok := <-r.done:
			if !ok {
				commit()
				return
			}
			k := tp{m.Topic, m.Partition}
			if old, ok := pending[k]; !ok || m.Offset > old.Offset {
				pending[k] = m
			}
		case <-t.C:
			commit()
		}
	}
}

// gather adds to batch the records queued in q, then, while the batch is not full,
// those that come within BatchWait of each other, for at most 5×BatchWait (the
// records of one relay publish reach a worker through several partitions'
// fetches, a fraction of a millisecond apart), up to limit records in all.
func (r *run) gather(q chan kafka.Message, batch []kafka.Message, limit int, wait *time.Timer) []kafka.Message {
	step := r.c.cfg.BatchWait
	defer wait.Stop()
	var deadline time.Time
	for len(batch) < limit {
		select {
		case m, ok := <-q:
			if !ok {
				return batch
			}
			batch = append(batch, m)
			continue
		default:
		}
		if step <= 0 {
			return batch
		}
		if deadline.IsZero() {
			deadline = time.Now().Add(5 * step)
		}
		left := time.Until(deadline)
		if left <= 0 {
			return batch
		}
		wait.Reset(min(step, left))
		select {
		case m, ok := <-q:
			if !ok {
				return batch
			}
			batch = append(batch, m)
		case <-wait.C:
			return batch
		case <-r.stop.Done():
			return batch
		}
	}
	return batch
}

// conflictCooldown is how many records a worker handles one per transaction after a
// lock conflict in a shared one.
const conflictCooldown = 1000

// work handles the records of its partitions in order until q is closed.
//
// The batch limit adapts: a shared transaction that met a lock conflict (deadlock,
// serialization failure, lock timeout) drops this worker to one record per
// transaction for the next conflictCooldown records, then it tries BatchSize again.
// Measured with handlers updating 8 hot rows their keys do not name (BenchmarkHotRows),
// fixed batches of 8 or 32 collapsed to 25-79 msg/s from deadlocks (each waits
// deadlock_timeout, 1s), against 953 msg/s one per transaction.
func (r *run) work(q chan kafka.Message) {
	batch := make([]kafka.Message, 0, r.c.cfg.BatchSize)
	limit, single := r.c.cfg.BatchSize, 0
	wait := time.NewTimer(time.Hour)
	wait.Stop()
	for m := range q {
		if r.stopping() {
			continue // shutting down: drain; uncommitted records come again later
		}
		batch = r.gather(q, append(batch[:0], m), limit, wait)
		if r.handleBatch(batch) {
			limit, single = 1, conflictCooldown
		} else if single--; single <= 0 {
			limit = r.c.cfg.BatchSize
		}
	}
}
