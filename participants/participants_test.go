package participants_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/sagabox/sagabox/inbox/consumer"
	"github.com/sagabox/sagabox/internal/kafkatest"
	"github.com/sagabox/sagabox/internal/testenv"
	"github.com/sagabox/sagabox/outbox"
	"github.com/sagabox/sagabox/participants"
	"github.com/sagabox/sagabox/wire"
)

func TestMain(m *testing.M) { os.Exit(kafkatest.Main(m)) }

const replyTopic = "payment.replies"

// wallet is a payment service: charge takes the amount from the wallet (refusing to go
// below zero) and announces it (choreography); refund gives it back. It counts calls.
type wallet struct {
	mu       sync.Mutex
	charges  map[uuid.UUID]int
	refunds  map[uuid.UUID]int
	failNext map[uuid.UUID]error // returned by the next charge or refund of that saga, after its writes
}

type payload struct {
	Amount int64 `json:"amount"`
}

// count counts a call and returns the failure injected for it, if any.
func (w *wallet) count(m map[uuid.UUID]int, id uuid.UUID) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	m[id]++
	err := w.failNext[id]
	delete(w.failNext, id)
	return err
}

func (w *wallet) calls(id uuid.UUID) (charges, refunds int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.charges[id], w.refunds[id]
}

func (w *wallet) charge(ctx context.Context, tx pgx.Tx, cmd wire.Command) ([]byte, error) {
	injected := w.count(w.charges, cmd.SagaID)
	var p payload
	if err := json.Unmarshal(cmd.Payload, &p); err != nil {
		return nil, participants.Failf("bad payload: %v", err)
	}
	var left int64
	err := tx.QueryRow(ctx, `INSERT INTO "wallets" VALUES ($1, 100 - $2) ON CONFLICT ("id") DO UPDATE SET "balance" = "wallets"."balance" - $2 RETURNING "balance"`,
		cmd.SagaID, p.Amount).Scan(&left)
	if err != nil {
		return nil, err
	}
	if err := outbox.Enqueue(ctx, tx, outbox.Message{Topic: "wallet.events", Key: cmd.SagaID.String(), Payload: []byte("charged")}); err != nil {
		return nil, err
	}
	if injected != nil {
		return nil, injected
	}
	if left < 0 {
		return nil, participants.Failf("insufficient funds: %d short", -left)
	}
	return []byte(fmt.Sprintf(`{"charged":%d}`, p.Amount)), nil
}

func (w *wallet) refund(ctx context.Context, tx pgx.Tx, cmd wire.Command) ([]byte, error) {
	injected := w.count(w.refunds, cmd.SagaID)
	var p payload
	if err := json.Unmarshal(cmd.Payload, &p); err != nil {
		return nil, participants.Failf("bad payload: %v", err)
	}
	if _, err := tx.Exec(ctx, `UPDATE "wallets" SET "balance" = "balance" + $2 WHERE "id" = $1`, cmd.SagaID, p.Amount); err != nil {
		return nil, err
	}
	return nil, injected
}

type env struct {
	db *testenv.DB
	w  *wallet
	p  *participants.Participant
}

func setup(t *testing.T, cfg participants.Config) *env {
	t.Helper()
	db := testenv.NewDB(t)
	if _, err := db.Pool.Exec(context.Background(), `CREATE TABLE "wallets" ("id" uuid PRIMARY KEY, "balance" bigint NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	w := &wallet{charges: map[uuid.UUID]int{}, refunds: map[uuid.UUID]int{}, failNext: map[uuid.UUID]error{}}
	p, err := participants.New(db.Pool, cfg)
	if err != nil {
		t.Fatal(err)
	}
	p.Step("payment.charge", w.charge, "payment.refund", w.refund)
	return &env{db: db, w: w, p: p}
}

func command(saga uuid.UUID, op wire.Op, attempt int, amount int64) wire.Command {
	name := "payment.charge"
	if op == wire.OpCompensate {
		name = "payment.refund"
	}
	return wire.Command{SagaID: saga, SagaType: "order", Step: "payment", Op: op, Attempt: attempt, Name: name,
		ReplyTo: replyTopic, Payload: []byte(fmt.Sprintf(`{"amount":%d}`, amount)), Headers: map[string]string{"traceparent": "00-trace-" + saga.String()}}
}

// deliver runs cmd through the participant in a transaction of its own, as a delivery
// under a new message id would, and returns the reply it enqueued.
func (e *env) deliver(t *testing.T, cmd wire.Command) wire.Reply {
	t.Helper()
	ctx := context.Background()
	var reply wire.Reply
	err := pgx.BeginFunc(ctx, e.db.Pool, func(tx pgx.Tx) error {
		if err := e.p.HandleCommand(ctx, tx, cmd); err != nil {
			return err
		}
		var headers map[string]string
		var body []byte
		err := tx.QueryRow(ctx, `SELECT "headers", "payload" FROM "sagabox"."outbox_messages" WHERE "topic" = $1 AND "key" = $2 ORDER BY "seq" DESC LIMIT 1`,
			replyTopic, cmd.SagaID.String()).Scan(&headers, &body)
		if err != nil {
			return fmt.Errorf("no reply enqueued: %w", err)
		}
		reply, err = wire.ParseReply(headers, body)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if reply.Attempt != cmd.Attempt || reply.Op != cmd.Op || reply.Step != cmd.Step {
		t.Fatalf("reply %+v does not answer command %+v", reply, cmd)
	}
	return reply
}

func (e *env) balance(t *testing.T, saga uuid.UUID) int64 {
	t.Helper()
	var b int64
	err := e.db.Pool.QueryRow(context.Background(), `SELECT "balance" FROM "wallets" WHERE "id" = $1`, saga).Scan(&b)
	if errors.Is(err, pgx.ErrNoRows) {
		return 100
	}
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (e *env) events(t *testing.T, saga uuid.UUID) int {
	t.Helper()
	var n int
	if err := e.db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM "sagabox"."outbox_messages" WHERE "topic" = 'wallet.events' AND "key" = $1`, saga.String()).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// replies counts the replies enqueued for saga.
func (e *env) replies(t *testing.T, saga uuid.UUID) int {
	t.Helper()
	var n int
	if err := e.db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM "sagabox"."outbox_messages" WHERE "topic" = $1 AND "key" = $2`, replyTopic, saga.String()).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// lastReply is the newest reply enqueued for saga.
func (e *env) lastReply(t *testing.T, saga uuid.UUID) wire.Reply {
	t.Helper()
	var headers map[string]string
	var body []byte
	err := e.db.Pool.QueryRow(context.Background(), `SELECT "headers", "payload" FROM "sagabox"."outbox_messages" WHERE "topic" = $1 AND "key" = $2 ORDER BY "seq" DESC LIMIT 1`,
		replyTopic, saga.String()).Scan(&headers, &body)
	if err != nil {
		t.Fatalf("no reply for saga %s: %v", saga, err)
	}
	r, err := wire.ParseReply(headers, body)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func expect(t *testing.T, r wire.Reply, outcome wire.Outcome, reason string) {
	t.Helper()
	if r.Outcome != outcome || !strings.Contains(r.Reason, reason) || (reason == "" && r.Reason != "") {
		t.Fatalf("reply = %s %q, want %s with reason containing %q", r.Outcome, r.Reason, outcome, reason)
	}
}

func TestBarrier(t *testing.T) {
	t.Parallel()
	e := setup(t, participants.Config{})

	t.Run("DuplicateForward", func(t *testing.T) {
		t.Parallel()
		saga := uuid.New()
		for _, attempt := range []int{1, 1, 2} { // a redelivery, then an orchestrator retry
			r := e.deliver(t, command(saga, wire.OpForward, attempt, 30))
			expect(t, r, wire.OutcomeSuccess, "")
			if string(r.Payload) != `{"charged":30}` {
				t.Fatalf("attempt %d: result %q, want the stored result", attempt, r.Payload)
			}
			if r.Headers["traceparent"] != "00-trace-"+saga.String() {
				t.Fatalf("trace context not carried to the reply: %v", r.Headers)
			}
		}
		if b := e.balance(t, saga); b != 70 {
			t.Fatalf("balance = %d, want 70: charged once", b)
		}
		if c, _ := e.w.calls(saga); c != 1 || e.events(t, saga) != 1 {
			t.Fatalf("charge ran %d times, %d events; want 1, 1", c, e.events(t, saga))
		}
	})

	t.Run("DuplicateCompensation", func(t *testing.T) {
		t.Parallel()
		saga := uuid.New()
		expect(t, e.deliver(t, command(saga, wire.OpForward, 1, 30)), wire.OutcomeSuccess, "")
		for _, attempt := range []int{1, 1, 2} {
			expect(t, e.deliver(t, command(saga, wire.OpCompensate, attempt, 30)), wire.OutcomeSuccess, "")
		}
		// A forward redelivered after the compensation is answered from the barrier, not re-run.
		expect(t, e.deliver(t, command(saga, wire.OpForward, 1, 30)), wire.OutcomeSuccess, "")
		if b := e.balance(t, saga); b != 100 {
			t.Fatalf("balance = %d, want 100: charged once, refunded once", b)
		}
		if c, r := e.w.calls(saga); c != 1 || r != 1 {
			t.Fatalf("charge ran %d, refund %d times; want 1, 1", c, r)
		}
	})

	t.Run("NullCompensationThenHangingForward", func(t *testing.T) {
		t.Parallel()
		saga := uuid.New()
		expect(t, e.deliver(t, command(saga, wire.OpCompensate, 1, 30)), wire.OutcomeSuccess, "")
		expect(t, e.deliver(t, command(saga, wire.OpCompensate, 1, 30)), wire.OutcomeSuccess, "")
		for _, attempt := range []int{1, 2} {
			expect(t, e.deliver(t, command(saga, wire.OpForward, attempt, 30)), wire.OutcomeIgnored, "hanging")
		}
		if c, r := e.w.calls(saga); c != 0 || r != 0 {
			t.Fatalf("charge ran %d, refund %d times; want neither", c, r)
		}
		if b := e.balance(t, saga); b != 100 || e.events(t, saga) != 0 {
			t.Fatalf("balance %d, %d events; want 100, 0", b, e.events(t, saga))
		}
	})

	t.Run("BusinessFailure", func(t *testing.T) {
		t.Parallel()
		saga := uuid.New()
		expect(t, e.deliver(t, command(saga, wire.OpForward, 1, 500)), wire.OutcomeFailure, "insufficient funds: 400 short")
		expect(t, e.deliver(t, command(saga, wire.OpForward, 1, 500)), wire.OutcomeFailure, "insufficient funds: 400 short")
		// Compensating a refused step undoes nothing.
		expect(t, e.deliver(t, command(saga, wire.OpCompensate, 1, 500)), wire.OutcomeSuccess, "")
		if c, r := e.w.calls(saga); c != 1 || r != 0 {
			t.Fatalf("charge ran %d, refund %d times; want 1, 0", c, r)
		}
		if b := e.balance(t, saga); b != 100 || e.events(t, saga) != 0 {
			t.Fatalf("balance %d, %d events: the refused step's writes and messages must be rolled back", b, e.events(t, saga))
		}
	})

	t.Run("TransientErrorRepliesRetryableAndRunsAgain", func(t *testing.T) {
		t.Parallel()
		saga := uuid.New()
		e.w.mu.Lock()
		e.w.failNext[saga] = errors.New("connection reset by peer")
		e.w.mu.Unlock()
		expect(t, e.deliver(t, command(saga, wire.OpForward, 1, 30)), wire.OutcomeRetryable, "connection reset by peer")
		if b := e.balance(t, saga); b != 100 || e.events(t, saga) != 0 {
			t.Fatalf("balance %d, %d events after a transient failure; want 100, 0", b, e.events(t, saga))
		}
		expect(t, e.deliver(t, command(saga, wire.OpForward, 2, 30)), wire.OutcomeSuccess, "")
		if b := e.balance(t, saga); b != 70 {
			t.Fatalf("balance = %d, want 70", b)
		}
	})

	t.Run("RefusalIsRememberedAcrossResends", func(t *testing.T) {
		t.Parallel()
		saga := uuid.New()
		bad := command(saga, wire.OpForward, 1, 30)
		bad.Payload = []byte(`{"amount": "thirty"}`)
		expect(t, e.deliver(t, bad), wire.OutcomeFailure, "bad payload")
		// A resend, even with a good payload, gets the recorded answer: the step is decided.
		expect(t, e.deliver(t, command(saga, wire.OpForward, 2, 30)), wire.OutcomeFailure, "bad payload")
		if c, _ := e.w.calls(saga); c != 1 {
			t.Fatalf("charge ran %d times, want 1", c)
		}
	})

	t.Run("FailedCompensationIsRetried", func(t *testing.T) {
		t.Parallel()
		saga := uuid.New()
		expect(t, e.deliver(t, command(saga, wire.OpForward, 1, 30)), wire.OutcomeSuccess, "")
		e.w.mu.Lock()
		e.w.failNext[saga] = participants.Fail("ledger closed")
		e.w.mu.Unlock()
		expect(t, e.deliver(t, command(saga, wire.OpCompensate, 1, 30)), wire.OutcomeFailure, "ledger closed")
		if b := e.balance(t, saga); b != 70 {
			t.Fatalf("balance = %d after a refused refund, want 70", b)
		}
		expect(t, e.deliver(t, command(saga, wire.OpCompensate, 2, 30)), wire.OutcomeSuccess, "")
		expect(t, e.deliver(t, command(saga, wire.OpCompensate, 3, 30)), wire.OutcomeSuccess, "")
		if c, r := e.w.calls(saga); c != 1 || r != 2 {
			t.Fatalf("charge ran %d, refund %d times; want 1, 2 (the refused one and the successful one)", c, r)
		}
		if b := e.balance(t, saga); b != 100 {
			t.Fatalf("balance = %d, want 100", b)
		}
	})

	t.Run("AbortedTransactionIsRecovered", func(t *testing.T) {
		t.Parallel()
		p, err := participants.New(e.db.Pool, participants.Config{})
		if err != nil {
			t.Fatal(err)
		}
		p.Handle("payment.charge", func(ctx context.Context, tx pgx.Tx, cmd wire.Command) ([]byte, error) {
			_, err := tx.Exec(ctx, `SELECT 1/0`)
			return nil, err
		})
		saga := uuid.New()
		err = pgx.BeginFunc(context.Background(), e.db.Pool, func(tx pgx.Tx) error {
			return p.HandleCommand(context.Background(), tx, command(saga, wire.OpForward, 1, 1))
		})
		if err != nil {
			t.Fatalf("a failed statement in the handler must not abort the step's transaction: %v", err)
		}
		var reason string
		err = e.db.Pool.QueryRow(context.Background(), `SELECT "headers"->>'saga-reason' FROM "sagabox"."outbox_messages" WHERE "key" = $1 AND "topic" = $2`, saga.String(), replyTopic).Scan(&reason)
		if err != nil || !strings.Contains(reason, "division by zero") {
			t.Fatalf("retryable reply reason = %q, %v", reason, err)
		}
	})

	t.Run("LockTimeoutIsLeftToTheConsumerNotReplied", func(t *testing.T) {
		t.Parallel()
		ctx := context.Background()
		saga := uuid.New()
		// Another transaction holds the wallet row the charge must update.
		if _, err := e.db.Pool.Exec(ctx, `INSERT INTO "wallets" VALUES ($1, 100)`, saga); err != nil {
			t.Fatal(err)
		}
		holder, err := e.db.Pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = holder.Rollback(ctx) })
		if _, err := holder.Exec(ctx, `SELECT 1 FROM "wallets" WHERE "id" = $1 FOR UPDATE`, saga); err != nil {
			t.Fatal(err)
		}
		err = pgx.BeginFunc(ctx, e.db.Pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `SET LOCAL lock_timeout = '50ms'`); err != nil {
				return err
			}
			return e.p.HandleCommand(ctx, tx, command(saga, wire.OpForward, 1, 30))
		})
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "55P03" || consumer.IsPermanent(err) {
			t.Fatalf("a lock timeout must reach the consumer loop as the database error, got %v", err)
		}
		if n := e.replies(t, saga); n != 0 {
			t.Fatalf("%d replies enqueued for a lock timeout; the saga must not see it", n)
		}
		if err := holder.Rollback(ctx); err != nil {
			t.Fatal(err)
		}
		// The consumer's retry of the transaction then runs the step.
		expect(t, e.deliver(t, command(saga, wire.OpForward, 1, 30)), wire.OutcomeSuccess, "")
		if b := e.balance(t, saga); b != 70 {
			t.Fatalf("balance = %d, want 70", b)
		}
	})

	t.Run("RetryableMarksATransientErrorForTheSaga", func(t *testing.T) {
		t.Parallel()
		p, err := participants.New(e.db.Pool, participants.Config{})
		if err != nil {
			t.Fatal(err)
		}
		p.Handle("payment.charge", func(ctx context.Context, tx pgx.Tx, cmd wire.Command) ([]byte, error) {
			return nil, participants.Retryable(fmt.Errorf("upstream busy: %w", &pgconn.PgError{Code: "40001", Message: "could not serialize access"}))
		})
		saga := uuid.New()
		err = pgx.BeginFunc(context.Background(), e.db.Pool, func(tx pgx.Tx) error {
			return p.HandleCommand(context.Background(), tx, command(saga, wire.OpForward, 1, 1))
		})
		if err != nil {
			t.Fatalf("a handler error marked Retryable must be replied, not returned: %v", err)
		}
		if r := e.lastReply(t, saga); r.Outcome != wire.OutcomeRetryable || !strings.Contains(r.Reason, "upstream busy") {
			t.Fatalf("reply %s %q, want retryable", r.Outcome, r.Reason)
		}
	})

	t.Run("PanickingHandlerRefusesForwardAndDeadLettersCompensation", func(t *testing.T) {
		t.Parallel()
		ctx := context.Background()
		p, err := participants.New(e.db.Pool, participants.Config{})
		if err != nil {
			t.Fatal(err)
		}
		boom := func(ctx context.Context, tx pgx.Tx, cmd wire.Command) ([]byte, error) {
			if _, err := tx.Exec(ctx, `INSERT INTO "wallets" VALUES ($1, 1)`, cmd.SagaID); err != nil {
				return nil, err
			}
			panic("boom")
		}
		p.Step("payment.charge", boom, "payment.refund", boom)
		saga := uuid.New()
		handle := func(cmd wire.Command) error {
			return pgx.BeginFunc(ctx, e.db.Pool, func(tx pgx.Tx) error { return p.HandleCommand(ctx, tx, cmd) })
		}
		if err := handle(command(saga, wire.OpForward, 1, 1)); err != nil {
			t.Fatalf("a panicking forward step must be refused, not returned: %v", err)
		}
		r := e.lastReply(t, saga)
		if r.Outcome != wire.OutcomeFailure || !strings.Contains(r.Reason, "handler panicked: boom") {
			t.Fatalf("reply %s %q, want a failure naming the panic", r.Outcome, r.Reason)
		}
		if b := e.balance(t, saga); b != 100 {
			t.Fatalf("the panicking step's writes must be rolled back, balance %d", b)
		}
		// Resent, it gets the recorded refusal without running again.
		if err := handle(command(saga, wire.OpForward, 2, 1)); err != nil {
			t.Fatal(err)
		}
		if r := e.lastReply(t, saga); r.Outcome != wire.OutcomeFailure || r.Attempt != 2 {
			t.Fatalf("resend: reply %+v", r)
		}
		// The forward was refused, so compensating it runs nothing; record a success by hand
		// so the compensation handler runs, and panics.
		ran := uuid.New()
		if _, err := e.db.Pool.Exec(ctx, `INSERT INTO "sagabox"."saga_barrier" ("saga_id", "step", "op", "outcome") VALUES ($1, 'payment', 'forward', 'success')`, ran); err != nil {
			t.Fatal(err)
		}
		err = handle(command(ran, wire.OpCompensate, 1, 1))
		if !consumer.IsPermanent(err) || !strings.Contains(err.Error(), "handler panicked") || !strings.Contains(err.Error(), "participants_test.go") {
			t.Fatalf("a panicking compensation must be a permanent error with the stack, got %v", err)
		}
	})

	t.Run("UnknownAndMalformedCommandsArePermanent", func(t *testing.T) {
		t.Parallel()
		ctx := context.Background()
		cmd := command(uuid.New(), wire.OpForward, 1, 1)
		cmd.Name = "payment.teleport"
		err := pgx.BeginFunc(ctx, e.db.Pool, func(tx pgx.Tx) error { return e.p.HandleCommand(ctx, tx, cmd) })
		if !errors.Is(err, participants.ErrUnknownCommand) || !consumer.IsPermanent(err) || !strings.Contains(err.Error(), "payment.teleport") {
			t.Fatalf("unknown command: err = %v", err)
		}
		err = pgx.BeginFunc(ctx, e.db.Pool, func(tx pgx.Tx) error {
			return e.p.HandleMessage(ctx, tx, consumer.Message{Headers: map[string]string{"saga-id": "x"}})
		})
		if !errors.Is(err, wire.ErrMalformed) || !consumer.IsPermanent(err) {
			t.Fatalf("malformed command: err = %v", err)
		}
		bad := command(uuid.New(), wire.OpForward, 1, 1)
		bad.ReplyTo = "not a topic"
		err = pgx.BeginFunc(ctx, e.db.Pool, func(tx pgx.Tx) error { return e.p.HandleCommand(ctx, tx, bad) })
		if !errors.Is(err, outbox.ErrInvalidTopic) || !consumer.IsPermanent(err) {
			t.Fatalf("bad reply topic: err = %v", err)
		}
	})
}

func TestConfig(t *testing.T) {
	t.Parallel()
	db := testenv.NewDB(t)
	if _, err := participants.New(db.Pool, participants.Config{Schema: "Bad"}); !errors.Is(err, participants.ErrInvalidConfig) {
		t.Fatalf("bad schema: err = %v", err)
	}
	_, err := participants.New(db.Pool, participants.Config{GroupID: "payments"})
	if !errors.Is(err, participants.ErrInvalidConfig) || !strings.Contains(err.Error(), "Brokers is empty") || !strings.Contains(err.Error(), "Topics is empty") {
		t.Fatalf("partial Kafka settings: err = %v", err)
	}
	p, err := participants.New(db.Pool, participants.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Run(context.Background()); !errors.Is(err, participants.ErrInvalidConfig) {
		t.Fatalf("Run without Kafka settings: err = %v", err)
	}
	defer func() {
		if recover() == nil {
			t.Fatal("registering a command twice must panic")
		}
	}()
	h := func(context.Context, pgx.Tx, wire.Command) ([]byte, error) { return nil, nil }
	p.Handle("x", h).Handle("x", h)
}

// TestOverKafka delivers every command twice, in orders that matter, through the
// real consumer loop, and checks each business effect happened once.
func TestOverKafka(t *testing.T) {
	t.Parallel()
	k := testenv.NewKafka(t)
	topic := testenv.Topic("payment.commands")
	k.CreateTopic(t, topic, 3)
	group := testenv.Topic("payments")
	e := setup(t, participants.Config{
		Brokers: k.Brokers, GroupID: group, CommandTopics: []string{topic},
		Consumer: consumer.Config{SessionTimeout: time.Second, HeartbeatInterval: 100 * time.Millisecond, RebalanceTimeout: time.Second,
			JoinGroupBackoff: 100 * time.Millisecond, MaxWait: 100 * time.Millisecond, CommitInterval: 20 * time.Millisecond},
	})

	type sagaCase struct {
		id      uuid.UUID
		order   []wire.Command // delivered in this order, then all again
		balance int64
		charges int
		refunds int
		replies []wire.Outcome // distinct deliveries' outcomes in order
	}
	fwd := func(id uuid.UUID, amount int64) wire.Command { return command(id, wire.OpForward, 1, amount) }
	cmp := func(id uuid.UUID, amount int64) wire.Command { return command(id, wire.OpCompensate, 1, amount) }
	a, b, c, d := uuid.New(), uuid.New(), uuid.New(), uuid.New()
	cases := []sagaCase{
		{id: a, order: []wire.Command{fwd(a, 30)}, balance: 70, charges: 1,
			replies: []wire.Outcome{wire.OutcomeSuccess}},
		{id: b, order: []wire.Command{cmp(b, 30), fwd(b, 30)}, balance: 100, // null compensation, then hanging
			replies: []wire.Outcome{wire.OutcomeSuccess, wire.OutcomeIgnored}},
		{id: c, order: []wire.Command{fwd(c, 30), cmp(c, 30)}, balance: 100, charges: 1, refunds: 1,
			replies: []wire.Outcome{wire.OutcomeSuccess, wire.OutcomeSuccess}},
		{id: d, order: []wire.Command{fwd(d, 500), cmp(d, 500)}, balance: 100, charges: 1,
			replies: []wire.Outcome{wire.OutcomeFailure, wire.OutcomeSuccess}},
	}
	var records []kafkatest.Record
	for round := range 2 {
		for _, sc := range cases {
			for i, cmd := range sc.order {
				m := cmd.Message(topic)
				m.ID = uuid.NewSHA1(sc.id, []byte{byte(i)}) // the same message id in both rounds: a redelivery
				records = append(records, kafkatest.FromOutbox(m, int(sc.id[0])%3))
			}
		}
		if round == 0 {
			kafkatest.Produce(t, k.Brokers, topic, records...)
			records = nil
		}
	}
	// Second round: the same records again, plus each forward under a new message id
	// (an orchestrator resend), so both the inbox and the barrier are exercised.
	for _, sc := range cases {
		m := sc.order[len(sc.order)-1].Message(topic)
		records = append(records, kafkatest.FromOutbox(m, int(sc.id[0])%3))
	}

	// A barrier row from long ago, for Run's sweep.
	ancient := uuid.New()
	if _, err := e.db.Pool.Exec(context.Background(), `INSERT INTO "sagabox"."saga_barrier" ("saga_id", "step", "op", "outcome", "created_at") VALUES ($1, 'payment', 'forward', 'success', now() - interval '90 days')`, ancient); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.p.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v", err)
		}
	}()
	kafkatest.Produce(t, k.Brokers, topic, records...)
	kafkatest.WaitCommitted(t, k.Brokers, group, topic, 3, time.Minute)

	kafkatest.Poll(t, time.Minute, func() bool {
		var n int
		if err := e.db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM "sagabox"."saga_barrier" WHERE "saga_id" = $1`, ancient).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n == 0
	}, func() string {
		return "the 90-day-old barrier row was not swept (BarrierRetention defaults to 30 days)"
	})
	var recent int
	if err := e.db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM "sagabox"."saga_barrier"`).Scan(&recent); err != nil || recent != 7 {
		t.Fatalf("%d barrier rows left (%v), want the 7 recent ones: a, b×2, c×2, d×2", recent, err)
	}
	for i, sc := range cases {
		if bal := e.balance(t, sc.id); bal != sc.balance {
			t.Errorf("saga %d: balance %d, want %d", i, bal, sc.balance)
		}
		if ch, rf := e.w.calls(sc.id); ch != sc.charges || rf != sc.refunds {
			t.Errorf("saga %d: charge ran %d, refund %d times; want %d, %d", i, ch, rf, sc.charges, sc.refunds)
		}
		rows, err := e.db.Pool.Query(context.Background(), `SELECT "headers"->>'saga-outcome' FROM "sagabox"."outbox_messages" WHERE "topic" = $1 AND "key" = $2 ORDER BY "seq"`, replyTopic, sc.id.String())
		if err != nil {
			t.Fatal(err)
		}
		got, err := pgx.CollectRows(rows, pgx.RowTo[wire.Outcome])
		if err != nil {
			t.Fatal(err)
		}
		// One reply per distinct delivery (the inbox drops redeliveries), then one for the resend.
		want := append(append([]wire.Outcome{}, sc.replies...), sc.replies[len(sc.replies)-1])
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("saga %d: replies %v, want %v", i, got, want)
		}
	}
}

// TestBarrierSweepKeepsForwardRowsOfFailedSagas: a failed saga (its compensation gave
// up) waits for an operator Retry, which resumes the compensation. Its forward rows are
// older than BarrierRetention by then; swept, the refund would be a null compensation
// and undo nothing. The sweep keeps the rows of sagas the orchestrator has not finished.
func TestBarrierSweepKeepsForwardRowsOfFailedSagas(t *testing.T) {
	t.Parallel()
	e := setup(t, participants.Config{})
	ctx := context.Background()
	saga := func(status string) uuid.UUID {
		id := uuid.New()
		if _, err := e.db.Pool.Exec(ctx, `INSERT INTO "sagabox"."saga_instances" ("id", "type", "status", "payload", "created_at", "updated_at")
			VALUES ($1, 'order', $2, '{}', now() - interval '60 days', now() - interval '60 days')`, id, status); err != nil {
			t.Fatal(err)
		}
		expect(t, e.deliver(t, command(id, wire.OpForward, 1, 30)), wire.OutcomeSuccess, "")
		return id
	}
	failed, completed, elsewhere := saga("failed"), saga("completed"), uuid.New() // elsewhere: orchestrator in another database
	expect(t, e.deliver(t, command(elsewhere, wire.OpForward, 1, 30)), wire.OutcomeSuccess, "")
	if _, err := e.db.Pool.Exec(ctx, `UPDATE "sagabox"."saga_barrier" SET "created_at" = now() - interval '60 days'`); err != nil {
		t.Fatal(err)
	}
	n, err := e.p.SweepBarrier(ctx, time.Now().Add(-participants.DefaultBarrierRetention))
	if err != nil || n != 2 {
		t.Fatalf("swept %d rows (%v), want 2: the completed saga's and the one the orchestrator does not know", n, err)
	}
	// The operator retries the failed saga: its compensation refunds the charge.
	expect(t, e.deliver(t, command(failed, wire.OpCompensate, 1, 30)), wire.OutcomeSuccess, "")
	if _, refunds := e.w.calls(failed); refunds != 1 || e.balance(t, failed) != 100 {
		t.Fatalf("refund ran %d times, balance %d: the failed saga's compensation found no forward row", refunds, e.balance(t, failed))
	}
	if _, refunds := e.w.calls(completed); refunds != 0 {
		t.Fatal("the completed saga was refunded")
	}
}

// participants.New used to overwrite Consumer.Brokers (and GroupID, Topics, Name, Schema)
// with the outer fields without a word; like sagastate it now fills what is empty and
// rejects what contradicts.
func TestConsumerConfigContradictingOuterFieldsIsRejected(t *testing.T) {
	t.Parallel()
	db := testenv.NewDB(t)
	base := func() participants.Config {
		return participants.Config{Brokers: []string{"127.0.0.1:1"}, GroupID: "payments", CommandTopics: []string{"payments.commands"}}
	}
	for name, tc := range map[string]struct {
		change func(*participants.Config)
		want   string
	}{
		"Brokers": {func(c *participants.Config) { c.Consumer.Brokers = []string{"elsewhere:9092"} }, "Consumer.Brokers"},
		"GroupID": {func(c *participants.Config) { c.Consumer.GroupID = "other" }, "Consumer.GroupID"},
		"Topics":  {func(c *participants.Config) { c.Consumer.Topics = []string{"other.commands"} }, "Consumer.Topics"},
		"Name":    {func(c *participants.Config) { c.Consumer.Name = "other" }, "Consumer.Name"},
		"Schema":  {func(c *participants.Config) { c.Consumer.Schema = "other" }, "Consumer.Schema"},
	} {
		t.Run(name, func(t *testing.T) {
			cfg := base()
			tc.change(&cfg)
			_, err := participants.New(db.Pool, cfg)
			if !errors.Is(err, participants.ErrInvalidConfig) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New with a contradicting %s: err = %v; want ErrInvalidConfig naming %s", tc.want, err, tc.want)
			}
		})
	}
	t.Run("SameValuesAccepted", func(t *testing.T) {
		cfg := base()
		cfg.Consumer.Brokers, cfg.Consumer.GroupID, cfg.Consumer.Topics = cfg.Brokers, cfg.GroupID, cfg.CommandTopics
		if _, err := participants.New(db.Pool, cfg); err != nil {
			t.Fatalf("New with agreeing Consumer fields: %v", err)
		}
	})
}

// TestBatchDecidesEveryCommandAsAlone runs commands of every barrier case in one
// transaction (HandleMessages, what Run uses for a shared consumer transaction): each
// is decided as it would be alone, a refused or failing one rolls back only its own
// writes, and a failed statement does not abort its neighbours.
func TestBatchDecidesEveryCommandAsAlone(t *testing.T) {
	t.Parallel()
	e := setup(t, participants.Config{})
	ctx := context.Background()
	var (
		fresh, refused, failing, broken = uuid.New(), uuid.New(), uuid.New(), uuid.New()
		dup, nullCmp, cmpRefused, cmp   = uuid.New(), uuid.New(), uuid.New(), uuid.New()
		both, badArg                    = uuid.New(), uuid.New()
	)
	expect(t, e.deliver(t, command(dup, wire.OpForward, 1, 10)), wire.OutcomeSuccess, "")
	expect(t, e.deliver(t, command(cmpRefused, wire.OpForward, 1, 900)), wire.OutcomeFailure, "insufficient")
	expect(t, e.deliver(t, command(cmp, wire.OpForward, 1, 40)), wire.OutcomeSuccess, "")
	e.w.mu.Lock()
	e.w.failNext[failing] = errors.New("upstream said no")
	e.w.mu.Unlock()
	overflow := command(broken, wire.OpForward, 1, 0)
	overflow.Payload = []byte(`{"amount":-2147483648}`) // 100 - amount: integer out of range, which aborts the transaction
	// An argument pgx cannot encode must stay the handler's error: sent in one batch with
	// earlier statements, pgx would close the connection instead.
	unencodable := command(badArg, wire.OpForward, 1, 0)
	unencodable.Payload = []byte(`{"amount":-9223372036854775808}`)
	cmds := []wire.Command{
		command(fresh, wire.OpForward, 1, 30),
		command(refused, wire.OpForward, 1, 500),
		overflow,
		unencodable,
		command(failing, wire.OpForward, 1, 20),
		command(dup, wire.OpForward, 2, 10),
		command(nullCmp, wire.OpCompensate, 1, 10),
		command(cmpRefused, wire.OpCompensate, 1, 900),
		command(cmp, wire.OpCompensate, 1, 40),
	}
	msgs := make([]consumer.Message, len(cmds))
	for i, c := range cmds {
		m := c.Message("payment.commands")
		msgs[i] = consumer.Message{Headers: m.Headers, Value: m.Payload}
	}
	if err := pgx.BeginFunc(ctx, e.db.Pool, func(tx pgx.Tx) error { return e.p.HandleMessages(ctx, tx, msgs) }); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		saga    uuid.UUID
		outcome wire.Outcome
		reason  string
		balance int64
		events  int
	}{
		{fresh, wire.OutcomeSuccess, "", 70, 1},
		{refused, wire.OutcomeFailure, "insufficient funds: 400 short", 100, 0},
		{broken, wire.OutcomeRetryable, "out of range", 100, 0},
		{badArg, wire.OutcomeRetryable, encodeFailure(e.db), 100, 0},
		{failing, wire.OutcomeRetryable, "upstream said no", 100, 0},
		{dup, wire.OutcomeSuccess, "", 90, 1},
		{nullCmp, wire.OutcomeSuccess, "", 100, 0},
		{cmpRefused, wire.OutcomeSuccess, "", 100, 0},
		{cmp, wire.OutcomeSuccess, "", 100, 1},
	} {
		expect(t, e.lastReply(t, c.saga), c.outcome, c.reason)
		if b, n := e.balance(t, c.saga), e.events(t, c.saga); b != c.balance || n != c.events {
			t.Errorf("saga %s: balance %d, %d events; want %d, %d", c.saga, b, n, c.balance, c.events)
		}
	}
	if r := e.lastReply(t, fresh); string(r.Payload) != `{"charged":30}` {
		t.Errorf("result %q", r.Payload)
	}
	if r := e.lastReply(t, dup); string(r.Payload) != `{"charged":10}` || r.Attempt != 2 {
		t.Errorf("duplicate: %+v, want the stored result for attempt 2", r)
	}
	if c, r := e.w.calls(dup); c != 1 || r != 0 {
		t.Errorf("duplicate ran charge %d times", c)
	}
	if c, r := e.w.calls(cmpRefused); c != 1 || r != 0 {
		t.Errorf("compensation of a refused step ran refund %d times", r)
	}
	// Afterwards: the failing and the broken steps run afresh, the refusal is
	// remembered, the null compensation makes the forward hanging.
	expect(t, e.deliver(t, command(failing, wire.OpForward, 2, 20)), wire.OutcomeSuccess, "")
	expect(t, e.deliver(t, command(broken, wire.OpForward, 2, 5)), wire.OutcomeSuccess, "")
	expect(t, e.deliver(t, command(refused, wire.OpForward, 2, 5)), wire.OutcomeFailure, "insufficient")
	expect(t, e.deliver(t, command(nullCmp, wire.OpForward, 1, 10)), wire.OutcomeIgnored, "hanging")

	// A forward and its compensation in one transaction are decided in turn.
	fwd, undo := command(both, wire.OpForward, 1, 25), command(both, wire.OpCompensate, 1, 25)
	var pair []consumer.Message
	for _, c := range []wire.Command{fwd, undo} {
		m := c.Message("payment.commands")
		pair = append(pair, consumer.Message{Headers: m.Headers, Value: m.Payload})
	}
	if err := pgx.BeginFunc(ctx, e.db.Pool, func(tx pgx.Tx) error { return e.p.HandleMessages(ctx, tx, pair) }); err != nil {
		t.Fatal(err)
	}
	if c, r := e.w.calls(both); c != 1 || r != 1 || e.balance(t, both) != 100 || e.replies(t, both) != 2 {
		t.Errorf("forward and compensation together: charge %d, refund %d, balance %d, %d replies; want 1, 1, 100, 2", c, r, e.balance(t, both), e.replies(t, both))
	}
}

// TestConcurrentDuplicateIsRetriedThenReplayed: the same command handled by two
// transactions at once (a redelivery during a rebalance) takes effect once. The
// barrier row is written after the handler, so the second transaction finds the
// first's row at its write: a transient error, so the consumer runs it again, and
// then it replies the stored answer.
func TestConcurrentDuplicateIsRetriedThenReplayed(t *testing.T) {
	t.Parallel()
	e := setup(t, participants.Config{})
	ctx := context.Background()
	saga := uuid.New()
	first, err := e.db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Rollback(ctx)
	if err := e.p.HandleCommand(ctx, first, command(saga, wire.OpForward, 1, 30)); err != nil {
		t.Fatal(err)
	}
	second := make(chan error, 1)
	go func() {
		second <- pgx.BeginFunc(ctx, e.db.Pool, func(tx pgx.Tx) error { return e.p.HandleCommand(ctx, tx, command(saga, wire.OpForward, 1, 30)) })
	}()
	// The second waits for the first's wallet row, then for its barrier row.
	waitFor(t, func() bool {
		var n int
		err := e.db.Pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&n)
		return err == nil && n > 0
	})
	if err := first.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	err = <-second
	if !consumer.IsTransient(err) || consumer.IsPermanent(err) {
		t.Fatalf("the concurrent duplicate must fail transiently (the consumer runs it again), got %v", err)
	}
	r := e.deliver(t, command(saga, wire.OpForward, 1, 30))
	expect(t, r, wire.OutcomeSuccess, "")
	if string(r.Payload) != `{"charged":30}` || e.balance(t, saga) != 70 || e.events(t, saga) != 1 || e.replies(t, saga) != 2 {
		t.Fatalf("result %q, balance %d, %d events, %d replies; want the stored result, 70, 1, 2", r.Payload, e.balance(t, saga), e.events(t, saga), e.replies(t, saga))
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 30s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// The barrier reads with sequential scans off and a generic plan; the handler runs
// with the transaction's own planner settings.
func TestHandlerRunsWithTheTransactionsPlannerSettings(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.NewDB(t)
	p, err := participants.New(db.Pool, participants.Config{})
	if err != nil {
		t.Fatal(err)
	}
	var mode, seq string
	p.Handle("payment.charge", func(ctx context.Context, tx pgx.Tx, cmd wire.Command) ([]byte, error) {
		return nil, tx.QueryRow(ctx, `SELECT current_setting('plan_cache_mode'), current_setting('enable_seqscan')`).Scan(&mode, &seq)
	})
	err = pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SET LOCAL plan_cache_mode = force_custom_plan`); err != nil {
			return err
		}
		return p.HandleCommand(ctx, tx, command(uuid.New(), wire.OpForward, 1, 1))
	})
	if err != nil {
		t.Fatal(err)
	}
	if mode != "force_custom_plan" || seq != "on" {
		t.Fatalf("the handler ran with plan_cache_mode %s, enable_seqscan %s; want force_custom_plan, on", mode, seq)
	}
}

// encodeFailure is the reason a handler's unencodable argument (an int64 for an
// integer) gives: pgx's own error where it encodes by the statement's parameter
// types, the server's where it sends text (the exec and simple_protocol modes).
func encodeFailure(db *testenv.DB) string {
	switch db.Pool.Config().ConnConfig.DefaultQueryExecMode {
	case pgx.QueryExecModeExec, pgx.QueryExecModeSimpleProtocol:
		return "out of range"
	}
	return "failed to encode"
}
