package participants

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagabox/sagabox/inbox/consumer"
	"github.com/sagabox/sagabox/migrations"
	"github.com/sagabox/sagabox/outbox"
	"github.com/sagabox/sagabox/wire"
)

// Errors of this package.
var (
	// ErrInvalidConfig means New rejected the Config; the error lists every problem.
	ErrInvalidConfig = errors.New("invalid participant config")
	// ErrUnknownCommand means a command names no registered handler; the record is
	// dead-lettered (register the handler, then replay it).
	ErrUnknownCommand = errors.New("unknown command")
	// ErrAlreadyRunning means Run was called while the same Participant was already
	// running (the one name every package with a Run uses).
	ErrAlreadyRunning = consumer.ErrAlreadyRunning
	// ErrFailure matches every error made by Fail: a business refusal.
	ErrFailure = errors.New("business failure")
)

// Handler runs one command's local transaction in tx and returns the step's result
// (replied to the orchestrator). Return Fail(reason) for a business refusal, any other
// error for the saga to retry the step; transient database errors (deadlocks, lost
// connections) are retried by the consumer loop instead (see the package doc). It
// must take its row locks in one global order (package doc, "Lock order") and must
// not commit or roll back tx.
type Handler func(ctx context.Context, tx pgx.Tx, cmd wire.Command) (result []byte, err error)

// FailureError is a business refusal made by Fail.
type FailureError struct{ Reason string }

func (e *FailureError) Error() string        { return "business failure: " + e.Reason }
func (e *FailureError) Is(target error) bool { return target == ErrFailure }

// Fail returns a business refusal (payment declined, out of stock): the step's changes
// are rolled back and the reply is OutcomeFailure with reason, so the saga compensates.
func Fail(reason string) error { return &FailureError{Reason: reason} }

// Failf is Fail with a formatted reason.
func Failf(format string, args ...any) error { return Fail(fmt.Sprintf(format, args...)) }

// Config configures a Participant.
type Config struct {
	// Brokers are the Kafka bootstrap addresses. Brokers, GroupID and CommandTopics are
	// required together; leave all three empty for a participant that only serves
	// HandleCommand (no Kafka), for which Run fails.
	Brokers []string
	// GroupID is the participant's consumer group.
	GroupID string
	// CommandTopics are the topics the commands arrive on.
	CommandTopics []string
	// Name scopes the participant's inbox rows. Defaults to GroupID.
	Name string
	// Schema holds the inbox, barrier and outbox tables. Defaults to "sagabox".
	Schema string
	// Consumer tunes the consumer loop (concurrency, batching, retries, timeouts, TLS/SASL
	// dialer). Its Brokers, GroupID, Topics, Name, Schema and Logger are taken from the
	// fields above when empty; a different value is rejected by New (the same rule as
	// sagastate.Config.Consumer). Defaults to the consumer package's defaults, except
	// Concurrency: DefaultConcurrency.
	Consumer consumer.Config
	// BarrierRetention is how long barrier rows are kept: Run deletes rows older than
	// that every minute, except those of sagas that the orchestrator, when it keeps its
	// saga_instances in this database and Schema, has not finished (running,
	// compensating, timeout, or failed and not aborted: an operator Retry of a failed
	// saga resumes its compensation, which needs the forward rows). A command resent
	// later than BarrierRetention after its step was decided would run again, and with
	// the orchestrator in another database a compensation resumed that late would find
	// no forward row and undo nothing: keep it above the longest a saga can live or
	// stay failed, retries included. Negative turns the sweep off. Defaults to 30 days.
	BarrierRetention time.Duration
	// Hooks observe the commands handled, e.g. for metrics (package participantsprom).
	// Defaults to none.
	Hooks Hooks
	// Logger receives outcomes other than success. Defaults to discarding.
	Logger *slog.Logger
}

// Hooks observe a participant. Every field is optional; a hook runs inline and must
// return quickly.
type Hooks struct {
	// Command is called for every command decided in a transaction, with the outcome
	// replied and the time the barrier and handler took. The transaction may still
	// roll back and the command come again, so a command may be reported twice.
	Command func(cmd wire.Command, outcome wire.Outcome, d time.Duration)
}

func (c *Config) applyDefaults() {
	if c.Name == "" {
		c.Name = c.GroupID
	}
	if c.Schema == "" {
		c.Schema = migrations.DefaultSchema
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if c.BarrierRetention == 0 {
		c.BarrierRetention = DefaultBarrierRetention
	}
}

// consumerConfig is Consumer with its empty Brokers, GroupID, Topics, Name, Schema and
// Logger taken from the fields above. A field set to a different value is an error, not
// overwritten: the same rule as sagastate.Config.Consumer.
func (c *Config) consumerConfig() (consumer.Config, error) {
	cc := c.Consumer
	var errs []error
	contradicts := func(field string, inner, outer any) {
		//lint:ignore ST1005 the message starts with the field's name
		errs = append(errs, fmt.Errorf("Consumer.%s %v contradicts %v; leave Consumer.%s empty", field, inner, outer, field))
	}
	// CommandTopics is the outer name of Consumer.Topics.
	switch {
	case len(cc.Brokers) == 0:
		cc.Brokers = c.Brokers
	case !slices.Equal(cc.Brokers, c.Brokers):
		contradicts("Brokers", cc.Brokers, fmt.Sprintf("Brokers %v", c.Brokers))
	}
	switch {
	case len(cc.Topics) == 0:
		cc.Topics = c.CommandTopics
	case !slices.Equal(cc.Topics, c.CommandTopics):
		contradicts("Topics", cc.Topics, fmt.Sprintf("CommandTopics %v", c.CommandTopics))
	}
	for _, f := range []struct {
		name  string
		inner *string
		outer string
	}{
		{"GroupID", &cc.GroupID, c.GroupID}, {"Name", &cc.Name, c.Name}, {"Schema", &cc.Schema, c.Schema},
	} {
		switch {
		case *f.inner == "":
			*f.inner = f.outer
		case *f.inner != f.outer:
			contradicts(f.name, fmt.Sprintf("%q", *f.inner), fmt.Sprintf("%s %q", f.name, f.outer))
		}
	}
	if cc.Logger == nil {
		cc.Logger = c.Logger
	}
	if cc.Concurrency == 0 {
		cc.Concurrency = DefaultConcurrency
	}
	return cc, errors.Join(errs...)
}

// DefaultConcurrency is the participant's Consumer.Concurrency unless Config sets it:
// one transaction at a time. A participant's handler turns failures into replies, so
// no record waits in a retry backoff holding up the others, and one worker gathers
// what arrives while its transaction runs into the next, where eight workers (the
// consumer package's default) each started one for the one or two records of their
// partition (package doc, Statements and round trips, has the figures). The
// orchestrator's reply consumer defaults to the same (sagastate.DefaultConcurrency).
const DefaultConcurrency = 1

// DefaultBarrierRetention is how long barrier rows are kept unless Config says otherwise.
const DefaultBarrierRetention = 30 * 24 * time.Hour

// Participant answers saga commands with registered handlers.
type Participant struct {
	pool    *pgxpool.Pool
	cfg     Config
	barrier *barrier
	outbox  *outbox.Writer

	mu       sync.RWMutex
	handlers map[string]Handler
	consumer *consumer.Consumer
	running  atomic.Bool
}

// New returns a Participant. Register handlers with Handle, then call Run. The database
// must have the sagabox migrations applied in cfg.Schema.
func New(pool *pgxpool.Pool, cfg Config) (*Participant, error) {
	if pool == nil {
		return nil, fmt.Errorf("participants: %w: pool is nil", ErrInvalidConfig)
	}
	cfg.applyDefaults()
	if err := migrations.ValidateSchema(cfg.Schema); err != nil {
		return nil, fmt.Errorf("participants: %w: Schema: %w", ErrInvalidConfig, err)
	}
	ob, err := outbox.New(outbox.Config{Schema: cfg.Schema})
	if err != nil {
		return nil, fmt.Errorf("participants: %w", err)
	}
	p := &Participant{pool: pool, cfg: cfg, barrier: newBarrier(cfg.Schema, cfg.Logger), outbox: ob, handlers: map[string]Handler{}}
	// Without Kafka settings the participant serves HandleCommand/HandleMessage only.
	if len(cfg.Brokers) == 0 && cfg.GroupID == "" && len(cfg.CommandTopics) == 0 {
		return p, nil
	}
	cc, err := cfg.consumerConfig()
	if err != nil {
		return nil, fmt.Errorf("participants: %w: %w", ErrInvalidConfig, err)
	}
	// Built now, not at Run, so a bad consumer setting fails at startup.
	if p.consumer, err = consumer.NewBatch(pool, cc, p.HandleMessages); err != nil {
		return nil, fmt.Errorf("participants: %w: %w", ErrInvalidConfig, err)
	}
	p.consumer.Prefetch(p.prefetch)
	return p, nil
}

// Handle registers h for commands named command (wire.Command.Name, e.g.
// "payment.charge" for the forward step and "payment.refund" for its compensation).
// It returns p so registrations chain. Like http.ServeMux, it panics on an empty name,
// a nil handler or a name registered twice: those are programming errors.
func (p *Participant) Handle(command string, h Handler) *Participant {
	if command == "" || h == nil {
		panic("participants: Handle needs a command name and a handler")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, dup := p.handlers[command]; dup {
		panic(fmt.Sprintf("participants: command %q registered twice", command))
	}
	p.handlers[command] = h
	return p
}

// Step registers a forward handler and its compensation under their command names.
func (p *Participant) Step(forward string, do Handler, compensate string, undo Handler) *Participant {
	return p.Handle(forward, do).Handle(compensate, undo)
}

// Run consumes commands until ctx ends (see consumer.Consumer.Run) and meanwhile
// deletes barrier rows older than BarrierRetention.
func (p *Participant) Run(ctx context.Context) error {
	if p.consumer == nil {
		return fmt.Errorf("participants: %w: Run needs Brokers, GroupID and CommandTopics", ErrInvalidConfig)
	}
	if !p.running.CompareAndSwap(false, true) {
		return fmt.Errorf("participants: %w", ErrAlreadyRunning)
	}
	defer p.running.Store(false)
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if p.cfg.BarrierRetention > 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.sweepLoop(ctx)
		}()
	}
	return p.consumer.Run(ctx)
}

// Health returns nil while Run runs, otherwise an error: what a liveness probe
// (/healthz) should ask. Whether the database answers is a readiness question (see
// package health's Ping).
func (p *Participant) Health() error {
	if !p.running.Load() {
		return errors.New("participants: participant not running")
	}
	return nil
}

// sweepLoop deletes old barrier rows every minute until ctx ends.
func (p *Participant) sweepLoop(ctx context.Context) {
	t := time.NewTicker(min(time.Minute, p.cfg.BarrierRetention))
	defer t.Stop()
	for {
		n, err := p.SweepBarrier(ctx, time.Now().Add(-p.cfg.BarrierRetention))
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			p.cfg.Logger.Warn("participants: barrier sweep failed", "err", err)
		case n > 0:
			p.cfg.Logger.Info("participants: barrier sweep", "deleted", n)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// SweepBarrier deletes barrier rows created before `before`, a thousand per statement,
// keeping those of unfinished sagas (see BarrierRetention), and returns how many. Run
// calls it every minute with BarrierRetention.
func (p *Participant) SweepBarrier(ctx context.Context, before time.Time) (int64, error) {
	var total int64
	for {
		tag, err := p.pool.Exec(ctx, p.barrier.sweepSQL, before, 1000)
		if err != nil {
			return total, fmt.Errorf("participants: sweep barrier rows before %s: %w", before.Format(time.RFC3339), err)
		}
		total += tag.RowsAffected()
		if tag.RowsAffected() < 1000 {
			return total, nil
		}
	}
}

// HandleMessage is the consumer.Handler of the participant: it parses the record as a
// command and runs HandleCommand. Use it to serve commands from a consumer loop of your
// own. Malformed records and unknown commands are returned as consumer.Permanent errors.
func (p *Participant) HandleMessage(ctx context.Context, tx pgx.Tx, msg consumer.Message) error {
	return p.HandleMessages(ctx, tx, []consumer.Message{msg})
}

// HandleMessages is the consumer.BatchHandler of the participant (what Run uses): it
// runs the commands of one shared transaction behind the barrier with a few statements
// for all of them, each handler in turn. A malformed record or an unknown command is
// returned as a consumer.Permanent error (the consumer then handles the records one
// at a time, and dead-letters that one).
func (p *Participant) HandleMessages(ctx context.Context, tx pgx.Tx, msgs []consumer.Message) error {
	cmds := make([]wire.Command, len(msgs))
	for i, m := range msgs {
		cmd, err := wire.ParseCommand(m.Headers, m.Value)
		if err != nil {
			return consumer.Permanent(fmt.Errorf("participants: %w", err))
		}
		cmds[i] = cmd
	}
	pre, _ := consumer.Prefetched(ctx).(*readResult)
	return p.handle(ctx, tx, cmds, func(i int) (context.Context, func(error)) { return consumer.Trace(ctx, msgs[i]) }, true, pre)
}

// prefetch queues the barrier read of the commands among msgs to run with the
// consumer transaction's BEGIN (consumer.Consumer.Prefetch): it then costs no round
// trip of its own. Records that are not commands are left to HandleMessages.
func (p *Participant) prefetch(msgs []consumer.Message, b *pgx.Batch) any {
	cmds := make([]wire.Command, 0, len(msgs))
	for _, m := range msgs {
		if cmd, err := wire.ParseCommand(m.Headers, m.Value); err == nil {
			cmds = append(cmds, cmd)
		}
	}
	if len(cmds) == 0 {
		return nil
	}
	return p.barrier.queueRead(b, cmds)
}

// HandleCommand runs cmd behind the barrier in tx and enqueues the reply in tx. It
// returns an error only when tx cannot be used (roll it back and retry) or the command
// is unknown (wrapped as a consumer.Permanent error).
func (p *Participant) HandleCommand(ctx context.Context, tx pgx.Tx, cmd wire.Command) error {
	return p.handle(ctx, tx, []wire.Command{cmd}, nil, true, nil)
}

// handle runs cmds behind the barrier and enqueues their replies; trace, if not nil,
// gives command i its context. With atCommit, the writes go with the consumer's
// commit when there is one; pre, if not nil, is their barrier read, done with BEGIN.
func (p *Participant) handle(ctx context.Context, tx pgx.Tx, cmds []wire.Command, trace func(i int) (context.Context, func(error)), atCommit bool, pre *readResult) error {
	steps := make([]*step, len(cmds))
	seen := make(map[key]bool, len(cmds))
	for i, cmd := range cmds {
		p.mu.RLock()
		h, ok := p.handlers[cmd.Name]
		p.mu.RUnlock()
		if !ok {
			return consumer.Permanent(fmt.Errorf("participants: %w %q (saga %s step %s %s); register a handler for it with Handle",
				ErrUnknownCommand, cmd.Name, cmd.SagaID, cmd.Step, cmd.Op))
		}
		steps[i] = &step{cmd: cmd, h: h, ctx: ctx}
		// Two commands of one saga step in one transaction (a resend, or a forward and
		// its compensation) decide each other: one after the other, each written
		// before the next reads.
		k := key{cmd.SagaID, cmd.Step, ""}
		if seen[k] {
			for i := range cmds {
				var one func(int) (context.Context, func(error))
				if trace != nil {
					one = func(int) (context.Context, func(error)) { return trace(i) }
				}
				if err := p.handle(ctx, tx, cmds[i:i+1], one, false, nil); err != nil {
					return err
				}
			}
			return nil
		}
		seen[k] = true
	}
	if trace != nil {
		for i, s := range steps {
			var end func(error)
			if s.ctx, end = trace(i); end != nil {
				s.end = endOnce(end)
			}
		}
	}
	batch, err := p.barrier.run(ctx, tx, steps, pre)
	for _, s := range steps {
		// The spans of commands whose handler did not run (duplicates answered from
		// their barrier row, null compensations) or was never reached (an error
		// before it) end here; a handler's own ended when it returned.
		if s.end != nil {
			s.end(err)
		}
	}
	if err != nil {
		return err
	}
	replies := make([]outbox.Message, len(steps))
	for i, s := range steps {
		if hook := p.cfg.Hooks.Command; hook != nil {
			hook(s.cmd, s.reply.Outcome, s.took)
		}
		if s.reply.Outcome != wire.OutcomeSuccess {
			p.cfg.Logger.Info("participant reply", "saga_id", s.cmd.SagaID, "step", s.cmd.Step, "op", s.cmd.Op,
				"attempt", s.cmd.Attempt, "outcome", s.reply.Outcome, "reason", s.reply.Reason)
		}
		s.reply.Headers = traceHeaders(s.cmd.Headers)
		replies[i] = s.reply.Message(s.cmd.ReplyTo)
	}
	if err := p.outbox.Enqueue(ctx, queue{batch}, replies...); err != nil {
		// Only validation can fail here (the insert is queued): a reply topic Kafka
		// would refuse. Retrying cannot fix the command.
		var ve *outbox.ValidationError
		if errors.As(err, &ve) && ve.Index < len(cmds) {
			c := cmds[ve.Index]
			err = fmt.Errorf("participants: reply to saga %s step %s: %w", c.SagaID, c.Step, err)
		}
		return consumer.Permanent(err)
	}
	// Under the consumer the writes travel with the commit.
	if atCommit && consumer.QueueAtCommit(ctx, batch, written) {
		return nil
	}
	if err := tx.SendBatch(ctx, batch).Close(); err != nil {
		return written(fmt.Errorf("participants: record and reply (%d commands, first saga %s step %s %s): %w", len(cmds), cmds[0].SagaID, cmds[0].Step, cmds[0].Op, err))
	}
	return nil
}

// traceHeaders carries W3C trace context from the command to its reply.
func traceHeaders(h map[string]string) map[string]string {
	var out map[string]string
	for _, k := range []string{"traceparent", "tracestate", "baggage"} {
		if v, ok := h[k]; ok {
			if out == nil {
				out = map[string]string{}
			}
			out[k] = v
		}
	}
	return out
}

// endOnce returns end, called at most once.
func endOnce(end func(error)) func(error) {
	var once sync.Once
	return func(err error) { once.Do(func() { end(err) }) }
}
