package sagastate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagabox/sagabox/inbox/consumer"
	"github.com/sagabox/sagabox/migrations"
	"github.com/sagabox/sagabox/outbox"
	"github.com/sagabox/sagabox/wire"
)

// Listener receives saga events after they are committed. It runs on the orchestrator's
// event feed goroutine and must return quickly.
type Listener func(Event)

// Config configures an Orchestrator.
type Config struct {
	// Sagas are the saga types this orchestrator starts and drives. A process that only
	// queries (or retries/aborts failed sagas) may leave it empty. Defaults to none.
	Sagas []Definition
	// Brokers are the Kafka bootstrap addresses the replies are consumed from. Required by
	// Run; Start and the queries do not need them. Defaults to none.
	Brokers []string
	// ReplyTopic is where participants send replies (every command's reply-to). Defaults to
	// "sagabox.saga.replies".
	ReplyTopic string
	// GroupID is the consumer group (and inbox name) of the reply consumer; every
	// orchestrator process of one deployment uses the same. Defaults to "sagabox-orchestrator".
	GroupID string
	// Schema holds the saga, outbox and inbox tables. Defaults to "sagabox".
	Schema string
	// SweepInterval is how often the sweeper looks for due timeouts and retries.
	// Defaults to 500ms.
	SweepInterval time.Duration
	// SweepBatch is the most sagas one sweeper transaction handles. Defaults to 100.
	SweepBatch int
	// Listeners receive every saga event committed while Run runs, in commit order, in
	// every orchestrator process. Defaults to none.
	Listeners []Listener
	// FeedInterval is how often the event feed polls for new events when Listeners are
	// set. Defaults to 200ms.
	FeedInterval time.Duration
	// Consumer tunes the reply consumer (concurrency, batching, timeouts). Its Brokers,
	// GroupID, Topics, Name, Schema and Logger are taken from this Config when empty.
	// Defaults to the consumer package's defaults.
	Consumer consumer.Config
	// Now is the clock; tests inject one to reach deadlines without sleeping. Defaults to
	// time.Now.
	Now func() time.Time
	// Hooks observe sagas and steps, e.g. for metrics. Defaults to none.
	Hooks Hooks
	// Logger receives ignored replies, sweeper errors and saga outcomes. Defaults to discarding.
	Logger *slog.Logger
}

const (
	// DefaultReplyTopic is Config.ReplyTopic's default.
	DefaultReplyTopic = "sagabox.saga.replies"
	// DefaultGroupID is Config.GroupID's default.
	DefaultGroupID = "sagabox-orchestrator"
)

func (c *Config) applyDefaults() {
	if c.ReplyTopic == "" {
		c.ReplyTopic = DefaultReplyTopic
	}
	if c.GroupID == "" {
		c.GroupID = DefaultGroupID
	}
	if c.Schema == "" {
		c.Schema = migrations.DefaultSchema
	}
	if c.SweepInterval == 0 {
		c.SweepInterval = 500 * time.Millisecond
	}
	if c.SweepBatch == 0 {
		c.SweepBatch = 100
	}
	if c.FeedInterval == 0 {
		c.FeedInterval = 200 * time.Millisecond
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
}

func (c *Config) validate() error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	seen := map[string]bool{}
	for i, d := range c.Sagas {
		if d == nil {
			add("Sagas[%d] is nil", i)
			continue
		}
		if err := d.Err(); err != nil {
			errs = append(errs, err)
		}
		if seen[d.Name()] {
			add("Sagas: saga type %q is registered twice", d.Name())
		}
		seen[d.Name()] = true
	}
	if err := migrations.ValidateSchema(c.Schema); err != nil {
		add("Schema: %w", err)
	}
	if !validTopic(c.ReplyTopic) {
		add("ReplyTopic %q is not a Kafka topic name (ASCII letters, digits, '.', '_', '-')", c.ReplyTopic)
	}
	if c.SweepInterval < 0 || c.FeedInterval < 0 {
		add("SweepInterval and FeedInterval must be positive (0 means the default)")
	}
	if c.SweepBatch < 0 {
		add("SweepBatch is %d; it must be positive (0 means the default)", c.SweepBatch)
	}
	for i, b := range c.Brokers {
		if b == "" {
			add("Brokers[%d] is empty", i)
		}
	}
	// The reply consumer must read the topic the commands name as reply-to, in the group
	// the deployment shares; contradicting settings would strand replies.
	if len(c.Consumer.Topics) > 0 && (len(c.Consumer.Topics) != 1 || c.Consumer.Topics[0] != c.ReplyTopic) {
		add("Consumer.Topics is %v but replies go to ReplyTopic %q; leave Consumer.Topics empty", c.Consumer.Topics, c.ReplyTopic)
	}
	if c.Consumer.GroupID != "" && c.Consumer.GroupID != c.GroupID {
		add("Consumer.GroupID %q contradicts GroupID %q; leave Consumer.GroupID empty", c.Consumer.GroupID, c.GroupID)
	}
	if c.Consumer.Schema != "" && c.Consumer.Schema != c.Schema {
		add("Consumer.Schema %q contradicts Schema %q; leave Consumer.Schema empty", c.Consumer.Schema, c.Schema)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("sagastate: %w: %w", ErrInvalidConfig, err)
	}
	return nil
}

func validTopic(t string) bool {
	if t == "" || len(t) > 249 {
		return false
	}
	for _, r := range t {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return false
		}
	}
	return true
}

// Orchestrator starts sagas and drives them: it consumes replies, sweeps timeouts and
// retries, and answers status queries. All its state is in PostgreSQL; several processes
// may run one each against the same database.
type Orchestrator struct {
	pool  *pgxpool.Pool
	cfg   Config
	q     queries
	out   *outbox.Writer
	plans map[string]*plan
	log   *slog.Logger

	mu      sync.Mutex
	running bool
	// crashHook, set by tests, may abandon a transaction at a named point as if the
	// process died there: its error rolls the transaction back.
	crashHook func(point string) error
}

// New returns an Orchestrator with cfg's defaults applied, or an error listing every
// problem of cfg and of its saga definitions.
func New(pool *pgxpool.Pool, cfg Config) (*Orchestrator, error) {
	cfg.applyDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if pool == nil {
		return nil, fmt.Errorf("sagastate: %w: pool is nil", ErrInvalidConfig)
	}
	w, err := outbox.New(outbox.Config{Schema: cfg.Schema})
	if err != nil {
		return nil, fmt.Errorf("sagastate: %w", err)
	}
	o := &Orchestrator{pool: pool, cfg: cfg, q: newQueries(cfg.Schema), out: w, plans: map[string]*plan{}, log: cfg.Logger}
	for _, d := range cfg.Sagas {
		o.plans[d.Name()] = d.plan()
	}
	return o, nil
}

// Config returns the configuration with defaults applied.
func (o *Orchestrator) Config() Config { return o.cfg }

func (o *Orchestrator) now() time.Time { return o.cfg.Now().UTC().Truncate(time.Microsecond) }

// Start begins saga sagaType with id and payload inside tx, the caller's transaction: the
// instance, its steps, the saga_started event and the first commands (into the outbox)
// commit together with the caller's business change, or not at all.
//
// payload is marshalled to JSON ([]byte and json.RawMessage are taken as JSON) and must
// decode into the definition's payload type and pass its Validate method if it has one.
// An unknown type, an invalid payload or an id already used returns an error (wrapping
// ErrUnknownSagaType, ErrInvalidPayload or ErrDuplicate) and writes nothing.
func (o *Orchestrator) Start(ctx context.Context, tx DB, sagaType string, id uuid.UUID, payload any) error {
	err := o.start(ctx, tx, sagaType, id, payload)
	if err != nil {
		o.log.Warn("sagastate: saga not started", "type", sagaType, "saga", id, "err", err)
	}
	return err
}

func (o *Orchestrator) start(ctx context.Context, tx DB, sagaType string, id uuid.UUID, payload any) error {
	p, ok := o.plans[sagaType]
	if !ok {
		return fmt.Errorf("sagastate: start saga %s: %w %q; registered: %v (add its definition to Config.Sagas)", id, ErrUnknownSagaType, sagaType, o.typeNames())
	}
	if id == uuid.Nil {
		return fmt.Errorf("sagastate: start %s saga: %w: the saga id is the nil UUID; use uuid.New() or a business key", sagaType, ErrInvalidPayload)
	}
	raw, err := toJSON(payload)
	if err != nil {
		return fmt.Errorf("sagastate: start %s saga %s: %w: %w", sagaType, id, ErrInvalidPayload, err)
	}
	if err := p.decode(raw); err != nil {
		return fmt.Errorf("sagastate: start %s saga %s: %w: %w", sagaType, id, ErrInvalidPayload, err)
	}
	s := newInstance(p, id, raw)
	res, err := transition(p, s, input{kind: inStart, now: o.now()})
	if err != nil {
		return err
	}
	h, _ := ctx.Value(headersKey{}).(map[string]string)
	prev := &Instance{}
	if err := o.persist(ctx, tx, prev, &res, traceHeaders(h)); err != nil {
		return err
	}
	notify(o.cfg.Hooks.notifier(prev, &res))
	return nil
}

// notify calls the hooks a notifier returned, if any.
func notify(fns ...func()) {
	for _, fn := range fns {
		if fn != nil {
			fn()
		}
	}
}

func toJSON(payload any) ([]byte, error) {
	switch v := payload.(type) {
	case nil:
		return nil, errors.New("payload is nil")
	case []byte:
		if !json.Valid(v) {
			return nil, errors.New("payload bytes are not valid JSON")
		}
		return v, nil
	case json.RawMessage:
		if !json.Valid(v) {
			return nil, errors.New("payload bytes are not valid JSON")
		}
		return v, nil
	}
	return json.Marshal(payload)
}

func (o *Orchestrator) typeNames() []string {
	names := make([]string, 0, len(o.plans))
	for n := range o.plans {
		names = append(names, n)
	}
	return names
}

func newInstance(p *plan, id uuid.UUID, payload []byte) Instance {
	s := Instance{ID: id, Type: p.name, Payload: payload}
	for i, sp := range p.steps {
		s.Steps = append(s.Steps, StepState{
			Name: sp.Name, Position: i, Stage: sp.Stage, Topic: sp.Topic, Do: sp.Do, Undo: sp.Undo,
			Timeout: sp.Timeout, Retry: sp.Retry, UndoRetry: sp.UndoRetry, Status: StepPending, Op: wire.OpForward,
		})
	}
	return s
}

// persist writes a transition's output — state, log and commands — in one round trip.
// headers (trace context) are copied onto every command.
func (o *Orchestrator) persist(ctx context.Context, db DB, prev *Instance, res *result, headers map[string]string) error {
	if prev.Version == 0 {
		if err := o.q.insertNew(ctx, db, &res.state); err != nil {
			return err
		}
	}
	var w writes
	o.q.save(&w, prev, &res.state, res.events)
	if len(res.commands) > 0 {
		msgs := make([]outbox.Message, len(res.commands))
		for i, c := range res.commands {
			c.Cmd.ReplyTo, c.Cmd.Headers = o.cfg.ReplyTopic, headers
			msgs[i] = c.Cmd.Message(c.Topic)
		}
		if err := o.out.Enqueue(ctx, &w, msgs...); err != nil {
			return fmt.Errorf("sagastate: enqueue commands of saga %s: %w", res.state.ID, err)
		}
	}
	return w.flush(ctx, db, fmt.Sprintf("write saga %s", res.state.ID))
}

// HandleReply applies a participant's reply inside tx (the inbox transaction of the
// reply consumer): it locks the saga, computes the transition and writes state, log and
// next commands. A stale reply (for an attempt or op the saga has moved past) is logged and
// changes nothing. A reply for an unknown saga or step returns ErrNotFound or
// ErrUnknownStep: retrying cannot fix it.
func (o *Orchestrator) HandleReply(ctx context.Context, tx DB, r wire.Reply) error {
	n, err := o.apply(ctx, tx, r.SagaID, input{kind: inReply, reply: r})
	notify(n)
	return err
}

// apply runs one transition of saga id inside tx. It returns the hook calls to make once
// tx commits (nil if none).
func (o *Orchestrator) apply(ctx context.Context, tx DB, id uuid.UUID, in input) (func(), error) {
	s, err := o.q.load(ctx, tx, id, true)
	if err != nil {
		return nil, err
	}
	in.now = o.now()
	if err := o.crash("before-save"); err != nil {
		return nil, err
	}
	res, err := transition(o.plans[s.Type], s, in)
	if err != nil {
		return nil, err
	}
	if res.ignored != "" {
		o.log.Info("sagastate: input ignored", "saga", id, "type", s.Type, "step", in.reply.Step, "op", in.reply.Op,
			"attempt", in.reply.Attempt, "outcome", in.reply.Outcome, "why", res.ignored)
		return nil, nil
	}
	if err := o.persist(ctx, tx, &s, &res, traceHeaders(in.reply.Headers)); err != nil {
		return nil, err
	}
	if err := o.crash("after-save"); err != nil {
		return nil, err
	}
	if res.state.Status != s.Status {
		o.log.Debug("sagastate: saga status", "saga", id, "type", s.Type, "from", s.Status, "to", res.state.Status)
	}
	return o.cfg.Hooks.notifier(&s, &res), nil
}

type headersKey struct{}

// WithTraceContext returns ctx carrying W3C trace context headers ("traceparent",
// "tracestate"; others are ignored) for Start: the saga's first commands carry them, the
// participants copy them onto their replies, and the orchestrator onto the next commands,
// so one trace spans the saga.
func WithTraceContext(ctx context.Context, headers map[string]string) context.Context {
	return context.WithValue(ctx, headersKey{}, headers)
}

// traceHeaders keeps the W3C trace context of a reply, so the commands it causes continue
// the same trace.
func traceHeaders(h map[string]string) map[string]string {
	var out map[string]string
	for _, k := range []string{"traceparent", "tracestate"} {
		if v, ok := h[k]; ok {
			if out == nil {
				out = map[string]string{}
			}
			out[k] = v
		}
	}
	return out
}

func (o *Orchestrator) crash(point string) error {
	if o.crashHook == nil {
		return nil
	}
	return o.crashHook(point)
}

func (o *Orchestrator) inTx(ctx context.Context, fn func(pgx.Tx) error) error {
	return pgx.BeginFunc(ctx, o.pool, fn)
}

// operate applies an operator's input to saga id in a transaction of its own.
func (o *Orchestrator) operate(ctx context.Context, id uuid.UUID, in input) error {
	var n func()
	err := o.inTx(ctx, func(tx pgx.Tx) (err error) {
		n, err = o.apply(ctx, tx, id, in)
		return err
	})
	if err == nil {
		notify(n)
	}
	return err
}

// Retry is an operator's way to push a saga's compensation on. A failed saga (its
// compensation exhausted its retries) resumes compensating; a compensating or timed-out
// saga sends its stuck compensation again now instead of after its backoff. Either way
// the compensation gets a fresh retry allowance. The optional reason is recorded in the
// saga's log with the saga_compensating event. It returns ErrNotFailed for a running or
// finished saga and ErrNotFound for an unknown id.
func (o *Orchestrator) Retry(ctx context.Context, id uuid.UUID, reason ...string) error {
	return o.operate(ctx, id, input{kind: inRetry, reason: strings.Join(reason, " ")})
}

// Abort is an operator's way out of a saga. A running saga stops going forward and
// compensates the steps it did (after the forward commands in flight are answered or time
// out). A compensating, timed-out or failed saga gives up: it is marked failed, finished
// and aborted, its pending compensation is not sent again, and whatever it had not undone
// must be settled by hand. reason is recorded in the saga's log (saga_compensating or
// saga_failed event). It returns ErrNotFailed for a finished saga and ErrNotFound for an
// unknown id.
func (o *Orchestrator) Abort(ctx context.Context, id uuid.UUID, reason string) error {
	if reason == "" {
		reason = "no reason given"
	}
	return o.operate(ctx, id, input{kind: inAbort, reason: reason})
}

// Sweep handles every saga of a registered type whose timeout or scheduled retry is due
// now, in transactions of
// up to SweepBatch sagas locked with FOR UPDATE SKIP LOCKED, so sweepers of several
// processes share the work and never block on each other or on reply handling. It returns
// how many sagas it handled.
func (o *Orchestrator) Sweep(ctx context.Context) (int, error) {
	total := 0
	for {
		n, err := o.sweepBatch(ctx)
		total += n
		if err != nil || n < o.cfg.SweepBatch {
			return total, err
		}
	}
}

func (o *Orchestrator) sweepBatch(ctx context.Context) (int, error) {
	n := 0
	var notes []func()
	err := o.inTx(ctx, func(tx pgx.Tx) error {
		notes = notes[:0]
		now := o.now()
		rows, err := tx.Query(ctx, o.q.dueSagas, now, o.cfg.SweepBatch, o.typeNames())
		if err != nil {
			return fmt.Errorf("sagastate: sweep: %w", err)
		}
		ids, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
		if err != nil {
			return fmt.Errorf("sagastate: sweep: %w", err)
		}
		n = len(ids)
		for _, id := range ids {
			// A savepoint per saga: one saga that cannot be written (say its step's topic
			// became invalid) is logged and does not hold back the others.
			var note func()
			err := pgx.BeginFunc(ctx, tx, func(sp pgx.Tx) (err error) {
				note, err = o.apply(ctx, sp, id, input{kind: inTick})
				return err
			})
			if err == nil {
				notes = append(notes, note)
			}
			if err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				o.log.Error("sagastate: sweep saga", "saga", id, "err", err)
			}
		}
		return nil
	})
	if err == nil {
		notify(notes...)
	}
	return n, err
}
