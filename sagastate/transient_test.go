package sagastate_test

import (
	"context"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/sagabox/sagabox/internal/testenv"
	"github.com/sagabox/sagabox/participants"
	"github.com/sagabox/sagabox/sagastate"
	"github.com/sagabox/sagabox/sagastate/sagatest"
	"github.com/sagabox/sagabox/wire"
)

// Deadlocks and serialization failures inside the orchestrator's transaction are the
// consumer's to retry: the saga sees none of them, and no step is sent twice.
func TestTransientErrorsInTheOrchestratorNeverReachTheSaga(t *testing.T) {
	t.Parallel()
	db, k := testenv.NewDB(t), testenv.NewKafka(t)
	p, err := participants.New(db.Pool, participants.Config{Brokers: k.Brokers, GroupID: "svc", CommandTopics: []string{topic}, Consumer: sagatest.FastConsumer()})
	if err != nil {
		t.Fatal(err)
	}
	ok := func(context.Context, pgx.Tx, wire.Command) ([]byte, error) { return []byte(`{}`), nil }
	for _, st := range []string{"a", "b", "c"} {
		p.Step(st+".do", ok, st+".undo", ok)
	}
	env := sagatest.Start(t, db.Pool, k.Brokers, sagatest.Config{
		Orchestrator: sagastate.Config{Sagas: []sagastate.Definition{linear}},
		Participants: []sagatest.Runner{p},
		Topics:       []string{topic},
	})
	var injected atomic.Int64
	codes := []string{"40P01", "40001", "40P01", "40001", "40P01", "40001"}
	sagastate.SetCrashHook(env.Orchestrator, func(point string) error {
		if n := injected.Add(1); n <= int64(len(codes)) {
			return &pgconn.PgError{Code: codes[n-1], Message: "injected by the test"}
		}
		return nil
	})
	id := env.StartSaga(t, "linear", script{})
	s := env.Await(t, id, wait)
	if s.Status != sagastate.SagaCompleted {
		t.Fatalf("saga:\n%s", sagatest.Describe(s))
	}
	for _, e := range s.Events {
		if e.Type == sagastate.EventStepFailed || e.Attempt > 1 {
			t.Fatalf("a transient error reached the saga:\n%s", sagatest.Describe(s))
		}
	}
	if injected.Load() < int64(len(codes)) {
		t.Fatalf("only %d transient errors injected", injected.Load())
	}
}
