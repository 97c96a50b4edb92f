package sagastate

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/sagabox/sagabox/inbox"
	"github.com/sagabox/sagabox/inbox/consumer"
	"github.com/sagabox/sagabox/wire"
)

// Run consumes replies (through the inbox, exactly once), sweeps timeouts and retries,
// and feeds listeners, until ctx ends. It returns nil when ctx ends, or the first error
// that stops a part of it; nothing keeps running after it returns.
func (o *Orchestrator) Run(ctx context.Context) error {
	o.mu.Lock()
	if o.running {
		o.mu.Unlock()
		return fmt.Errorf("sagastate: %w", ErrAlreadyRunning)
	}
	o.running = true
	o.mu.Unlock()
	defer func() { o.mu.Lock(); o.running = false; o.mu.Unlock() }()

	if len(o.cfg.Brokers) == 0 {
		return fmt.Errorf("sagastate: %w: Brokers is empty; Run consumes replies from Kafka", ErrInvalidConfig)
	}
	cc := o.cfg.Consumer
	if len(cc.Brokers) == 0 {
		cc.Brokers = o.cfg.Brokers
	}
	if cc.GroupID == "" {
		cc.GroupID = o.cfg.GroupID
	}
	if len(cc.Topics) == 0 {
		cc.Topics = []string{o.cfg.ReplyTopic}
	}
	if cc.Schema == "" {
		cc.Schema = o.cfg.Schema
	}
	if cc.Logger == nil {
		cc.Logger = o.log
	}
	if cc.Concurrency == 0 {
		cc.Concurrency = DefaultConcurrency
	}
	if cc.BatchSize == 0 {
		cc.BatchSize = DefaultBatchSize
	}
	// Hook calls of a reply wait for its transaction to commit (Handled) and are dropped
	// when it is dead-lettered instead; a rolled-back attempt's calls are replaced by the
	// next attempt's.
	notes := &pendingNotes{m: map[uuid.UUID]func(){}}
	handled, dead := cc.Hooks.Handled, cc.Hooks.DeadLettered
	cc.Hooks.Handled = func(m consumer.Message, dup bool) {
		notify(notes.take(m.ID))
		if handled != nil {
			handled(m, dup)
		}
	}
	cc.Hooks.DeadLettered = func(d inbox.DeadLetter) {
		notes.take(d.MessageID)
		if dead != nil {
			dead(d)
		}
	}
	c, err := consumer.NewBatch(o.pool, cc, func(ctx context.Context, tx pgx.Tx, msgs []consumer.Message) error {
		return o.handleReplies(ctx, tx, msgs, notes)
	})
	if err != nil {
		return fmt.Errorf("sagastate: reply consumer: %w", err)
	}
	c.Prefetch(o.prefetch)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	launch := func(name string, fn func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := fn(ctx); err != nil && ctx.Err() == nil {
				errs <- fmt.Errorf("sagastate: %s: %w", name, err)
				cancel()
			}
		}()
	}
	launch("reply consumer", c.Run)
	launch("sweeper", o.sweepLoop)
	if o.cfg.Retention > 0 {
		launch("retention", o.retentionLoop)
	}
	if len(o.cfg.Listeners) > 0 {
		launch("event feed", o.feedLoop)
	}
	wg.Wait()
	close(errs)
	return <-errs // nil when every part stopped because ctx ended
}

// pendingNotes holds the hook calls of replies whose transaction has not committed yet.
type pendingNotes struct {
	mu sync.Mutex
	m  map[uuid.UUID]func()
}

func (p *pendingNotes) put(id uuid.UUID, fn func()) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if fn == nil {
		delete(p.m, id)
		return
	}
	p.m[id] = fn
}

func (p *pendingNotes) take(id uuid.UUID) func() {
	p.mu.Lock()
	defer p.mu.Unlock()
	fn := p.m[id]
	delete(p.m, id)
	return fn
}

// handleReplies is the reply consumer's handler; it runs inside the inbox transaction.
// The replies of one shared transaction are applied together: their sagas are locked
// and read in one round trip and written in one more (applyMany). If anything fails,
// the consumer hands the replies over again one at a time, and the error is the one
// reply's: a reply that cannot be applied is dead-lettered, a database error (deadlock,
// lost connection) is retried by the consumer and never becomes a step's outcome.
func (o *Orchestrator) handleReplies(ctx context.Context, tx pgx.Tx, msgs []consumer.Message, notes *pendingNotes) error {
	inputs := make([]sagaInput, 0, len(msgs))
	for _, msg := range msgs {
		r, err := wire.ParseReply(msg.Headers, msg.Value)
		if err != nil {
			if len(msgs) > 1 {
				return fmt.Errorf("sagastate: malformed reply at offset %d: %w", msg.Offset, err)
			}
			o.log.Warn("sagastate: malformed reply", "topic", msg.Topic, "offset", msg.Offset, "err", err)
			return consumer.Permanent(err)
		}
		inputs = append(inputs, sagaInput{r.SagaID, input{kind: inReply, reply: r}})
	}
	pre, _ := consumer.Prefetched(ctx).(*loading)
	n, err := o.applyMany(ctx, tx, inputs, pre)
	if err != nil {
		if len(msgs) == 1 && (errors.Is(err, ErrNotFound) || errors.Is(err, ErrUnknownStep) || errors.Is(err, ErrUnknownSagaType)) {
			// Retrying cannot help: the reply is dead-lettered with this reason, to be
			// replayed once the cause (say a missing definition) is fixed.
			r := inputs[0].in.reply
			o.log.Warn("sagastate: reply cannot be applied", "saga", r.SagaID, "step", r.Step, "err", err)
			return consumer.Permanent(err)
		}
		return err
	}
	for i, msg := range msgs {
		notes.put(msg.ID, n[i])
	}
	return nil
}

// prefetch queues the locked read of the sagas the replies among msgs name to run with
// the reply consumer transaction's BEGIN (consumer.Consumer.Prefetch), so it costs no
// round trip of its own; handleReplies then sends its writes with the COMMIT. Records
// that are not replies are left to handleReplies.
func (o *Orchestrator) prefetch(msgs []consumer.Message, b *pgx.Batch) any {
	ids := make([]uuid.UUID, 0, len(msgs))
	for _, m := range msgs {
		if r, err := wire.ParseReply(m.Headers, m.Value); err == nil && !slices.Contains(ids, r.SagaID) {
			ids = append(ids, r.SagaID)
		}
	}
	if len(ids) == 0 {
		return nil
	}
	return o.q.queueLoad(b, ids, true, o.clock(), o.steps, false)
}

func (o *Orchestrator) sweepLoop(ctx context.Context) error {
	t := time.NewTicker(o.cfg.SweepInterval)
	defer t.Stop()
	for {
		if _, err := o.Sweep(ctx); err != nil && ctx.Err() == nil {
			o.log.Error("sagastate: sweep", "err", err) // transient: try again next tick
		} else if err == nil {
			o.lastSweep.Store(time.Now().UnixNano())
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Health returns nil while Run runs and its sweeper reached the database within the
// last max(10s, 10 sweep intervals); otherwise an error saying why. It is what a
// liveness probe (/healthz) should ask; package health serves it.
func (o *Orchestrator) Health() error {
	o.mu.Lock()
	running := o.running
	o.mu.Unlock()
	if !running {
		return errors.New("sagastate: orchestrator not running")
	}
	last := o.lastSweep.Load()
	if last == 0 {
		return errors.New("sagastate: no sweep has reached the database yet")
	}
	limit := max(10*time.Second, 10*o.cfg.SweepInterval)
	if age := time.Since(time.Unix(0, last)); age > limit {
		return fmt.Errorf("sagastate: last successful sweep %v ago (limit %v): database unreachable?", age.Round(time.Millisecond), limit)
	}
	return nil
}
