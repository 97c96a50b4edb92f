package sagaotel

import (
	"context"
	"strconv"
	"sync"
	"time"

	"github.com/google/uuid"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/sagabox/sagabox/inbox/consumer"
	"github.com/sagabox/sagabox/outbox"
	"github.com/sagabox/sagabox/relay"
	"github.com/sagabox/sagabox/sagastate"
	"github.com/sagabox/sagabox/wire"
)

// ScopeName is the instrumentation scope of the spans.
const ScopeName = "github.com/sagabox/sagabox/sagaotel"

// MaxSagaSpans is how many saga spans a Tracer keeps open at most.
const MaxSagaSpans = 10000

// Tracer makes the spans; create it with New. It is safe for concurrent use.
type Tracer struct {
	tracer trace.Tracer
	prop   propagation.TextMapPropagator

	mu    sync.Mutex
	sagas map[uuid.UUID]*sagaSpan // started here, not finished yet
	order []uuid.UUID             // sagas in start order, for evicting the oldest
	seen  map[uuid.UUID]trace.SpanContext
}

type sagaSpan struct {
	span trace.Span
	ctx  trace.SpanContext
}

// New returns a Tracer whose spans come from tp, propagated as W3C trace context.
func New(tp trace.TracerProvider) *Tracer {
	return &Tracer{
		tracer: tp.Tracer(ScopeName),
		prop:   propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}),
		sagas:  map[uuid.UUID]*sagaSpan{},
		seen:   map[uuid.UUID]trace.SpanContext{},
	}
}

// inject writes ctx's trace context into a copy of h.
func (t *Tracer) inject(ctx context.Context, h map[string]string) map[string]string {
	out := make(map[string]string, len(h)+2)
	for k, v := range h {
		out[k] = v
	}
	t.prop.Inject(ctx, propagation.MapCarrier(out))
	return out
}

// extract returns the span context carried by headers (invalid when none).
func (t *Tracer) extract(h map[string]string) trace.SpanContext {
	return trace.SpanContextFromContext(t.prop.Extract(context.Background(), propagation.MapCarrier(h)))
}

func destination(msgs []outbox.Message) string {
	if len(msgs) == 0 {
		return ""
	}
	for _, m := range msgs[1:] {
		if m.Topic != msgs[0].Topic {
			return "" // several topics: the span names none
		}
	}
	return msgs[0].Topic
}

func spanName(op, topic string) string {
	if topic == "" {
		return op
	}
	return op + " " + topic
}

func setError(span trace.Span, err error) {
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
}

// Enqueue enqueues msgs into tx like outbox.Enqueue (or w.Enqueue when w is not nil)
// under a "create" span, and puts that span's context into every message's headers
// (copies: the caller's maps are not changed).
func (t *Tracer) Enqueue(ctx context.Context, w *outbox.Writer, tx outbox.Execer, msgs ...outbox.Message) error {
	topic := destination(msgs)
	attrs := []attribute.KeyValue{semconv.MessagingSystemKafka, semconv.MessagingOperationTypeCreate,
		semconv.MessagingOperationName("create"), semconv.MessagingBatchMessageCount(len(msgs))}
	if topic != "" {
		attrs = append(attrs, semconv.MessagingDestinationName(topic))
	}
	ctx, span := t.tracer.Start(ctx, spanName("create", topic), trace.WithSpanKind(trace.SpanKindProducer), trace.WithAttributes(attrs...))
	defer span.End()
	traced := make([]outbox.Message, len(msgs))
	for i, m := range msgs {
		m.Headers = t.inject(ctx, m.Headers)
		traced[i] = m
	}
	var err error
	if w != nil {
		err = w.Enqueue(ctx, tx, traced...)
	} else {
		err = outbox.Enqueue(ctx, tx, traced...)
	}
	setError(span, err)
	return err
}

// RelayHooks returns next with a Publish hook that records a "send" span per batch
// (next's own Publish, if any, still runs).
func (t *Tracer) RelayHooks(next relay.Hooks) relay.Hooks {
	prev := next.Publish
	next.Publish = func(msgs []outbox.Message) func(error) {
		var prevDone func(error)
		if prev != nil {
			prevDone = prev(msgs)
		}
		topic := destination(msgs)
		links := make([]trace.Link, 0, len(msgs))
		for _, m := range msgs {
			if sc := t.extract(m.Headers); sc.IsValid() {
				links = append(links, trace.Link{SpanContext: sc, Attributes: []attribute.KeyValue{semconv.MessagingMessageID(m.ID.String())}})
			}
		}
		attrs := []attribute.KeyValue{semconv.MessagingSystemKafka, semconv.MessagingOperationTypeSend,
			semconv.MessagingOperationName("send"), semconv.MessagingBatchMessageCount(len(msgs))}
		if topic != "" {
			attrs = append(attrs, semconv.MessagingDestinationName(topic))
		}
		_, span := t.tracer.Start(context.Background(), spanName("send", topic), trace.WithSpanKind(trace.SpanKindClient),
			trace.WithLinks(links...), trace.WithAttributes(attrs...))
		return func(err error) {
			setError(span, err)
			span.End()
			if prevDone != nil {
				prevDone(err)
			}
		}
	}
	return next
}

// ConsumerHooks returns next with a Trace hook that runs each handler call of consumer
// name (its Config.Name) in a "process" span, a child of the record's trace context.
// Pass the orchestrator's reply consumer hooks through it too (sagastate.Config.Consumer):
// replies tell it the saga spans' contexts for the step spans.
func (t *Tracer) ConsumerHooks(name string, next consumer.Hooks) consumer.Hooks {
	prev := next.Trace
	next.Trace = func(ctx context.Context, msg consumer.Message) (context.Context, func(error)) {
		var prevEnd func(error)
		if prev != nil {
			ctx, prevEnd = prev(ctx, msg)
		}
		parent := t.extract(msg.Headers)
		if parent.IsValid() {
			ctx = trace.ContextWithRemoteSpanContext(ctx, parent)
			t.remember(msg.Headers, parent)
		}
		ctx, span := t.tracer.Start(ctx, spanName("process", msg.Topic), trace.WithSpanKind(trace.SpanKindConsumer),
			trace.WithAttributes(semconv.MessagingSystemKafka, semconv.MessagingOperationTypeProcess,
				semconv.MessagingOperationName("process"), semconv.MessagingDestinationName(msg.Topic),
				semconv.MessagingDestinationPartitionID(strconv.Itoa(msg.Partition)), semconv.MessagingKafkaOffset(int(msg.Offset)),
				semconv.MessagingMessageID(msg.ID.String()), semconv.MessagingConsumerGroupName(name)))
		return ctx, func(err error) {
			setError(span, err)
			span.End()
			if prevEnd != nil {
				prevEnd(err)
			}
		}
	}
	return next
}

// remember notes the trace context a saga's reply carries (the saga span's), for the
// step spans SagaHooks records after the reply's transaction committed.
func (t *Tracer) remember(h map[string]string, sc trace.SpanContext) {
	if h[wire.HeaderOutcome] == "" {
		return // a command, not a reply
	}
	id, err := uuid.Parse(h[wire.HeaderSagaID])
	if err != nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.seen) >= MaxSagaSpans {
		clear(t.seen) // bounded; the sagas still running are learnt again from their next reply
	}
	t.seen[id] = sc
}

// StartSaga starts saga sagaType with o.Start in tx under a new "saga" span, a child of
// ctx's span, whose context the saga's commands carry. SagaHooks ends the span when the
// saga finishes; if Start fails the span ends at once with the error.
func (t *Tracer) StartSaga(ctx context.Context, o *sagastate.Orchestrator, tx sagastate.DB, sagaType string, id uuid.UUID, payload any) error {
	ctx, span := t.tracer.Start(ctx, "saga "+sagaType, trace.WithAttributes(
		attribute.String("sagabox.saga.type", sagaType), attribute.String("sagabox.saga.id", id.String())))
	err := o.Start(sagastate.WithTraceContext(ctx, t.inject(ctx, nil)), tx, sagaType, id, payload)
	if err != nil {
		setError(span, err)
		span.End()
		return err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.order) >= MaxSagaSpans {
		t.evictOldest()
	}
	t.sagas[id] = &sagaSpan{span: span, ctx: span.SpanContext()}
	t.order = append(t.order, id)
	return nil
}

// evictOldest ends the oldest open saga span (and forgets ids of finished ones). t.mu is held.
func (t *Tracer) evictOldest() {
	for len(t.order) > 0 {
		id := t.order[0]
		t.order = t.order[1:]
		if s, ok := t.sagas[id]; ok {
			s.span.SetAttributes(attribute.Bool("sagabox.saga.unfinished", true))
			s.span.End()
			delete(t.sagas, id)
			return
		}
	}
}

// SagaHooks returns next with SagaFinished and StepEnded hooks that end saga spans and
// record step spans (next's own hooks still run first).
func (t *Tracer) SagaHooks(next sagastate.Hooks) sagastate.Hooks {
	prevFinished, prevStep := next.SagaFinished, next.StepEnded
	next.SagaFinished = func(s sagastate.SagaInfo) {
		if prevFinished != nil {
			prevFinished(s)
		}
		t.mu.Lock()
		ss := t.sagas[s.ID]
		delete(t.sagas, s.ID)
		delete(t.seen, s.ID)
		t.mu.Unlock()
		if ss == nil {
			return
		}
		ss.span.SetAttributes(attribute.String("sagabox.saga.status", string(s.Status)), attribute.Bool("sagabox.saga.aborted", s.Aborted))
		if s.Status != sagastate.SagaCompleted {
			ss.span.SetStatus(codes.Error, string(s.Status)+": "+s.Reason)
		}
		ss.span.End()
	}
	next.StepEnded = func(st sagastate.StepInfo) {
		if prevStep != nil {
			prevStep(st)
		}
		t.mu.Lock()
		parent, ok := t.seen[st.SagaID]
		if ss := t.sagas[st.SagaID]; ss != nil {
			parent, ok = ss.ctx, true
		}
		t.mu.Unlock()
		if !ok {
			return // this process never saw the saga's trace context
		}
		end := time.Now()
		ctx := trace.ContextWithRemoteSpanContext(context.Background(), parent)
		_, span := t.tracer.Start(ctx, st.SagaType+" "+st.Step+" "+string(st.Op), trace.WithTimestamp(end.Add(-st.Duration)),
			trace.WithAttributes(attribute.String("sagabox.saga.type", st.SagaType), attribute.String("sagabox.saga.id", st.SagaID.String()),
				attribute.String("sagabox.step", st.Step), attribute.String("sagabox.step.op", string(st.Op)),
				attribute.Int("sagabox.step.attempt", st.Attempt), attribute.String("sagabox.step.outcome", string(st.Outcome))))
		if st.Outcome != sagastate.AttemptSucceeded {
			span.SetStatus(codes.Error, string(st.Outcome))
		}
		span.End(trace.WithTimestamp(end))
	}
	return next
}
