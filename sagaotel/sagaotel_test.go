package sagaotel_test

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/sagabox/sagabox/inbox/consumer"
	"github.com/sagabox/sagabox/internal/kafkatest"
	"github.com/sagabox/sagabox/internal/testenv"
	"github.com/sagabox/sagabox/outbox"
	"github.com/sagabox/sagabox/participants"
	"github.com/sagabox/sagabox/relay"
	"github.com/sagabox/sagabox/relay/kafkapub"
	"github.com/sagabox/sagabox/sagaotel"
	"github.com/sagabox/sagabox/sagastate"
	"github.com/sagabox/sagabox/sagastate/sagatest"
	"github.com/sagabox/sagabox/wire"
)

func TestMain(m *testing.M) { os.Exit(testenv.Run(m)) }

func newTracer() (*sagaotel.Tracer, *tracetest.InMemoryExporter, trace.Tracer) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	return sagaotel.New(tp), exp, tp.Tracer("test")
}

// spans waits until the exporter holds every span named in want, and returns them by name.
func spans(t *testing.T, exp *tracetest.InMemoryExporter, want ...string) map[string][]tracetest.SpanStub {
	t.Helper()
	var byName map[string][]tracetest.SpanStub
	kafkatest.Poll(t, 60*time.Second, func() bool {
		byName = map[string][]tracetest.SpanStub{}
		for _, s := range exp.GetSpans() {
			byName[s.Name] = append(byName[s.Name], s)
		}
		for _, n := range want {
			if len(byName[n]) == 0 {
				return false
			}
		}
		return true
	}, func() string { return "spans " + fmtNames(byName) })
	return byName
}

func fmtNames(m map[string][]tracetest.SpanStub) string {
	out := ""
	for n, s := range m {
		out += fmt.Sprintf("%q×%d ", n, len(s))
	}
	return out
}

func TestProducerTraceIsParentOfConsumerSpan(t *testing.T) {
	t.Parallel()
	tr, exp, test := newTracer()
	db := testenv.NewDB(t)
	k := testenv.NewKafka(t)
	topic := testenv.Topic("orders")
	k.CreateTopic(t, topic, 2)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// The producer's request: its span is the root of the trace.
	reqCtx, req := test.Start(ctx, "POST /orders")
	err := pgx.BeginFunc(reqCtx, db.Pool, func(tx pgx.Tx) error {
		return tr.Enqueue(reqCtx, nil, tx, outbox.Message{Topic: topic, Key: "o-1", Payload: []byte(`{}`)})
	})
	req.End()
	if err != nil {
		t.Fatal(err)
	}

	pub, err := kafkapub.New(kafkapub.Config{Brokers: k.Brokers})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	r, err := relay.New(db.Pool, pub, relay.Config{PollInterval: 100 * time.Millisecond, Hooks: tr.RelayHooks(relay.Hooks{})})
	if err != nil {
		t.Fatal(err)
	}
	handled := make(chan trace.SpanContext, 1)
	cc := sagatest.FastConsumer()
	cc.Brokers, cc.GroupID, cc.Topics = k.Brokers, "billing", []string{topic}
	cc.Hooks = tr.ConsumerHooks("billing", consumer.Hooks{})
	c, err := consumer.New(db.Pool, cc, func(ctx context.Context, _ pgx.Tx, _ consumer.Message) error {
		select {
		case handled <- trace.SpanContextFromContext(ctx):
		default:
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() { _ = r.Run(ctx) })
	wg.Go(func() { _ = c.Run(ctx) })

	var inHandler trace.SpanContext
	select {
	case inHandler = <-handled:
	case <-time.After(60 * time.Second):
		t.Fatal("the consumer handled nothing within 60s")
	}
	got := spans(t, exp, "POST /orders", "create "+topic, "send "+topic, "process "+topic)
	root, create, send, process := got["POST /orders"][0], got["create "+topic][0], got["send "+topic][0], got["process "+topic][0]
	if create.Parent.SpanID() != root.SpanContext.SpanID() {
		t.Errorf("the create span's parent is %s, want the producer's span %s", create.Parent.SpanID(), root.SpanContext.SpanID())
	}
	if process.Parent.SpanID() != create.SpanContext.SpanID() || process.SpanContext.TraceID() != root.SpanContext.TraceID() {
		t.Errorf("the process span (trace %s, parent %s) is not a child of the create span (trace %s, span %s)",
			process.SpanContext.TraceID(), process.Parent.SpanID(), root.SpanContext.TraceID(), create.SpanContext.SpanID())
	}
	if process.SpanKind != trace.SpanKindConsumer || create.SpanKind != trace.SpanKindProducer {
		t.Errorf("span kinds: create %s, process %s; want producer, consumer", create.SpanKind, process.SpanKind)
	}
	if len(send.Links) != 1 || send.Links[0].SpanContext.SpanID() != create.SpanContext.SpanID() {
		t.Errorf("the send span's links are %v, want the create span", send.Links)
	}
	if inHandler.SpanID() != process.SpanContext.SpanID() {
		t.Errorf("the handler's context holds span %s, want the process span %s", inHandler.SpanID(), process.SpanContext.SpanID())
	}
}

var pair = sagastate.Define[map[string]string]("pair",
	sagastate.Step("reserve", "stock.commands").Do("stock.reserve").Undo("stock.release"),
	sagastate.Step("charge", "pay.commands").Do("pay.charge").Undo("pay.refund"),
)

func TestSagaStepSpansHangUnderOneSagaSpan(t *testing.T) {
	t.Parallel()
	tr, exp, test := newTracer()
	db := testenv.NewDB(t)
	k := testenv.NewKafka(t)

	pc := sagatest.FastConsumer()
	pc.Hooks = tr.ConsumerHooks("svc", consumer.Hooks{})
	p, err := participants.New(db.Pool, participants.Config{Brokers: k.Brokers, GroupID: "svc",
		CommandTopics: []string{"stock.commands", "pay.commands"}, Consumer: pc})
	if err != nil {
		t.Fatal(err)
	}
	ok := func(context.Context, pgx.Tx, wire.Command) ([]byte, error) { return nil, nil }
	p.Step("stock.reserve", ok, "stock.release", ok).Step("pay.charge", ok, "pay.refund", ok)
	oc := sagatest.FastConsumer()
	oc.Hooks = tr.ConsumerHooks(sagastate.DefaultGroupID, consumer.Hooks{})
	env := sagatest.Start(t, db.Pool, k.Brokers, sagatest.Config{
		Orchestrator: sagastate.Config{Sagas: []sagastate.Definition{pair}, Consumer: oc, Hooks: tr.SagaHooks(sagastate.Hooks{})},
		Participants: []sagatest.Runner{p},
		Topics:       []string{"stock.commands", "pay.commands"},
	})

	ctx, req := test.Start(context.Background(), "POST /checkout")
	id := uuid.New()
	if err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		return tr.StartSaga(ctx, env.Orchestrator, tx, "pair", id, map[string]string{"order": "o-1"})
	}); err != nil {
		t.Fatal(err)
	}
	req.End()
	env.Await(t, id, 60*time.Second)

	got := spans(t, exp, "saga pair", "pair reserve forward", "pair charge forward")
	if n := len(got["saga pair"]); n != 1 {
		t.Fatalf("%d saga spans, want 1", n)
	}
	saga := got["saga pair"][0]
	if saga.Parent.SpanID() != got["POST /checkout"][0].SpanContext.SpanID() {
		t.Errorf("the saga span's parent is %s, want the request's span", saga.Parent.SpanID())
	}
	for _, name := range []string{"pair reserve forward", "pair charge forward", "process stock.commands", "process pay.commands"} {
		for _, s := range got[name] {
			if s.Parent.SpanID() != saga.SpanContext.SpanID() || s.SpanContext.TraceID() != saga.SpanContext.TraceID() {
				t.Errorf("span %q hangs under %s, not under the saga span %s", name, s.Parent.SpanID(), saga.SpanContext.SpanID())
			}
		}
		if len(got[name]) == 0 {
			t.Errorf("no span %q", name)
		}
	}
	if step := got["pair reserve forward"][0]; !step.StartTime.Before(step.EndTime) || step.StartTime.Before(saga.StartTime) {
		t.Errorf("step span %v → %v is not inside the saga span from %v", step.StartTime, step.EndTime, saga.StartTime)
	}
}
