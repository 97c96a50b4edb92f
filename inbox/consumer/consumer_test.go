package consumer_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/sagabox/sagabox/inbox"
	"github.com/sagabox/sagabox/inbox/consumer"
	"github.com/sagabox/sagabox/internal/kafkatest"
	"github.com/sagabox/sagabox/internal/testenv"
	"github.com/sagabox/sagabox/outbox"
)

func TestMain(m *testing.M) { os.Exit(kafkatest.Main(m)) }

const waitFor = 60 * time.Second

// env is one test's database, broker and topic, with an accounts table the handler
// changes: each message adds its value to its key's balance and logs the application.
type env struct {
	db    *testenv.DB
	k     *testenv.Kafka
	topic string
	group string
	parts int
}

func setup(t *testing.T, partitions int) *env {
	t.Helper()
	e := &env{db: testenv.NewDB(t), k: testenv.NewKafka(t), topic: testenv.Topic("consumer"), group: testenv.Topic("group"), parts: partitions}
	e.k.CreateTopic(t, e.topic, partitions)
	_, err := e.db.Pool.Exec(context.Background(), `
CREATE TABLE "accounts" ("id" text PRIMARY KEY, "balance" bigint NOT NULL);
CREATE TABLE "applied" ("seq" bigint GENERATED ALWAYS AS IDENTITY, "message_id" uuid NOT NULL, "account" text NOT NULL, "n" int NOT NULL)`)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// config is a consumer config with short group timeouts so kfake groups join fast.
func (e *env) config() consumer.Config {
	return consumer.Config{
		Brokers: e.k.Brokers, GroupID: e.group, Topics: []string{e.topic},
		SessionTimeout: time.Second, HeartbeatInterval: 100 * time.Millisecond, RebalanceTimeout: time.Second,
		JoinGroupBackoff: 100 * time.Millisecond, MaxWait: 100 * time.Millisecond, CommitInterval: 20 * time.Millisecond,
		MinBackoff: time.Millisecond, MaxBackoff: 10 * time.Millisecond,
	}
}

// apply is the business handler: balance += value, logged with the message's sequence number.
func apply(ctx context.Context, tx pgx.Tx, msg consumer.Message) error {
	amount, err := strconv.ParseInt(string(msg.Value), 10, 64)
	if err != nil {
		return consumer.Permanent(fmt.Errorf("value %q is not an amount: %w", msg.Value, err))
	}
	n, _ := strconv.Atoi(msg.Headers["n"])
	if _, err := tx.Exec(ctx, `INSERT INTO "accounts" VALUES ($1, $2) ON CONFLICT ("id") DO UPDATE SET "balance" = "accounts"."balance" + $2`, string(msg.Key), amount); err != nil {
		return err
	}
	_, err = tx.Exec(ctx, `INSERT INTO "applied" ("message_id", "account", "n") VALUES ($1, $2, $3)`, msg.ID, string(msg.Key), n)
	return err
}

// record makes the n-th message of account: amount n+1, keyed and partitioned by account.
func (e *env) record(account, n int) kafkatest.Record {
	r := kafkatest.FromOutbox(outbox.Message{Key: fmt.Sprintf("acct-%d", account), Payload: []byte(strconv.Itoa(n + 1)),
		Headers: map[string]string{"n": strconv.Itoa(n)}}, account%e.parts)
	return r
}

// produceAccount0 produces the first n messages of account 0 to partition 0.
func (e *env) produceAccount0(t *testing.T, n int) []kafkatest.Record {
	t.Helper()
	recs := make([]kafkatest.Record, n)
	for i := range recs {
		recs[i] = e.record(0, i)
	}
	kafkatest.Produce(t, e.k.Brokers, e.topic, recs...)
	return recs
}

// start runs c until the test ends and checks Run returned nil.
func start(t *testing.T, c *consumer.Consumer) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run = %v, want nil after cancel", err)
				}
			case <-time.After(30 * time.Second):
				t.Errorf("Run did not return within 30s of cancel")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func (e *env) balances(t *testing.T) map[string]int64 {
	t.Helper()
	rows, err := e.db.Pool.Query(context.Background(), `SELECT "id", "balance" FROM "accounts"`)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int64{}
	for rows.Next() {
		var id string
		var b int64
		if err := rows.Scan(&id, &b); err != nil {
			t.Fatal(err)
		}
		out[id] = b
	}
	return out
}

func (e *env) count(t *testing.T, sql string, args ...any) int {
	t.Helper()
	var n int
	if err := e.db.Pool.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestDuplicatesTakeEffectOnce(t *testing.T) {
	t.Parallel()
	e := setup(t, 4)
	const accounts, perAccount = 8, 25
	var originals, all []kafkatest.Record
	want := map[string]int64{}
	for n := range perAccount {
		for a := range accounts {
			r := e.record(a, n)
			originals = append(originals, r)
			all = append(all, r)
			want[r.Key] += int64(n + 1)
			// Redelivered soon, after later messages of the same key.
			if len(originals) > 3 {
				all = append(all, originals[len(originals)-4])
			}
		}
	}
	// And everything again, newest first: a replay from an old offset.
	for i := len(originals) - 1; i >= 0; i-- {
		all = append(all, originals[i])
	}
	kafkatest.Produce(t, e.k.Brokers, e.topic, all...)

	var calls sync.Map
	var fresh, dups atomic.Int64
	cfg := e.config()
	cfg.Hooks.Handled = func(msg consumer.Message, duplicate bool) {
		if duplicate {
			dups.Add(1)
		} else {
			fresh.Add(1)
		}
	}
	c, err := consumer.New(e.db.Pool, cfg, func(ctx context.Context, tx pgx.Tx, msg consumer.Message) error {
		v, _ := calls.LoadOrStore(msg.ID, new(atomic.Int64))
		v.(*atomic.Int64).Add(1)
		return apply(ctx, tx, msg)
	})
	if err != nil {
		t.Fatal(err)
	}
	start(t, c)
	kafkatest.WaitCommitted(t, e.k.Brokers, e.group, e.topic, e.parts, waitFor)

	if got := e.balances(t); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("balances = %v, want %v (each message applied once)", got, want)
	}
	if n := e.count(t, `SELECT count(*) FROM "applied"`); n != len(originals) {
		t.Fatalf("%d applications for %d distinct messages of %d records", n, len(originals), len(all))
	}
	// A rebalance under load may replay a few more duplicates; never more fresh ones.
	if f, d := fresh.Load(), dups.Load(); f != int64(len(originals)) || d < int64(len(all)-len(originals)) {
		t.Fatalf("Handled hook saw %d fresh and %d duplicate records; want %d and at least %d", f, d, len(originals), len(all)-len(originals))
	}
	calls.Range(func(k, v any) bool {
		if n := v.(*atomic.Int64).Load(); n != 1 {
			t.Errorf("handler ran %d times for message %v", n, k)
		}
		return true
	})
	// Per key, messages took effect in offset order.
	if n := e.count(t, `SELECT count(*) FROM (SELECT "n" < lag("n") OVER (PARTITION BY "account" ORDER BY "seq") AS back FROM "applied") x WHERE back`); n != 0 {
		t.Fatalf("%d applications out of order within their key", n)
	}
}

func TestCrashBetweenDatabaseCommitAndOffsetCommit(t *testing.T) {
	t.Parallel()
	e := setup(t, 1)
	recs := e.produceAccount0(t, 10)
	victim := uuid.MustParse(recs[4].Headers[outbox.HeaderMessageID])

	cfg := e.config()
	cfg.BatchSize = 1
	first, err := consumer.New(e.db.Pool, cfg, apply)
	if err != nil {
		t.Fatal(err)
	}
	crashed := make(chan struct{})
	consumer.SetCrashAfterDBCommit(first, func(m consumer.Message) bool {
		if m.ID == victim {
			close(crashed)
			return true
		}
		return false
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := first.Run(ctx); err != nil { // returns by itself: the crash
		t.Fatal(err)
	}
	<-crashed
	if n := e.count(t, `SELECT count(*) FROM "applied" WHERE "message_id" = $1`, victim); n != 1 {
		t.Fatalf("victim applied %d times before the crash, want 1 (its transaction committed)", n)
	}
	if off := kafkatest.Committed(t, e.k.Brokers, e.group, e.topic, 1)[0]; off > 4 {
		t.Fatalf("committed offset %d after the crash; the victim (offset 4) must not be committed", off)
	}

	// Restart: the victim comes again from Kafka and the inbox skips it.
	var mu sync.Mutex
	ran := map[uuid.UUID]int{}
	second, err := consumer.New(e.db.Pool, cfg, func(ctx context.Context, tx pgx.Tx, msg consumer.Message) error {
		mu.Lock()
		ran[msg.ID]++
		mu.Unlock()
		return apply(ctx, tx, msg)
	})
	if err != nil {
		t.Fatal(err)
	}
	start(t, second)
	kafkatest.WaitCommitted(t, e.k.Brokers, e.group, e.topic, 1, waitFor)
	mu.Lock()
	defer mu.Unlock()
	if ran[victim] != 0 {
		t.Fatalf("handler ran again for the redelivered victim")
	}
	if len(ran) != 5 {
		t.Fatalf("after restart the handler ran for %d messages, want the 5 after the victim", len(ran))
	}
	if n := e.count(t, `SELECT count(*) FROM "applied"`); n != 10 {
		t.Fatalf("%d applications, want 10", n)
	}
	if b := e.balances(t)["acct-0"]; b != 55 {
		t.Fatalf("balance = %d, want 55 = 1+…+10", b)
	}
}

func TestPoisonMessagesAreDeadLettered(t *testing.T) {
	t.Parallel()
	e := setup(t, 1)
	good := func(n int) kafkatest.Record { return e.record(0, n) }
	malformed := kafkatest.Record{Key: "acct-0", Value: []byte("1")}
	badID := kafkatest.Record{Key: "acct-0", Value: []byte("1"), Headers: map[string]string{outbox.HeaderMessageID: "xyz"}}
	poison := good(100) // fine, but its handler fails until "fixed"
	permanent := good(101)
	permanent.Value = []byte("not-a-number")
	kafkatest.Produce(t, e.k.Brokers, e.topic, good(0), malformed, good(1), badID, poison, good(2), permanent, good(3), poison)
	poisonID := uuid.MustParse(poison.Headers[outbox.HeaderMessageID])

	cfg := e.config()
	cfg.MaxAttempts = 3
	var retries, deadHooks atomic.Int64
	cfg.Hooks.Retry = func(m consumer.Message, attempt int, err error) {
		if m.ID == poisonID && strings.Contains(err.Error(), "boom") {
			retries.Add(1)
		}
	}
	cfg.Hooks.DeadLettered = func(inbox.DeadLetter) { deadHooks.Add(1) }
	var attempts atomic.Int64
	var fixed atomic.Bool
	c, err := consumer.New(e.db.Pool, cfg, func(ctx context.Context, tx pgx.Tx, msg consumer.Message) error {
		if msg.ID == poisonID && !fixed.Load() {
			attempts.Add(1)
			return errors.New("downstream says boom")
		}
		return apply(ctx, tx, msg)
	})
	if err != nil {
		t.Fatal(err)
	}
	start(t, c)
	kafkatest.WaitCommitted(t, e.k.Brokers, e.group, e.topic, 1, waitFor)

	if b := e.balances(t)["acct-0"]; b != 1+2+3+4 {
		t.Fatalf("balance = %d, want 10: every good message after a poison one was applied", b)
	}
	if n := attempts.Load(); n != 3 {
		t.Fatalf("poison handler ran %d times, want MaxAttempts = 3 (and not again for its redelivery)", n)
	}
	if r, d := retries.Load(), deadHooks.Load(); r != 2 || d != 4 {
		t.Fatalf("hooks saw %d retries of the poison and %d dead letters; want 2 and 4", r, d)
	}
	store, _ := inbox.NewStore("")
	dead, err := store.ListDeadLetters(context.Background(), e.db.Pool, e.group, 0)
	if err != nil {
		t.Fatal(err)
	}
	want := []struct {
		offset   int64
		attempts int
		reason   string
	}{
		{1, 0, `no "message-id" header`},
		{3, 0, `"xyz", not a non-zero UUID`},
		{4, 3, "gave up after max attempts (3): downstream says boom"},
		{6, 1, `value "not-a-number" is not an amount`},
	}
	if len(dead) != len(want) {
		t.Fatalf("%d dead letters, want %d: %+v", len(dead), len(want), dead)
	}
	for i, w := range want {
		d := dead[i]
		if d.Offset != w.offset || d.Attempts != w.attempts || !strings.Contains(d.Reason, w.reason) || d.Topic != e.topic {
			t.Errorf("dead letter %d = offset %d attempts %d reason %q; want offset %d attempts %d reason containing %q",
				i, d.Offset, d.Attempts, d.Reason, w.offset, w.attempts, w.reason)
		}
	}
	if dead[2].MessageID != poisonID || string(dead[2].Value) != "101" {
		t.Errorf("poison dead letter lost its id or value: %+v", dead[2])
	}

	// The operator fixes the cause and replays the poison and the malformed record.
	fixed.Store(true)
	ctx := context.Background()
	err = pgx.BeginFunc(ctx, e.db.Pool, func(tx pgx.Tx) error {
		for _, d := range []inbox.DeadLetter{dead[0], dead[2]} {
			id, err := consumer.Replay(ctx, tx, "", d.ID)
			if err != nil {
				return err
			}
			if d.MessageID != uuid.Nil && id != d.MessageID {
				return fmt.Errorf("replayed under %s, want the original id %s", id, d.MessageID)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	err = pgx.BeginFunc(ctx, e.db.Pool, func(tx pgx.Tx) error {
		_, err := consumer.Replay(ctx, tx, "", dead[2].ID)
		return err
	})
	if !errors.Is(err, inbox.ErrNotFound) {
		t.Fatalf("second replay: err = %v, want ErrNotFound", err)
	}
	relayOutbox(t, e) // what the relay would do
	kafkatest.WaitCommitted(t, e.k.Brokers, e.group, e.topic, 1, waitFor)
	if b := e.balances(t)["acct-0"]; b != 10+101+1 {
		t.Fatalf("balance = %d after replay, want 112: the replayed records took effect once each", b)
	}
	if left, _ := store.ListDeadLetters(ctx, e.db.Pool, e.group, 0); len(left) != 2 {
		t.Fatalf("%d dead letters left after replaying 2 of 4", len(left))
	}
}

// relayOutbox publishes and deletes the outbox rows, as the relay does.
func relayOutbox(t *testing.T, e *env) {
	t.Helper()
	ctx := context.Background()
	rows, err := e.db.Pool.Query(ctx, `DELETE FROM "sagabox"."outbox_messages" RETURNING "id", "topic", "key", "payload", "headers"`)
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (outbox.Message, error) {
		var m outbox.Message
		err := row.Scan(&m.ID, &m.Topic, &m.Key, &m.Payload, &m.Headers)
		return m, err
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range msgs {
		kafkatest.Produce(t, e.k.Brokers, m.Topic, kafkatest.FromOutbox(m, 0))
	}
}

func TestHandlerErrorsAreRetried(t *testing.T) {
	t.Parallel()
	e := setup(t, 1)
	recs := e.produceAccount0(t, 3)
	flaky := uuid.MustParse(recs[1].Headers[outbox.HeaderMessageID])
	var attempts atomic.Int64
	c, err := consumer.New(e.db.Pool, e.config(), func(ctx context.Context, tx pgx.Tx, msg consumer.Message) error {
		if err := apply(ctx, tx, msg); err != nil {
			return err
		}
		if msg.ID == flaky {
			if attempts.Add(1) < 3 {
				return errors.New("deadlock detected (pretend)") // after writing: the rollback must undo it
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	start(t, c)
	kafkatest.WaitCommitted(t, e.k.Brokers, e.group, e.topic, 1, waitFor)
	if n := attempts.Load(); n != 3 {
		t.Fatalf("flaky message attempted %d times, want 3", n)
	}
	if b := e.balances(t)["acct-0"]; b != 6 {
		t.Fatalf("balance = %d, want 6: failed attempts must leave nothing behind", b)
	}
	if got := e.count(t, `SELECT count(*) FROM (SELECT "n" <> row_number() OVER (ORDER BY "seq") - 1 AS off FROM "applied") x WHERE off`); got != 0 {
		t.Fatalf("order broken: %d applications out of place", got)
	}
	if n := e.count(t, `SELECT count(*) FROM "sagabox"."inbox_dead_letters"`); n != 0 {
		t.Fatalf("%d dead letters, want 0", n)
	}
}

func TestTwoConsumersShareTheGroup(t *testing.T) {
	t.Parallel()
	e := setup(t, 4)
	var recs []kafkatest.Record
	for n := range 20 {
		for a := range 8 {
			recs = append(recs, e.record(a, n))
		}
	}
	kafkatest.Produce(t, e.k.Brokers, e.topic, recs[:80]...)
	a, err := consumer.New(e.db.Pool, e.config(), apply)
	if err != nil {
		t.Fatal(err)
	}
	start(t, a)
	b, err := consumer.New(e.db.Pool, e.config(), apply)
	if err != nil {
		t.Fatal(err)
	}
	start(t, b) // joins while a is consuming: a rebalance
	kafkatest.Produce(t, e.k.Brokers, e.topic, recs[80:]...)
	kafkatest.Produce(t, e.k.Brokers, e.topic, recs...) // everything again
	kafkatest.WaitCommitted(t, e.k.Brokers, e.group, e.topic, e.parts, waitFor)
	if n := e.count(t, `SELECT count(*) FROM "applied"`); n != len(recs) {
		t.Fatalf("%d applications for %d messages", n, len(recs))
	}
	for acct, bal := range e.balances(t) {
		if bal != 210 {
			t.Errorf("%s balance = %d, want 210 = 1+…+20", acct, bal)
		}
	}
}

func TestRunTwiceAtOnce(t *testing.T) {
	t.Parallel()
	e := setup(t, 1)
	c, err := consumer.New(e.db.Pool, e.config(), apply)
	if err != nil {
		t.Fatal(err)
	}
	stop := start(t, c)
	kafkatest.Produce(t, e.k.Brokers, e.topic, e.record(0, 0))
	kafkatest.WaitCommitted(t, e.k.Brokers, e.group, e.topic, 1, waitFor) // now it surely runs
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	if err := c.Run(canceled); !errors.Is(err, consumer.ErrAlreadyRunning) {
		t.Fatalf("second Run = %v, want ErrAlreadyRunning", err)
	}
	stop()
	// After a clean stop it runs again.
	kafkatest.Produce(t, e.k.Brokers, e.topic, e.record(0, 1))
	start(t, c)
	kafkatest.WaitCommitted(t, e.k.Brokers, e.group, e.topic, 1, waitFor)
	if b := e.balances(t)["acct-0"]; b != 3 {
		t.Fatalf("balance = %d, want 3", b)
	}
}

func TestConfigIsValidated(t *testing.T) {
	t.Parallel()
	db := testenv.NewDB(t)
	_, err := consumer.New(db.Pool, consumer.Config{
		Brokers: []string{""}, Schema: "Nope", MaxAttempts: -1, MinBackoff: time.Second, MaxBackoff: time.Millisecond,
		Concurrency: 1000, HeartbeatInterval: time.Minute,
	}, apply)
	if !errors.Is(err, consumer.ErrInvalidConfig) {
		t.Fatalf("err = %v, want ErrInvalidConfig", err)
	}
	for _, want := range []string{"Brokers[0] is empty", "GroupID is empty", "Topics is empty", "Schema", "MaxAttempts is -1",
		"MinBackoff 1s is above MaxBackoff 1ms", "exceeds the pool's MaxConns", "HeartbeatInterval 1m0s must be below SessionTimeout"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not say %q:\n%v", want, err)
		}
	}
	if _, err := consumer.New(db.Pool, consumer.Config{Brokers: []string{"x:1"}, GroupID: "g", Topics: []string{"t"}}, nil); !errors.Is(err, consumer.ErrInvalidConfig) {
		t.Fatalf("nil handler: err = %v", err)
	}
	c, err := consumer.New(db.Pool, consumer.Config{Brokers: []string{"x:1"}, GroupID: "g", Topics: []string{"t"}}, apply)
	if err != nil {
		t.Fatal(err)
	}
	if cfg := c.Config(); cfg.Name != "g" || cfg.Schema != "sagabox" || cfg.MaxAttempts != 10 || cfg.Concurrency < 1 {
		t.Fatalf("defaults not applied: %+v", cfg)
	}
}

func TestPermanent(t *testing.T) {
	t.Parallel()
	base := errors.New("x")
	if consumer.Permanent(nil) != nil {
		t.Fatal("Permanent(nil) != nil")
	}
	err := fmt.Errorf("wrapped: %w", consumer.Permanent(base))
	if !consumer.IsPermanent(err) || !errors.Is(err, base) {
		t.Fatalf("IsPermanent/Is lost through wrapping: %v", err)
	}
	if consumer.IsPermanent(base) {
		t.Fatal("a plain error is not permanent")
	}
}

func TestShutdown(t *testing.T) {
	t.Parallel()

	// blocking starts a consumer whose handler waits for release (or its context).
	blocking := func(t *testing.T, e *env, cfg consumer.Config) (started chan struct{}, release chan struct{}, cancel func(), done chan error) {
		started, release = make(chan struct{}), make(chan struct{})
		c, err := consumer.New(e.db.Pool, cfg, func(ctx context.Context, tx pgx.Tx, msg consumer.Message) error {
			if err := apply(ctx, tx, msg); err != nil {
				return err
			}
			close(started)
			select {
			case <-release:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done = make(chan error, 1)
		go func() { done <- c.Run(ctx) }()
		return started, release, cancel, done
	}

	t.Run("InFlightRecordFinishesAndIsCommitted", func(t *testing.T) {
		t.Parallel()
		e := setup(t, 1)
		kafkatest.Produce(t, e.k.Brokers, e.topic, e.record(0, 0), e.record(0, 1))
		cfg := e.config()
		cfg.BatchSize = 1
		started, release, cancel, done := blocking(t, e, cfg)
		<-started
		cancel() // while the handler is in the middle of record 0
		close(release)
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if n := e.count(t, `SELECT count(*) FROM "applied"`); n != 1 {
			t.Fatalf("%d records applied, want 1: the one in flight finishes, the queued one waits", n)
		}
		if off := kafkatest.Committed(t, e.k.Brokers, e.group, e.topic, 1)[0]; off != 1 {
			t.Fatalf("committed offset %d, want 1: the finished record's offset is committed on the way out", off)
		}
	})

	t.Run("StuckHandlerIsCanceledAfterShutdownTimeout", func(t *testing.T) {
		t.Parallel()
		e := setup(t, 1)
		kafkatest.Produce(t, e.k.Brokers, e.topic, e.record(0, 0))
		cfg := e.config()
		cfg.ShutdownTimeout = 50 * time.Millisecond
		started, _, cancel, done := blocking(t, e, cfg)
		<-started
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if n := e.count(t, `SELECT count(*) FROM "applied"`); n != 0 {
			t.Fatalf("%d records applied, want 0: the canceled handler's transaction rolls back", n)
		}
		if off := kafkatest.Committed(t, e.k.Brokers, e.group, e.topic, 1)[0]; off > 0 {
			t.Fatalf("committed offset %d, want none: the record must come again", off)
		}
	})
}

func TestRunSweepsItsOwnOldInboxRows(t *testing.T) {
	t.Parallel()
	e := setup(t, 1)
	ctx := context.Background()
	old := time.Now().Add(-2 * time.Hour)
	for _, name := range []string{e.group, "someone-else"} {
		if _, err := e.db.Pool.Exec(ctx, `INSERT INTO "sagabox"."inbox_messages" ("consumer", "message_id", "received_at") VALUES ($1, $2, $3)`, name, uuid.New(), old); err != nil {
			t.Fatal(err)
		}
	}
	kafkatest.Produce(t, e.k.Brokers, e.topic, e.record(0, 0))
	cfg := e.config()
	cfg.Retention = time.Hour
	c, err := consumer.New(e.db.Pool, cfg, apply)
	if err != nil {
		t.Fatal(err)
	}
	start(t, c)
	kafkatest.WaitCommitted(t, e.k.Brokers, e.group, e.topic, 1, waitFor)
	var left []string
	kafkatest.Poll(t, waitFor, func() bool {
		rows, err := e.db.Pool.Query(ctx, `SELECT "consumer" || CASE WHEN "received_at" < now() - interval '1 hour' THEN ':old' ELSE ':new' END FROM "sagabox"."inbox_messages" ORDER BY 1`)
		if err != nil {
			t.Fatal(err)
		}
		left, err = pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		return fmt.Sprint(left) == fmt.Sprintf("[%s:new someone-else:old]", e.group)
	}, func() string {
		return fmt.Sprintf("inbox rows %v; want this consumer's old row swept, its new row and the other consumer's row kept", left)
	})
}

func TestHandlerPanicIsDeadLetteredAndProcessStaysUp(t *testing.T) {
	t.Parallel()
	e := setup(t, 1)
	recs := e.produceAccount0(t, 4)
	bomb := uuid.MustParse(recs[1].Headers[outbox.HeaderMessageID])
	var dead atomic.Int64
	cfg := e.config()
	cfg.Hooks.DeadLettered = func(inbox.DeadLetter) { dead.Add(1) }
	c, err := consumer.New(e.db.Pool, cfg, func(ctx context.Context, tx pgx.Tx, msg consumer.Message) error {
		if err := apply(ctx, tx, msg); err != nil {
			return err
		}
		if msg.ID == bomb {
			panic(fmt.Sprintf("cannot decode %q", msg.Value)) // a handler bug, after it wrote
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	stop := start(t, c)
	kafkatest.WaitCommitted(t, e.k.Brokers, e.group, e.topic, 1, waitFor)
	stop() // Run returns nil: the process stayed up
	if b := e.balances(t)["acct-0"]; b != 1+3+4 {
		t.Fatalf("balance = %d, want 8: the panicking record's writes roll back, its neighbours apply", b)
	}
	store, _ := inbox.NewStore("")
	letters, err := store.ListDeadLetters(context.Background(), e.db.Pool, e.group, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(letters) != 1 || letters[0].MessageID != bomb || letters[0].Attempts != 1 || dead.Load() != 1 {
		t.Fatalf("dead letters %+v (hook saw %d); want the panicking record once, after 1 attempt", letters, dead.Load())
	}
	for _, want := range []string{`handler panicked: cannot decode "2"`, "goroutine ", "consumer_test.TestHandlerPanicIsDeadLetteredAndProcessStaysUp"} {
		if !strings.Contains(letters[0].Reason, want) {
			t.Errorf("reason does not contain %q (the panic and its stack):\n%s", want, letters[0].Reason)
		}
	}
}

// TestQueuedAtCommitCommitsWithTheRecordOrNotAtAll: statements a handler queues with
// QueueAtCommit run in the commit's round trip; one that fails undoes the handler's
// own writes and the inbox row, and the record is handled again.
func TestQueuedAtCommitCommitsWithTheRecordOrNotAtAll(t *testing.T) {
	t.Parallel()
	e := setup(t, 1)
	const n = 5
	var failed, notQueued atomic.Int32
	c, err := consumer.New(e.db.Pool, e.config(), func(ctx context.Context, tx pgx.Tx, msg consumer.Message) error {
		if _, err := tx.Exec(ctx, `INSERT INTO "accounts" VALUES ($1, $2) ON CONFLICT ("id") DO UPDATE SET "balance" = "accounts"."balance" + $2`, string(msg.Key), string(msg.Value)); err != nil {
			return err
		}
		b := &pgx.Batch{}
		b.Queue(`INSERT INTO "applied" ("message_id", "account", "n") VALUES ($1, $2, $3)`, msg.ID, string(msg.Key), msg.Headers["n"])
		if msg.Headers["n"] == "2" && failed.Add(1) == 1 {
			b.Queue(`SELECT 1/0`) // fails once, after the insert
		}
		if !consumer.QueueAtCommit(ctx, b, nil) {
			notQueued.Add(1)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	e.produceAccount0(t, n)
	start(t, c)
	kafkatest.Poll(t, waitFor, func() bool { return e.applied(t) == n }, func() string { return fmt.Sprintf("%d of %d applied", e.applied(t), n) })
	if b := e.balances(t)["acct-0"]; b != 1+2+3+4+5 || notQueued.Load() != 0 || failed.Load() < 2 {
		t.Fatalf("balance %d (want 15: each once), %d handlers not given a commit queue, message 2 ran %d times (want 2+)", b, notQueued.Load(), failed.Load())
	}
	if consumer.QueueAtCommit(context.Background(), &pgx.Batch{}, nil) {
		t.Fatal("QueueAtCommit outside a consumer transaction must report false")
	}
}

func (e *env) applied(t *testing.T) int {
	t.Helper()
	var n int
	if err := e.db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM "applied"`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestTxValueLivesAsLongAsItsTransaction: the handlers of one transaction share what
// TxValue keeps (here a total, written once with the commit by a statement that reads
// it then); a transaction run again after a transient error starts from nothing, so
// no amount counts twice.
func TestTxValueLivesAsLongAsItsTransaction(t *testing.T) {
	t.Parallel()
	e := setup(t, 1)
	const n = 5
	type totalKey struct{}
	var mu sync.Mutex
	var failedTotal *int64 // the value of the transaction that failed
	reused := false
	c, err := consumer.New(e.db.Pool, e.config(), func(ctx context.Context, tx pgx.Tx, msg consumer.Message) error {
		v, ok := consumer.TxValue(ctx, totalKey{}, func() any {
			total := new(int64)
			b := &pgx.Batch{}
			// The argument is the pointer: encoded when the commit is sent.
			b.Queue(`INSERT INTO "accounts" VALUES ($1, $2) ON CONFLICT ("id") DO UPDATE SET "balance" = "accounts"."balance" + $2`, string(msg.Key), total)
			consumer.QueueAtCommit(ctx, b, nil)
			return total
		})
		again, _ := consumer.TxValue(ctx, totalKey{}, func() any { panic("made twice in one transaction") })
		if !ok || v != again {
			return consumer.Permanent(errors.New("no value, or another one on the second call"))
		}
		total := v.(*int64)
		amount, _ := strconv.ParseInt(string(msg.Value), 10, 64)
		*total += amount
		mu.Lock()
		defer mu.Unlock()
		reused = reused || total == failedTotal
		if msg.Headers["n"] == "2" && failedTotal == nil {
			failedTotal = total
			return consumer.Transient(errors.New("fails once, after adding to the total"))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	e.produceAccount0(t, n)
	start(t, c)
	kafkatest.Poll(t, waitFor, func() bool { return e.balances(t)["acct-0"] >= 1+2+3+4+5 },
		func() string { return fmt.Sprintf("balance %d, want 15", e.balances(t)["acct-0"]) })
	mu.Lock()
	defer mu.Unlock()
	if b := e.balances(t)["acct-0"]; b != 15 || failedTotal == nil || reused {
		t.Fatalf("balance %d (want 15: each once), failed once: %v, failed transaction's value used again: %v", b, failedTotal != nil, reused)
	}
	if _, ok := consumer.TxValue(context.Background(), totalKey{}, func() any { return 0 }); ok {
		t.Fatal("TxValue outside a consumer transaction must report false")
	}
}

// One write to all partitions reaches a single worker through one fetch per
// partition; BatchWait gathers them into one transaction instead of one each.
func TestBatchWaitGathersOnePublishAcrossPartitions(t *testing.T) {
	t.Parallel()
	const parts = 8
	e := setup(t, parts)
	cfg := e.config()
	// Generous: a loaded machine is slow. MaxWait at its default, so that no partition's
	// fetch times out and redials meanwhile (the config's 100ms is short for that).
	cfg.Concurrency, cfg.BatchWait, cfg.MaxWait = 1, 500*time.Millisecond, 0
	var mu sync.Mutex
	var sizes []int
	c, err := consumer.NewBatch(e.db.Pool, cfg, func(_ context.Context, _ pgx.Tx, msgs []consumer.Message) error {
		mu.Lock()
		defer mu.Unlock()
		sizes = append(sizes, len(msgs))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	start(t, c)
	handled := func() (n int, txs []int) {
		mu.Lock()
		defer mu.Unlock()
		for _, s := range sizes {
			n += s
		}
		return n, append([]int(nil), sizes...)
	}
	waitHandled := func(want int) []int {
		t.Helper()
		deadline := time.Now().Add(waitFor)
		for {
			n, txs := handled()
			if n >= want {
				return txs
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d of %d records handled within %s", n, want, waitFor)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	// Every partition fetched once, so the next records find their fetches waiting.
	warm := make([]kafkatest.Record, parts)
	for p := range warm {
		warm[p] = e.record(p, 0)
	}
	kafkatest.Produce(t, e.k.Brokers, e.topic, warm...)
	before := len(waitHandled(parts))
	recs := make([]kafkatest.Record, parts)
	for p := range recs {
		recs[p] = e.record(p, 1)
	}
	kafkatest.Produce(t, e.k.Brokers, e.topic, recs...)
	txs := waitHandled(2 * parts)[before:]
	if len(txs) != 1 {
		t.Fatalf("one write of %d records to %d partitions took %d transactions (sizes %v), want 1", parts, parts, len(txs), txs)
	}
}
