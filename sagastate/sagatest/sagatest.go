package sagatest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/segmentio/kafka-go"

	"github.com/sagabox/sagabox/inbox/consumer"
	"github.com/sagabox/sagabox/relay"
	"github.com/sagabox/sagabox/relay/kafkapub"
	"github.com/sagabox/sagabox/sagastate"
)

// Runner is a service with a Run loop, such as a *participants.Participant.
type Runner interface {
	Run(ctx context.Context) error
}

// Config configures Start.
type Config struct {
	// Orchestrator configures the orchestrator under test. Defaults to sagastate's
	// defaults, except Brokers (Start's brokers), Consumer (FastConsumer(), keeping its
	// Concurrency and BatchSize) and SweepInterval (50ms).
	Orchestrator sagastate.Config
	// Participants run next to the orchestrator. Defaults to none.
	Participants []Runner
	// Topics are created (if missing) before anything starts, with the reply topic added.
	// Defaults to only the reply topic.
	Topics []string
	// Partitions of the created topics. Defaults to 4.
	Partitions int
	// NoRelay leaves publishing the outbox to someone else (your own relay). Defaults to
	// false: a relay runs.
	NoRelay bool
	// Relay configures the relay Start runs. Defaults to relay's defaults, except Schema
	// (the orchestrator's) and PollInterval (100ms).
	Relay relay.Config
}

// FastConsumer returns consumer settings that join a group and commit quickly, for tests
// (session timeouts below Kafka's usual minimum need a broker that allows them, such as
// the in-process kfake of internal/embedkafka).
func FastConsumer() consumer.Config {
	return consumer.Config{
		SessionTimeout: 2 * time.Second, HeartbeatInterval: 200 * time.Millisecond, RebalanceTimeout: 2 * time.Second,
		JoinGroupBackoff: 200 * time.Millisecond, CommitInterval: 100 * time.Millisecond,
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 500 * time.Millisecond,
	}
}

// Env is a running saga environment.
type Env struct {
	Orchestrator *sagastate.Orchestrator
	Pool         *pgxpool.Pool
	cancel       context.CancelFunc
	wg           sync.WaitGroup
}

// Start creates the topics and runs the relay, the orchestrator and the participants
// until t ends; an error from any of them fails t.
func Start(t testing.TB, pool *pgxpool.Pool, brokers []string, cfg Config) *Env {
	t.Helper()
	oc := cfg.Orchestrator
	if len(oc.Brokers) == 0 {
		oc.Brokers = brokers
	}
	if oc.SweepInterval == 0 {
		oc.SweepInterval = 50 * time.Millisecond
	}
	if oc.Consumer.SessionTimeout == 0 {
		fc := FastConsumer()
		fc.Concurrency, fc.BatchSize = oc.Consumer.Concurrency, oc.Consumer.BatchSize
		oc.Consumer = fc
	}
	o, err := sagastate.New(pool, oc)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Partitions == 0 {
		cfg.Partitions = 4
	}
	if err := CreateTopics(brokers, cfg.Partitions, append([]string{o.Config().ReplyTopic}, cfg.Topics...)...); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	e := &Env{Orchestrator: o, Pool: pool, cancel: cancel}
	run := func(name string, fn func(context.Context) error) {
		e.wg.Add(1)
		go func() {
			defer e.wg.Done()
			if err := fn(ctx); err != nil && ctx.Err() == nil {
				t.Errorf("sagatest: %s: %v", name, err)
			}
		}()
	}
	if !cfg.NoRelay {
		pub, err := kafkapub.New(kafkapub.Config{Brokers: brokers})
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		rc := cfg.Relay
		rc.Schema = o.Config().Schema
		if rc.PollInterval == 0 {
			rc.PollInterval = 100 * time.Millisecond
		}
		r, err := relay.New(pool, pub, rc)
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		run("relay", r.Run)
		t.Cleanup(func() { _ = pub.Close() })
	}
	run("orchestrator", o.Run)
	for i, p := range cfg.Participants {
		run(fmt.Sprintf("participant %d", i), p.Run)
	}
	t.Cleanup(e.Stop)
	return e
}

// Stop stops everything Start started and waits for it; safe to call twice.
func (e *Env) Stop() {
	e.cancel()
	e.wg.Wait()
}

// StartSaga starts a saga of sagaType with payload in a transaction of its own and
// returns its id.
func (e *Env) StartSaga(t testing.TB, sagaType string, payload any) uuid.UUID {
	t.Helper()
	id := uuid.New()
	err := pgx.BeginFunc(context.Background(), e.Pool, func(tx pgx.Tx) error {
		return e.Orchestrator.Start(context.Background(), tx, sagaType, id, payload)
	})
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// Await polls saga id until it is completed, compensated or failed, and returns it with
// its steps and log. It fails t after timeout, showing where the saga stands.
func (e *Env) Await(t testing.TB, id uuid.UUID, timeout time.Duration) *sagastate.Instance {
	t.Helper()
	return AwaitStatus(t, e.Orchestrator, id, timeout, sagastate.SagaCompleted, sagastate.SagaCompensated, sagastate.SagaFailed)
}

// AwaitStatus polls saga id until its status is one of want.
func AwaitStatus(t testing.TB, o *sagastate.Orchestrator, id uuid.UUID, timeout time.Duration, want ...sagastate.SagaStatus) *sagastate.Instance {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		s, err := o.Get(context.Background(), id)
		if err != nil && !errors.Is(err, sagastate.ErrNotFound) {
			t.Fatal(err)
		}
		if s != nil {
			for _, w := range want {
				if s.Status == w {
					return s
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("sagatest: saga %s not %v within %v; now:\n%s", id, want, timeout, Describe(s))
		}
		<-tick.C
	}
}

// Describe renders a saga, its steps and its log for failure messages.
func Describe(s *sagastate.Instance) string {
	if s == nil {
		return "(no such saga)"
	}
	out := fmt.Sprintf("saga %s %s: %s %q\n", s.ID, s.Type, s.Status, s.LastError)
	for _, st := range s.Steps {
		out += fmt.Sprintf("  step %-20s %-12s op=%s attempt=%d err=%q\n", st.Name, st.Status, st.Op, st.Attempt, st.LastError)
	}
	for _, ev := range s.Events {
		out += fmt.Sprintf("  %s %-18s %s %s #%d %s\n", ev.At.Format("15:04:05.000"), ev.Type, ev.Step, ev.Op, ev.Attempt, ev.Detail)
	}
	return out
}

// CreateTopics creates topics that do not exist yet.
func CreateTopics(brokers []string, partitions int, topics ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tr := &kafka.Transport{}
	defer tr.CloseIdleConnections() // or its connection pool outlives the call
	client := &kafka.Client{Addr: kafka.TCP(brokers...), Transport: tr}
	req := &kafka.CreateTopicsRequest{}
	for _, t := range topics {
		req.Topics = append(req.Topics, kafka.TopicConfig{Topic: t, NumPartitions: partitions, ReplicationFactor: 1})
	}
	resp, err := client.CreateTopics(ctx, req)
	if err != nil {
		return fmt.Errorf("sagatest: create topics: %w", err)
	}
	for t, err := range resp.Errors {
		if err != nil && !errors.Is(err, kafka.TopicAlreadyExists) {
			return fmt.Errorf("sagatest: create topic %s: %w", t, err)
		}
	}
	return nil
}
