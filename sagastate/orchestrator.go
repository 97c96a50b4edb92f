package sagastate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagabox/sagabox/inbox/consumer"
	"github.com/sagabox/sagabox/internal/pguuid"
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
	// Retention is how long finished sagas (completed, compensated, or failed and
	// aborted) are kept with their steps and events; Run deletes older ones every
	// minute, in small batches. Sagas that have not finished are never deleted.
	// Negative keeps everything. Defaults to 30 days.
	Retention time.Duration
	// Listeners receive every saga event committed while Run runs, in commit order, in
	// every orchestrator process. Defaults to none.
	Listeners []Listener
	// FeedInterval is how often the event feed polls for new events when Listeners are
	// set. Defaults to 200ms.
	FeedInterval time.Duration
	// Consumer tunes the reply consumer (concurrency, batching, timeouts). Its Brokers,
	// GroupID, Topics, Schema and Logger are taken from this Config when empty; a
	// different Brokers, GroupID, Topics or Schema is rejected by New (the same rule as
	// participants.Config.Consumer). Defaults to the consumer package's defaults, except
	// Concurrency (DefaultConcurrency) and BatchSize (DefaultBatchSize).
	Consumer consumer.Config
	// Now is the clock transitions compute with (deadlines, retry times, timestamps);
	// tests inject one to reach deadlines without sleeping. Defaults to the database's
	// clock (clock_timestamp() of the statement that locks the saga), so deadlines set by
	// one host are compared on every other with the same clock, whatever their own
	// clocks say.
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
	// DefaultRetention is Config.Retention's default.
	DefaultRetention = 30 * 24 * time.Hour
	// DefaultConcurrency is the reply consumer's Concurrency unless Config.Consumer sets
	// it: one transaction at a time, as participants.DefaultConcurrency and for the same
	// reason. The replies that arrive while a transition runs are applied together in
	// the next instead of each worker of eight starting one for its partition's one or
	// two replies.
	DefaultConcurrency = 1
	// DefaultBatchSize is the reply consumer's BatchSize unless Config.Consumer sets it:
	// the most replies applied in one transaction. With one worker the batch is all
	// the parallelism there is; at 256 no-op sagas in flight 128 ran 344-419 sagas/s
	// against 238-295 with the consumer package's 32 (BenchmarkSagaLoad, load 5-7; the
	// order saga's 229-266 against 258-267, its participants the bound). A transition
	// takes no savepoint per saga, so a large batch does not overflow PostgreSQL's
	// cache of 64 subtransactions (participants' handlers do take one each: they keep 32).
	DefaultBatchSize = 128
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
	if c.Retention == 0 {
		c.Retention = DefaultRetention
	}
	if c.FeedInterval == 0 {
		c.FeedInterval = 200 * time.Millisecond
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
	if len(c.Consumer.Brokers) > 0 && !slices.Equal(c.Consumer.Brokers, c.Brokers) {
		add("Consumer.Brokers %v contradicts Brokers %v; leave Consumer.Brokers empty", c.Consumer.Brokers, c.Brokers)
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
	steps *stepCache // the steps this process last wrote, by saga

	mu        sync.Mutex
	running   bool
	lastSweep atomic.Int64 // unix nanos of the last sweep that succeeded
	// feedDB, set by tests, replaces the pool for the event feed.
	feedDB DB
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
	o := &Orchestrator{pool: pool, cfg: cfg, q: newQueries(cfg.Schema), out: w, plans: map[string]*plan{}, log: cfg.Logger,
		steps: newStepCache(stepCacheSize)}
	for _, d := range cfg.Sagas {
		o.plans[d.Name()] = d.plan()
	}
	return o, nil
}

// Config returns the configuration with defaults applied.
func (o *Orchestrator) Config() Config { return o.cfg }

// clock is the time an injected Config.Now gives, or zero: the statements then use the
// database's clock.
func (o *Orchestrator) clock() time.Time {
	if o.cfg.Now == nil {
		return time.Time{}
	}
	return o.cfg.Now().UTC().Truncate(time.Microsecond)
}

// Start begins saga sagaType with id and payload inside tx, the caller's transaction. Prefer
// the typed Saga[P].Start, which takes a P; this untyped form is for generic tooling
// (tests, tracing wrappers, operator commands) that knows the type only by name. The
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
	// The first transition is computed at a reference time; start_saga moves its times
	// to the start time, the database's unless Config.Now says otherwise.
	clock := o.clock()
	ref := clock
	if ref.IsZero() {
		ref = time.Now().UTC().Truncate(time.Microsecond)
	}
	res, err := transition(p, newInstance(p, id, raw), input{kind: inStart, now: ref})
	if err != nil {
		return err
	}
	h, _ := ctx.Value(headersKey{}).(map[string]string)
	c := &change{prev: &Instance{}, res: res, headers: traceHeaders(h)}
	if err := o.q.start(ctx, tx, o.out, o.cfg.ReplyTopic, c, clock, o.steps); err != nil {
		return err
	}
	notify(o.cfg.Hooks.notifier(c.prev, &c.res))
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
	notes, err := o.applyMany(ctx, tx, []sagaInput{{id, in}}, nil)
	if err != nil {
		return nil, err
	}
	return notes[0], nil
}

// sagaInput is an input for saga id.
type sagaInput struct {
	id uuid.UUID
	in input
}

// applyMany applies inputs in order inside tx: it locks their sagas (in id order) and
// reads them in one round trip, computes every transition (several inputs for one saga
// apply one after the other) and writes all the changes in one more. It returns, for each
// input, the hook calls to make once tx commits (nil if none). Any error fails the whole
// call; nothing of it must then commit.
//
// pre, if not nil, is the locked read of (at least) these sagas, already done with the
// BEGIN of the reply consumer's transaction (prefetch); the writes then go with its
// COMMIT, so the transaction takes two round trips in all instead of four.
func (o *Orchestrator) applyMany(ctx context.Context, tx DB, inputs []sagaInput, pre *loading) ([]func(), error) {
	ids := make([]uuid.UUID, 0, len(inputs))
	seen := make(map[uuid.UUID]bool, len(inputs))
	for _, si := range inputs {
		if !seen[si.id] {
			seen[si.id] = true
			ids = append(ids, si.id)
		}
	}
	var sagas map[uuid.UUID]*Instance
	var now time.Time
	var err error
	if pre != nil && pre.covers(ids) {
		sagas, now, err = o.q.finishLoad(ctx, tx, pre, ids)
	} else {
		pre = nil
		sagas, now, err = o.q.load(ctx, tx, ids, true, o.clock(), o.steps)
	}
	if err != nil {
		return nil, err
	}
	changes := make(map[uuid.UUID]*change, len(ids))
	last := make(map[uuid.UUID]int, len(ids)) // the input a saga's hook calls go with
	var order []*change
	for i, si := range inputs {
		c := changes[si.id]
		cur := sagas[si.id]
		if c != nil {
			cur = &c.res.state
		}
		if err := o.crash("before-save"); err != nil { // once per input, as if each were alone
			return nil, err
		}
		in := si.in
		in.now = now
		res, err := transition(o.plans[cur.Type], *cur, in)
		if err != nil {
			return nil, err
		}
		if res.ignored != "" {
			o.log.Info("sagastate: input ignored", "saga", si.id, "type", cur.Type, "step", in.reply.Step, "op", in.reply.Op,
				"attempt", in.reply.Attempt, "outcome", in.reply.Outcome, "why", res.ignored)
			continue
		}
		if c == nil {
			c = &change{prev: sagas[si.id], headers: traceHeaders(in.reply.Headers)}
			changes[si.id] = c
			order = append(order, c)
		}
		c.res.state = res.state
		c.res.commands = append(c.res.commands, res.commands...)
		c.res.events = append(c.res.events, res.events...)
		c.res.attempts = append(c.res.attempts, res.attempts...)
		last[si.id] = i
	}
	notes := make([]func(), len(inputs))
	if len(order) == 0 {
		return notes, nil
	}
	if err := o.q.write(ctx, tx, o.out, o.cfg.ReplyTopic, order, o.steps, pre); err != nil {
		return nil, err
	}
	for range order {
		if err := o.crash("after-save"); err != nil {
			return nil, err
		}
	}
	for _, c := range order {
		s := &c.res.state
		if s.Status != c.prev.Status {
			o.log.Debug("sagastate: saga status", "saga", s.ID, "type", s.Type, "from", c.prev.Status, "to", s.Status)
		}
		notes[last[s.ID]] = o.cfg.Hooks.notifier(c.prev, &c.res)
	}
	return notes, nil
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
	// A look first, outside a transaction: an idle sweep (the usual one) costs one round
	// trip instead of three (BEGIN, due_sagas, COMMIT).
	var one int
	switch err := o.pool.QueryRow(ctx, o.q.sql("any_due"), ts(o.clock()), o.typeNames()).Scan(&one); {
	case errors.Is(err, pgx.ErrNoRows):
		return 0, nil
	case err != nil:
		return 0, fmt.Errorf("sagastate: sweep: %w", err)
	}
	total := 0
	for {
		n, failed, err := o.sweepBatch(ctx)
		total += n
		// Another batch at once only after a full one that all went well: sagas that
		// failed are postponed, and the next tick comes soon enough.
		if err != nil || failed > 0 || n < o.cfg.SweepBatch {
			return total, err
		}
	}
}

// SweepRetryDelay is how long the sweeper leaves a saga alone after it failed to handle
// it (its definition's step cannot be written, its row cannot be read, ...): the saga is
// looked at again after that, and meanwhile others due after it are handled.
const SweepRetryDelay = 10 * time.Second

func (o *Orchestrator) sweepBatch(ctx context.Context) (handled, failed int, err error) {
	var notes []func()
	err = o.inTx(ctx, func(tx pgx.Tx) error {
		notes, handled, failed = notes[:0], 0, 0
		clock := o.clock()
		rows, err := tx.Query(ctx, o.q.sql("due_sagas"), ts(clock), o.cfg.SweepBatch, o.typeNames())
		if err != nil {
			return fmt.Errorf("sagastate: sweep: %w", err)
		}
		ids, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
		if err != nil {
			return fmt.Errorf("sagastate: sweep: %w", err)
		}
		if len(ids) == 0 {
			return nil
		}
		// All of them at once: locked and read in one round trip, written in one more
		// (applyMany), inside a savepoint. The row locks taken by due_sagas are held
		// until the commit, where replies to these sagas wait: four round trips in all
		// instead of four per saga.
		inputs := make([]sagaInput, len(ids))
		for i, id := range ids {
			inputs[i] = sagaInput{id, input{kind: inTick}}
		}
		err = pgx.BeginFunc(ctx, tx, func(sp pgx.Tx) (err error) {
			notes, err = o.applyMany(ctx, sp, inputs, nil)
			return err
		})
		if err == nil {
			handled = len(ids)
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		notes = notes[:0]
		for _, id := range ids {
			// Then a savepoint per saga: one saga that cannot be written (say its step's
			// topic became invalid) is logged, postponed, and does not hold back the others.
			var note func()
			err := pgx.BeginFunc(ctx, tx, func(sp pgx.Tx) (err error) {
				note, err = o.apply(ctx, sp, id, input{kind: inTick})
				return err
			})
			if err == nil {
				handled++
				notes = append(notes, note)
				continue
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			failed++
			o.log.Error("sagastate: sweep saga; it is looked at again later", "saga", id, "retry_in", SweepRetryDelay, "err", err)
			if _, err := tx.Exec(ctx, o.q.sql("postpone_instance"), pguuid.Arg(id), SweepRetryDelay, ts(clock)); err != nil {
				return fmt.Errorf("sagastate: sweep: postpone saga %s: %w", id, err)
			}
		}
		return nil
	})
	if err == nil {
		notify(notes...)
	}
	return handled, failed, err
}
