package sagastate

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/sagabox/sagabox/inbox/consumer"
	"github.com/sagabox/sagabox/internal/kafkatest"
	"github.com/sagabox/sagabox/internal/testenv"
	"github.com/sagabox/sagabox/wire"
)

// The reply consumer's transaction reads the saga with its BEGIN and writes it with its
// COMMIT; the version check travels in the COMMIT's statement. A saga row changed after
// the read (here by the handler's own transaction, which holds the lock) fails the
// commit by itself: nothing of the transaction commits, the consumer runs it again as a
// transient error (no attempt spent), and the second run, which reads the row again
// instead of trusting the remembered steps, applies the reply once.
func TestReplyWrittenAtCommitFailsWhenTheSagaMovedSinceItsRead(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db, k := testenv.NewDB(t), testenv.NewKafka(t)
	def := Define[map[string]any]("two", Step("a", "two.cmds").Do("a.do").Undo("a.undo"), Step("b", "two.cmds").Do("b.do").Undo("b.undo"))
	o, err := New(db.Pool, Config{Sagas: []Definition{def}})
	if err != nil {
		t.Fatal(err)
	}
	id := uuid.New()
	if err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error { return o.Start(ctx, tx, "two", id, map[string]any{}) }); err != nil {
		t.Fatal(err)
	}
	topic := testenv.Topic("replies")
	k.CreateTopic(t, topic, 1)
	var mu sync.Mutex
	var local []error
	var handlerRetries, runs atomic.Int64
	cc := consumer.Config{Brokers: k.Brokers, GroupID: "orch", Topics: []string{topic},
		SessionTimeout: 2 * time.Second, HeartbeatInterval: 200 * time.Millisecond, RebalanceTimeout: 2 * time.Second,
		JoinGroupBackoff: 200 * time.Millisecond, CommitInterval: 100 * time.Millisecond,
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 500 * time.Millisecond}
	cc.Hooks.LocalRetry = func(_ string, _ int, err error) { mu.Lock(); local = append(local, err); mu.Unlock() }
	cc.Hooks.Retry = func(consumer.Message, int, error) { handlerRetries.Add(1) }
	notes := &pendingNotes{m: map[uuid.UUID]func(){}}
	c, err := consumer.NewBatch(db.Pool, cc, func(ctx context.Context, tx pgx.Tx, msgs []consumer.Message) error {
		if runs.Add(1) == 1 { // after the prefetched read, before the write
			if _, err := tx.Exec(ctx, `UPDATE "sagabox"."saga_instances" SET "version" = "version" + 1 WHERE "id" = $1`, id); err != nil {
				return err
			}
		}
		return o.handleReplies(ctx, tx, msgs, notes)
	})
	if err != nil {
		t.Fatal(err)
	}
	c.Prefetch(o.prefetch)
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- c.Run(runCtx) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()

	reply := wire.Reply{SagaID: id, Step: "a", Op: wire.OpForward, Attempt: 1, Outcome: wire.OutcomeSuccess, Payload: []byte(`{}`)}
	kafkatest.Produce(t, k.Brokers, topic, kafkatest.FromOutbox(reply.Message(topic), 0))
	var s *Instance
	kafkatest.Poll(t, 30*time.Second, func() bool {
		s, err = o.Get(ctx, id)
		return err == nil && s.Version == 2
	}, func() string { return "the reply applied" })
	if s.Steps[0].Status != StepCompleted || s.Steps[1].Status != StepExecuting {
		t.Fatalf("steps after the reply: %+v", s.Steps)
	}
	if got := stepEvents(s.Events, EventStepCompleted); got != 1 {
		t.Fatalf("%d step_completed events, want 1 (the first run must not have committed)", got)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(local) == 0 || !errors.Is(local[0], ErrConcurrentUpdate) || !consumer.IsTransient(local[0]) {
		t.Fatalf("local retries %v, want a transient ErrConcurrentUpdate first", local)
	}
	if n := handlerRetries.Load(); n != 0 {
		t.Fatalf("%d handler retries, want none (the conflict spends no attempt)", n)
	}
	if runs.Load() < 2 {
		t.Fatalf("handler ran %d times, want a second run", runs.Load())
	}
}

func stepEvents(evs []Event, typ EventType) int {
	n := 0
	for _, e := range evs {
		if e.Type == typ {
			n++
		}
	}
	return n
}
