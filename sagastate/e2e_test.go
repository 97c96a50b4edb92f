package sagastate_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/sagabox/sagabox/internal/testenv"
	"github.com/sagabox/sagabox/outbox"
	"github.com/sagabox/sagabox/participants"
	"github.com/sagabox/sagabox/sagastate"
	"github.com/sagabox/sagabox/sagastate/sagatest"
	"github.com/sagabox/sagabox/wire"
)

// script tells the test participant how to behave for one saga.
type script struct {
	Fail     string         `json:"fail,omitempty"`      // this step's forward is refused (business failure)
	Hold     string         `json:"hold,omitempty"`      // this step's forward waits for the release signal
	UndoFail map[string]int `json:"undo_fail,omitempty"` // this step's compensation fails N times first
}

// fixture is one test's database, broker, participant and orchestrator.
type fixture struct {
	db       *testenv.DB
	env      *sagatest.Env
	release  chan struct{}
	mu       sync.Mutex
	undoSeen map[string]int
	traces   sync.Map // saga id + step → traceparent seen by the participant
	events   chan sagastate.Event
	hooked   sync.Map // saga id → *hookLog
}

// hookLog records the hook calls of one saga, as "started", "step a forward success", ...
type hookLog struct {
	mu    sync.Mutex
	calls []string
}

func (f *fixture) hook(id uuid.UUID, format string, args ...any) {
	l, _ := f.hooked.LoadOrStore(id, &hookLog{})
	h := l.(*hookLog)
	h.mu.Lock()
	defer h.mu.Unlock()
	h.calls = append(h.calls, fmt.Sprintf(format, args...))
}

func (f *fixture) hooks() sagastate.Hooks {
	return sagastate.Hooks{
		SagaStarted:      func(i sagastate.SagaInfo) { f.hook(i.ID, "started") },
		SagaCompensating: func(i sagastate.SagaInfo) { f.hook(i.ID, "compensating") },
		SagaFinished:     func(i sagastate.SagaInfo) { f.hook(i.ID, "finished %s", i.Status) },
		StepEnded:        func(i sagastate.StepInfo) { f.hook(i.SagaID, "step %s %s %s", i.Step, i.Op, i.Outcome) },
	}
}

// expectHooks waits until saga id's hooks reported its end, then compares every call.
func (f *fixture) expectHooks(t *testing.T, id uuid.UUID, want ...string) {
	t.Helper()
	var got []string
	for deadline := time.Now().Add(wait); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) { // hooks run after the commit Await saw
		if l, ok := f.hooked.Load(id); ok {
			h := l.(*hookLog)
			h.mu.Lock()
			got = slices.Clone(h.calls)
			h.mu.Unlock()
			if len(got) > 0 && strings.HasPrefix(got[len(got)-1], "finished") {
				break
			}
		}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("hook calls %q, want %q", got, want)
	}
}

const topic = "svc.commands"

var (
	linear = sagastate.Define[script]("linear",
		sagastate.Step("a", topic).Do("a.do").Undo("a.undo").UndoRetry(fastUndo),
		sagastate.Step("b", topic).Do("b.do").Undo("b.undo"),
		sagastate.Step("c", topic).Do("c.do").Undo("c.undo"),
	)
	// impatient gives b one attempt of one second: the timeout test holds b's participant.
	impatient = sagastate.Define[script]("impatient",
		sagastate.Step("a", topic).Do("a.do").Undo("a.undo"),
		sagastate.Step("b", topic).Do("b.do").Undo("b.undo").Timeout(time.Second).Retry(sagastate.RetryPolicy{MaxAttempts: 1}),
	)
	fanout = sagastate.Define[script]("fanout",
		sagastate.Step("a", topic).Do("a.do").Undo("a.undo"),
		sagastate.Parallel(
			sagastate.Step("b", topic).Do("b.do").Undo("b.undo"),
			sagastate.Step("c", topic).Do("c.do").Undo("c.undo"),
		),
		sagastate.Step("d", topic).Do("d.do").Undo("d.undo"),
	)
	fragile = sagastate.Define[script]("fragile",
		sagastate.Step("a", topic).Do("a.do").Undo("a.undo").UndoRetry(sagastate.RetryPolicy{MaxAttempts: 1}),
		sagastate.Step("c", topic).Do("c.do").Undo("c.undo"),
	)
	fastUndo = sagastate.RetryPolicy{MaxAttempts: 5, Backoff: 50 * time.Millisecond}
)

func setup(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{db: testenv.NewDB(t), release: make(chan struct{}), undoSeen: map[string]int{}, events: make(chan sagastate.Event, 1000)}
	k := testenv.NewKafka(t)
	ctx := context.Background()
	if _, err := f.db.Pool.Exec(ctx, `CREATE TABLE "effects" ("seq" bigserial, "saga_id" uuid, "step" text, "op" text)`); err != nil {
		t.Fatal(err)
	}
	p, err := participants.New(f.db.Pool, participants.Config{
		Brokers: k.Brokers, GroupID: "svc", CommandTopics: []string{topic}, Consumer: sagatest.FastConsumer(),
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range []string{"a", "b", "c", "d"} {
		p.Step(st+".do", f.handler(st, wire.OpForward), st+".undo", f.handler(st, wire.OpCompensate))
	}
	f.env = sagatest.Start(t, f.db.Pool, k.Brokers, sagatest.Config{
		Orchestrator: sagastate.Config{
			Sagas:     []sagastate.Definition{linear, impatient, fanout, fragile},
			Listeners: []sagastate.Listener{func(e sagastate.Event) { f.events <- e }},
			Hooks:     f.hooks(),
		},
		Participants: []sagatest.Runner{p},
		Topics:       []string{topic},
	})
	return f
}

func (f *fixture) handler(step string, op wire.Op) participants.Handler {
	return func(ctx context.Context, tx pgx.Tx, cmd wire.Command) ([]byte, error) {
		f.traces.Store(cmd.SagaID.String()+step, cmd.Headers["traceparent"])
		var s script
		if err := json.Unmarshal(cmd.Payload, &s); err != nil {
			return nil, participants.Fail("bad payload: " + err.Error())
		}
		if op == wire.OpForward && s.Hold == step {
			select {
			case <-f.release:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		if op == wire.OpForward && s.Fail == step {
			return nil, participants.Fail("refused " + step)
		}
		if op == wire.OpCompensate && s.UndoFail[step] > 0 {
			f.mu.Lock()
			key := cmd.SagaID.String() + step
			f.undoSeen[key]++
			n := f.undoSeen[key]
			f.mu.Unlock()
			if n <= s.UndoFail[step] {
				return nil, fmt.Errorf("undo %s unavailable (%d)", step, n)
			}
		}
		_, err := tx.Exec(ctx, `INSERT INTO "effects" ("saga_id", "step", "op") VALUES ($1, $2, $3)`, cmd.SagaID, step, string(op))
		return []byte(`{"done":"` + step + `"}`), err
	}
}

// effects lists what the participant did for saga id, in order, as "step:op".
func (f *fixture) effects(t *testing.T, id uuid.UUID) []string {
	t.Helper()
	rows, err := f.db.Pool.Query(context.Background(), `SELECT "step" || ':' || "op" FROM "effects" WHERE "saga_id" = $1 ORDER BY "seq"`, id)
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func (f *fixture) expectEffects(t *testing.T, id uuid.UUID, want ...string) {
	t.Helper()
	if got := f.effects(t, id); !slices.Equal(got, want) {
		s, _ := f.env.Orchestrator.Get(context.Background(), id)
		t.Fatalf("effects %v, want %v\n%s", got, want, sagatest.Describe(s))
	}
}

const wait = 60 * time.Second

func TestSagaEndToEnd(t *testing.T) {
	t.Parallel()
	f := setup(t)
	o := f.env.Orchestrator

	t.Run("HappyPath", func(t *testing.T) {
		const trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
		id := uuid.New()
		ctx := sagastate.WithTraceContext(context.Background(), map[string]string{"traceparent": trace})
		// The typed start: linear is a Saga[script], so only a script compiles here.
		if err := pgx.BeginFunc(ctx, f.db.Pool, func(tx pgx.Tx) error { return linear.Start(ctx, tx, o, id, script{}) }); err != nil {
			t.Fatal(err)
		}
		s := f.env.Await(t, id, wait)
		if got, _ := f.traces.Load(id.String() + "c"); got != trace {
			t.Fatalf("the last step's command carries traceparent %q, want %q", got, trace)
		}
		if s.Status != sagastate.SagaCompleted {
			t.Fatalf("saga:\n%s", sagatest.Describe(s))
		}
		f.expectEffects(t, id, "a:forward", "b:forward", "c:forward")
		for _, st := range s.Steps {
			if st.Status != sagastate.StepCompleted || string(st.Result) != `{"done":"`+st.Name+`"}` {
				t.Fatalf("step %+v", st)
			}
		}
		if last := s.Events[len(s.Events)-1]; last.Type != sagastate.EventSagaCompleted {
			t.Fatalf("last event %+v", last)
		}
		f.expectHooks(t, id, "started", "step a forward success", "step b forward success", "step c forward success", "finished completed")
	})

	t.Run("FailureAtEachStepCompensatesCompletedStepsInReverse", func(t *testing.T) {
		want := map[string][]string{
			"a": {},
			"b": {"a:forward", "a:compensate"},
			"c": {"a:forward", "b:forward", "b:compensate", "a:compensate"},
		}
		ids := map[string]uuid.UUID{}
		for step := range want {
			ids[step] = f.env.StartSaga(t, "linear", script{Fail: step})
		}
		for step, id := range ids {
			s := f.env.Await(t, id, wait)
			if s.Status != sagastate.SagaCompensated || s.Step(step).Status != sagastate.StepFailed {
				t.Fatalf("fail at %s:\n%s", step, sagatest.Describe(s))
			}
			f.expectEffects(t, id, want[step]...)
		}
		f.expectHooks(t, ids["b"], "started", "step a forward success", "step b forward failure", "compensating",
			"step a compensate success", "finished compensated")
	})

	t.Run("ParallelStageOneBranchFails", func(t *testing.T) {
		id := f.env.StartSaga(t, "fanout", script{Fail: "c"})
		s := f.env.Await(t, id, wait)
		if s.Status != sagastate.SagaCompensated || s.Step("d").Status != sagastate.StepPending || s.Step("c").Status != sagastate.StepFailed {
			t.Fatalf("saga:\n%s", sagatest.Describe(s))
		}
		// b ran in parallel with c; it is undone before a, whatever order b and c answered in.
		f.expectEffects(t, id, "a:forward", "b:forward", "b:compensate", "a:compensate")
	})

	t.Run("CompensationFailsTwiceThenSucceeds", func(t *testing.T) {
		id := f.env.StartSaga(t, "linear", script{Fail: "c", UndoFail: map[string]int{"a": 2}})
		s := f.env.Await(t, id, wait)
		if s.Status != sagastate.SagaCompensated {
			t.Fatalf("saga:\n%s", sagatest.Describe(s))
		}
		f.expectEffects(t, id, "a:forward", "b:forward", "b:compensate", "a:compensate")
		var failedUndos int
		for _, e := range s.Events {
			if e.Type == sagastate.EventStepFailed && e.Step == "a" && e.Op == wire.OpCompensate {
				failedUndos++
			}
		}
		if failedUndos != 2 || s.Step("a").Attempt != 3 {
			t.Fatalf("want 2 failed compensations and a third attempt:\n%s", sagatest.Describe(s))
		}
	})

	t.Run("CompensationGivesUpThenOperatorRetries", func(t *testing.T) {
		id := f.env.StartSaga(t, "fragile", script{Fail: "c", UndoFail: map[string]int{"a": 1}})
		s := f.env.Await(t, id, wait)
		if s.Status != sagastate.SagaFailed || !strings.Contains(s.LastError, "compensation of step a") {
			t.Fatalf("saga:\n%s", sagatest.Describe(s))
		}
		stuck, err := o.List(context.Background(), sagastate.Filter{Statuses: []sagastate.SagaStatus{sagastate.SagaFailed}})
		if err != nil || len(stuck) != 1 || stuck[0].ID != id {
			t.Fatalf("List(failed) = %v, %v", stuck, err)
		}
		if err := o.Abort(context.Background(), uuid.New(), "x"); !errors.Is(err, sagastate.ErrNotFound) {
			t.Fatalf("abort unknown: %v", err)
		}
		if err := o.Retry(context.Background(), id); err != nil {
			t.Fatal(err)
		}
		s = f.env.Await(t, id, wait)
		if s.Status != sagastate.SagaCompensated {
			t.Fatalf("after retry:\n%s", sagatest.Describe(s))
		}
		f.expectEffects(t, id, "a:forward", "a:compensate")
		if err := o.Retry(context.Background(), id); !errors.Is(err, sagastate.ErrNotFailed) {
			t.Fatalf("retry of a compensated saga: %v", err)
		}
	})

	t.Run("TimeoutThenLateSuccessIsCompensated", func(t *testing.T) {
		id := f.env.StartSaga(t, "impatient", script{Hold: "b"})
		s := sagatest.AwaitStatus(t, o, id, wait, sagastate.SagaTimeout)
		if s.Step("b").Status != sagastate.StepCompensating {
			t.Fatalf("after the timeout:\n%s", sagatest.Describe(s))
		}
		close(f.release) // b's forward now runs, late: its success reply is stale
		s = f.env.Await(t, id, wait)
		if s.Status != sagastate.SagaCompensated {
			t.Fatalf("saga:\n%s", sagatest.Describe(s))
		}
		f.expectEffects(t, id, "a:forward", "b:forward", "b:compensate", "a:compensate")
		var timedOut bool
		for _, e := range s.Events {
			timedOut = timedOut || (e.Type == sagastate.EventStepFailed && e.Step == "b" && strings.Contains(e.Detail, "timeout"))
		}
		if !timedOut {
			t.Fatalf("no timeout in the log:\n%s", sagatest.Describe(s))
		}
	})

	t.Run("ReplyForUnknownSagaIsDeadLettered", func(t *testing.T) {
		ghost := uuid.New()
		err := pgx.BeginFunc(context.Background(), f.db.Pool, func(tx pgx.Tx) error {
			r := wire.Reply{SagaID: ghost, Step: "a", Op: wire.OpForward, Attempt: 1, Outcome: wire.OutcomeSuccess}
			return outbox.Enqueue(context.Background(), tx, r.Message(o.Config().ReplyTopic))
		})
		if err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(wait)
		for {
			var reason string
			err := f.db.Pool.QueryRow(context.Background(), `SELECT "reason" FROM sagabox.inbox_dead_letters WHERE "consumer" = $1 AND "headers"->>'saga-id' = $2`,
				o.Config().GroupID, ghost.String()).Scan(&reason)
			if err == nil {
				if !strings.Contains(reason, "saga not found") || !strings.Contains(reason, ghost.String()) {
					t.Fatalf("dead letter reason %q", reason)
				}
				break
			}
			if !errors.Is(err, pgx.ErrNoRows) {
				t.Fatal(err)
			}
			if time.Now().After(deadline) {
				t.Fatal("the reply for an unknown saga was not dead-lettered")
			}
			time.Sleep(20 * time.Millisecond) // polling for the dead letter
		}
	})

	t.Run("ListenersAndStats", func(t *testing.T) {
		id := f.env.StartSaga(t, "linear", script{})
		f.env.Await(t, id, wait)
		deadline := time.After(wait)
		for done := false; !done; {
			select {
			case e := <-f.events:
				done = e.SagaID == id && e.Type == sagastate.EventSagaCompleted
			case <-deadline:
				t.Fatal("listener never saw saga_completed")
			}
		}
		st, err := o.Stats(context.Background(), "", time.Time{})
		if err != nil {
			t.Fatal(err)
		}
		if st.Counts[sagastate.SagaCompleted] < 2 || st.Counts[sagastate.SagaCompensated] < 5 || st.CompensationRate <= 0 ||
			st.TimeToConsistencyP50 <= 0 || st.TimeToConsistencyP99 < st.TimeToConsistencyP50 {
			t.Fatalf("stats %+v", st)
		}
	})
}

func TestStartRejectsBadInput(t *testing.T) {
	t.Parallel()
	db := testenv.NewDB(t)
	o, err := sagastate.New(db.Pool, sagastate.Config{Sagas: []sagastate.Definition{linear}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	start := func(typ string, id uuid.UUID, payload any) error {
		return pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error { return o.Start(ctx, tx, typ, id, payload) })
	}
	for name, c := range map[string]struct {
		typ     string
		id      uuid.UUID
		payload any
		want    error
	}{
		"UnknownType":    {"nope", uuid.New(), script{}, sagastate.ErrUnknownSagaType},
		"NotJSON":        {"linear", uuid.New(), []byte("{"), sagastate.ErrInvalidPayload},
		"WrongShape":     {"linear", uuid.New(), []byte(`{"fail": 3}`), sagastate.ErrInvalidPayload},
		"NilID":          {"linear", uuid.Nil, script{}, sagastate.ErrInvalidPayload},
		"Unmarshallable": {"linear", uuid.New(), func() {}, sagastate.ErrInvalidPayload},
	} {
		if err := start(c.typ, c.id, c.payload); !errors.Is(err, c.want) {
			t.Errorf("%s: err = %v, want %v", name, err, c.want)
		}
	}
	id := uuid.New()
	if err := start("linear", id, script{}); err != nil {
		t.Fatal(err)
	}
	// A duplicate is refused before anything of it is written, so even a caller that
	// commits anyway changes nothing.
	err = pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		if err := o.Start(ctx, tx, "linear", id, script{Fail: "a"}); !errors.Is(err, sagastate.ErrDuplicate) {
			t.Errorf("duplicate: %v", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var sagas, msgs int
	if err = db.Pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM sagabox.saga_instances), (SELECT count(*) FROM sagabox.outbox_messages)`).Scan(&sagas, &msgs); err != nil {
		t.Fatal(err)
	}
	if sagas != 1 || msgs != 1 {
		t.Fatalf("%d sagas and %d commands written, want only the good one's", sagas, msgs)
	}
	if s, err := o.Get(ctx, id); err != nil || string(s.Payload) != `{}` || s.Version != 1 || len(s.Events) != 2 {
		t.Fatalf("the first saga changed: %+v, %v", s, err)
	}
	// A reply for a saga that does not exist changes nothing and says so.
	err = pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		return o.HandleReply(ctx, tx, wire.Reply{SagaID: uuid.New(), Step: "a", Op: wire.OpForward, Attempt: 1, Outcome: wire.OutcomeSuccess})
	})
	if !errors.Is(err, sagastate.ErrNotFound) {
		t.Fatalf("reply for unknown saga: %v", err)
	}
	err = pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		return o.HandleReply(ctx, tx, wire.Reply{SagaID: id, Step: "zz", Op: wire.OpForward, Attempt: 1, Outcome: wire.OutcomeSuccess})
	})
	if !errors.Is(err, sagastate.ErrUnknownStep) {
		t.Fatalf("reply for unknown step: %v", err)
	}
	bad := sagastate.Config{Sagas: []sagastate.Definition{linear, linear}, ReplyTopic: "bad topic!", SweepBatch: -1}
	bad.Consumer.GroupID = "other"
	bad.Consumer.Brokers = []string{"elsewhere:9092"} // contradicts the empty Brokers
	_, err = sagastate.New(db.Pool, bad)
	if !errors.Is(err, sagastate.ErrInvalidConfig) {
		t.Fatalf("bad config: %v", err)
	}
	for _, want := range []string{"twice", "ReplyTopic", "SweepBatch", "Consumer.GroupID", "Consumer.Brokers"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("config error does not mention %s: %v", want, err)
		}
	}
}
