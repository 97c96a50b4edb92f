package consumer

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/segmentio/kafka-go"

	"github.com/sagabox/sagabox/inbox"
	"github.com/sagabox/sagabox/outbox"
)

const (
	// batchRetries is how often a shared transaction that failed with a transient
	// error is run again as a whole before its records go one per transaction.
	batchRetries = 1
	// quietLocalRetries is how many local retries of one record are logged at debug
	// level; later ones (the database is down, not merely contended) at warn.
	quietLocalRetries = 10
	// localMinBackoff is the first wait before a local retry (unless MinBackoff is
	// shorter): a deadlock or serialization failure is usually over at once.
	localMinBackoff = 10 * time.Millisecond
)

// handleBatch handles records of one worker. Runs of well-formed records go through
// one transaction; malformed records are dead-lettered between them, so a record's
// offset is marked done only after every earlier record of its partition. It reports
// whether a shared transaction met a lock conflict.
func (r *run) handleBatch(batch []kafka.Message) (conflict bool) {
	msgs := make([]Message, 0, len(batch))
	raw := make([]kafka.Message, 0, len(batch))
	flush := func() bool {
		if len(msgs) == 0 {
			return true
		}
		ok, c := r.handleRun(msgs, raw)
		conflict = conflict || c
		msgs, raw = msgs[:0], raw[:0]
		return ok
	}
	for _, km := range batch {
		m, err := decode(km)
		if err == nil {
			msgs, raw = append(msgs, m), append(raw, km)
			continue
		}
		if !flush() || !r.deadLetter(m, km, 0, err) {
			return conflict
		}
	}
	flush()
	return conflict
}

// lockConflict reports whether err is a transient error caused by other
// transactions' locks, which a smaller transaction is less likely to meet.
func lockConflict(err error) bool {
	switch sqlState(err) {
	case "40P01", "40001", "55P03":
		return true
	}
	return false
}

func decode(km kafka.Message) (Message, error) {
	m := Message{
		Topic: km.Topic, Partition: km.Partition, Offset: km.Offset,
		Key: km.Key, Value: km.Value, Time: km.Time,
		Headers: make(map[string]string, len(km.Headers)),
	}
	for _, h := range km.Headers {
		m.Headers[h.Key] = string(h.Value)
	}
	raw, ok := m.Headers[outbox.HeaderMessageID]
	if !ok {
		return m, fmt.Errorf("%w: no %q header; records must come from the outbox relay or carry a UUID message id", ErrMalformed, outbox.HeaderMessageID)
	}
	id, err := uuid.Parse(raw)
	if err != nil || id == uuid.Nil {
		return m, fmt.Errorf("%w: header %q is %q, not a non-zero UUID", ErrMalformed, outbox.HeaderMessageID, raw)
	}
	m.ID = id
	return m, nil
}

// lockOrder returns the indices of msgs in the order a shared transaction handles
// them: by lock key (Config.LockKey, default the Kafka key), then topic, partition,
// Kafka key and offset. Transactions of different workers whose handlers lock the rows
// named by the lock key thus take those locks in one global order and cannot deadlock
// on them. Records of one Kafka key in one partition keep their offset order: they
// all sort under the lock key of the first of them.
func lockOrder(msgs []Message, lockKey func(Message) []byte) []int {
	type group struct {
		topic     string
		partition int
		key       string
	}
	groupKey := make(map[group][]byte, len(msgs))
	lk := make([][]byte, len(msgs))
	order := make([]int, len(msgs))
	for i, m := range msgs {
		order[i] = i
		g := group{m.Topic, m.Partition, string(m.Key)}
		k, ok := groupKey[g]
		if !ok {
			k = m.Key
			if lockKey != nil {
				k = lockKey(m)
			}
			groupKey[g] = k
		}
		lk[i] = k
	}
	slices.SortStableFunc(order, func(a, b int) int {
		x, y := &msgs[a], &msgs[b]
		return cmp.Or(bytes.Compare(lk[a], lk[b]), strings.Compare(x.Topic, y.Topic), cmp.Compare(x.Partition, y.Partition),
			bytes.Compare(x.Key, y.Key), cmp.Compare(x.Offset, y.Offset))
	})
	return order
}

// handleRun handles well-formed records (raw are their Kafka records, in fetch order)
// and reports false if the run ended before all were handled; conflict reports
// whether the shared transaction met a lock conflict.
func (r *run) handleRun(msgs []Message, raw []kafka.Message) (ok, conflict bool) {
	failed, failure := -1, error(nil)
	if len(msgs) > 1 {
		order := lockOrder(msgs, r.c.cfg.LockKey)
		for try := 1; ; try++ {
			first, i, err := r.applyAll(msgs, order)
			if err == nil {
				return r.handled(msgs, first, raw), conflict
			}
			if r.stopping() {
				return false, conflict
			}
			if IsTransient(err) {
				conflict = conflict || lockConflict(err)
				r.localRetry(msgs[order[0]], try, len(msgs), err)
				if !r.sleep(r.c.localBackoff(try)) {
					return false, conflict
				}
				if try <= batchRetries {
					continue
				}
			} else if errors.As(err, new(*handlerError)) {
				failed, failure = i, err // counts as the failing record's first attempt
			}
			break
		}
		// One transaction per record, in fetch order, isolates the failure from its
		// neighbours and keeps each partition's offsets marked in order.
	}
	for i := range msgs {
		var prior error
		if i == failed {
			prior = failure
		}
		if !r.handleOne(msgs[i], raw[i], prior) {
			return false, conflict
		}
	}
	return true, conflict
}

// applyAll records msgs in the inbox and runs the handler on the new ones, in order,
// in one transaction. first[i] reports whether msgs[i] was new; on a handler error,
// failed is the index of the record whose handler failed; -1 when no handler did
// (a commit refused by a deferred constraint is no one record's fault).
func (r *run) applyAll(msgs []Message, order []int) (first []bool, failed int, err error) {
	failed = -1
	ids := make([]uuid.UUID, len(order))
	for k, i := range order {
		ids[k] = msgs[i].ID
	}
	inOrder := make([]Message, len(order))
	for k, i := range order {
		inOrder[k] = msgs[i]
	}
	err = r.inTx(ids, inOrder, func(ctx context.Context, tx pgx.Tx, fresh []bool) error {
		first = make([]bool, len(msgs))
		if r.c.batch != nil {
			var news []Message
			for k, i := range order {
				if first[i] = fresh[k]; first[i] {
					news = append(news, msgs[i])
				}
			}
			if err := r.callBatch(ctx, tx, news); err != nil {
				return &handlerError{err} // not one record's fault: each is tried on its own next
			}
			return nil
		}
		for k, i := range order {
			if first[i] = fresh[k]; !first[i] {
				continue
			}
			if err := r.callHandler(ctx, tx, msgs[i]); err != nil {
				failed = i
				return &handlerError{err}
			}
		}
		return nil
	})
	return first, failed, err
}

// handleOne retries one record until it is handled or dead-lettered, and reports
// false if the run ended first. prior is the handler's error from a batch attempt.
//
// Handler errors count against MaxAttempts. Transient database errors (IsTransient)
// and database errors around the handler are retried locally: they spend no attempt,
// back off up to MaxBackoff and never dead-letter the record.
func (r *run) handleOne(m Message, km kafka.Message, prior error) bool {
	cfg := &r.c.cfg
	handlerFailures, local := 0, 0
	err := prior
	for {
		if err == nil {
			var first bool
			err = r.inTx([]uuid.UUID{m.ID}, []Message{m}, func(ctx context.Context, tx pgx.Tx, fresh []bool) error {
				if first = fresh[0]; !first {
					return nil
				}
				if err := r.callHandler(ctx, tx, m); err != nil {
					return &handlerError{err}
				}
				return nil
			})
			if err == nil {
				return r.handled([]Message{m}, []bool{first}, []kafka.Message{km})
			}
			if r.stopping() {
				return false
			}
		}
		var he *handlerError
		var wait time.Duration
		switch {
		case IsPermanent(err):
			return r.deadLetter(m, km, handlerFailures+1, unwrapHandler(err))
		case errors.As(err, &he) && !IsTransient(err):
			handlerFailures++
			if handlerFailures >= cfg.MaxAttempts {
				return r.deadLetter(m, km, handlerFailures, fmt.Errorf("%w (%d): %w", ErrGaveUp, handlerFailures, he.err))
			}
			if hook := cfg.Hooks.Retry; hook != nil {
				hook(m, handlerFailures, he.err)
			}
			cfg.Logger.Warn("consumer: message failed, will retry", "consumer", cfg.Name, "topic", m.Topic,
				"partition", m.Partition, "offset", m.Offset, "message_id", m.ID, "attempt", handlerFailures, "err", he.err)
			wait = r.c.backoff(handlerFailures)
		default:
			local++
			r.localRetry(m, local, 1, err)
			wait = r.c.localBackoff(local)
		}
		if !r.sleep(wait) {
			return false
		}
		err = nil
	}
}

func unwrapHandler(err error) error {
	var he *handlerError
	if errors.As(err, &he) {
		return he.err
	}
	return err
}

// localRetry reports a retry that spends no attempt: a transient error, or a
// database error around the handler.
func (r *run) localRetry(m Message, n, records int, err error) {
	cfg := &r.c.cfg
	if hook := cfg.Hooks.LocalRetry; hook != nil {
		hook(m.Topic, m.Partition, err)
	}
	level := slog.LevelDebug
	if n > quietLocalRetries || !IsTransient(err) {
		level = slog.LevelWarn
	}
	cfg.Logger.Log(context.Background(), level, "consumer: database error, retrying the transaction", "consumer", cfg.Name,
		"topic", m.Topic, "partition", m.Partition, "offset", m.Offset, "records", records, "retry", n, "sqlstate", sqlState(err), "err", err)
}

// callHandler runs the handler on m inside the Trace hook, and reports its duration
// to the HandlerDone hook.
func (r *run) callHandler(ctx context.Context, tx pgx.Tx, m Message) error {
	hooks := &r.c.cfg.Hooks
	end := func(error) {}
	if hooks.Trace != nil {
		var e func(error)
		if ctx, e = hooks.Trace(ctx, m); e != nil {
			end = e
		}
	}
	start := time.Now()
	err := r.safeHandler(ctx, tx, m)
	if hooks.HandlerDone != nil {
		hooks.HandlerDone(m, time.Since(start), err)
	}
	end(err)
	return err
}

// safeHandler runs the handler and turns a panic into a permanent error carrying the
// stack: a payload that makes the handler panic would panic again on every delivery,
// so it is dead-lettered and the process stays up.
func (r *run) safeHandler(ctx context.Context, tx pgx.Tx, m Message) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = Permanent(fmt.Errorf("%w: %v\n%s", ErrHandlerPanic, p, debug.Stack()))
		}
	}()
	return r.c.handler(ctx, tx, m)
}

// callBatch runs the batch handler on the new records of a shared transaction. A panic
// is returned as an error: the records are then tried one by one, where a panic is the
// record's own.
func (r *run) callBatch(ctx context.Context, tx pgx.Tx, msgs []Message) (err error) {
	if len(msgs) == 0 {
		return nil
	}
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("batch handler panicked: %v", p)
		}
	}()
	if hooks := &r.c.cfg.Hooks; hooks.Trace != nil {
		ctx = context.WithValue(ctx, traceKey{}, hooks.Trace)
	}
	start := time.Now()
	err = r.c.batch(ctx, tx, msgs)
	if hook := r.c.cfg.Hooks.HandlerDone; hook != nil {
		for _, m := range msgs {
			hook(m, time.Since(start), err)
		}
	}
	return err
}

type traceKey struct{}

// Trace runs the consumer's Trace hook (Hooks.Trace) for msg, one of the records a
// BatchHandler got with ctx, and returns the context to handle msg with and the
// function to call with the outcome. A batch handler that handles its records one
// after another calls it around each, so each gets its span as with a Handler. Without
// a Trace hook it returns ctx and a function that does nothing.
func Trace(ctx context.Context, msg Message) (context.Context, func(error)) {
	end := func(error) {}
	if trace, ok := ctx.Value(traceKey{}).(func(context.Context, Message) (context.Context, func(error))); ok {
		var e func(error)
		if ctx, e = trace(ctx, msg); e != nil {
			end = e
		}
	}
	return ctx, end
}

// handlerError tells handler failures (counted against MaxAttempts) from database
// failures around the handler (retried without limit).
type handlerError struct{ err error }

func (e *handlerError) Error() string { return e.err.Error() }
func (e *handlerError) Unwrap() error { return e.err }

// inTx records ids in the inbox in a new transaction and runs fn in it with a
// context for its handlers; fresh[i] reports whether ids[i] was new. BEGIN, the
// inbox insert and the statements the Prefetch function queues for msgs take one
// round trip, and the commit one with the statements the
// handlers queued for it (QueueAtCommit). An error after which the connection is
// closed is marked as lost (transient, whatever fn returned); a commit refused by a
// deferred constraint (class 23) is the handler's.
func (r *run) inTx(ids []uuid.UUID, msgs []Message, fn func(ctx context.Context, tx pgx.Tx, fresh []bool) error) error {
	// A connection of our own, not the pool's Tx: a commit sent in a batch leaves no
	// statement to send to release it.
	conn, err := r.c.pool.Acquire(r.ctx)
	if err != nil {
		return fmt.Errorf("consumer: begin: %w", err)
	}
	defer conn.Release() // closed by the pool unless idle
	b := &pgx.Batch{}
	b.BeginTx(pgx.TxOptions{})
	var fresh []bool
	if len(ids) > 0 {
		if err := r.c.store.QueueRecordMany(b, r.c.cfg.Name, ids, &fresh); err != nil {
			return err
		}
	}
	ctx := r.ctx
	if r.c.prefetch != nil && len(msgs) > 0 {
		ctx = context.WithValue(ctx, prefetchKey{}, r.c.prefetch(msgs, b))
	}
	br := conn.SendBatch(r.ctx, b)
	tx := br.Tx()
	if err := br.Close(); err != nil {
		_ = tx.Rollback(context.WithoutCancel(r.ctx))
		return fmt.Errorf("consumer: begin: %w", err)
	}
	q := &atCommit{}
	if err := fn(context.WithValue(ctx, commitKey{}, q), tx, fresh); err != nil {
		return r.rollback(tx, err)
	}
	if q.b.Len()+q.last.b.Len() > 0 {
		return r.commitQueued(tx, q)
	}
	if err := tx.Commit(r.ctx); err != nil {
		return commitError(err)
	}
	return nil
}

// rollback ends tx after err.
func (r *run) rollback(tx pgx.Tx, err error) error {
	lost := tx.Conn().IsClosed()
	if tx.Conn().PgConn().TxStatus() != 'I' {
		_ = tx.Rollback(context.WithoutCancel(r.ctx))
	}
	if lost {
		return &connLostError{err}
	}
	return err
}

func commitError(err error) error {
	err = fmt.Errorf("consumer: commit: %w", err)
	if strings.HasPrefix(sqlState(err), "23") {
		return &handlerError{err}
	}
	return err
}

// commitQueued sends the queued statements and COMMIT in one round trip. A failing
// statement stops the rest, COMMIT included, so nothing commits.
func (r *run) commitQueued(tx pgx.Tx, q *atCommit) error {
	n := q.b.Len()
	q.b.QueuedQueries = append(q.b.QueuedQueries, q.last.b.QueuedQueries...)
	for i, end := range q.last.ends {
		q.ends, q.mapErr = append(q.ends, n+end), append(q.mapErr, q.last.mapErr[i])
	}
	q.b.Queue("commit")
	br := tx.SendBatch(r.ctx, &q.b)
	err := func() error {
		done := 0
		for i, end := range q.ends {
			for ; done < end; done++ {
				if _, err := br.Exec(); err != nil {
					if q.mapErr[i] != nil {
						err = q.mapErr[i](err)
					}
					if IsTransient(err) {
						return err
					}
					return &handlerError{err}
				}
			}
		}
		if _, err := br.Exec(); err != nil {
			return commitError(err)
		}
		return nil
	}()
	if cerr := br.Close(); err == nil && cerr != nil {
		err = commitError(cerr)
	}
	if err != nil {
		return r.rollback(tx, err)
	}
	return nil
}

type commitKey struct{}

type prefetchKey struct{}

// Prefetch sets f to queue, for the records of each transaction (new or already
// handled), statements that run in the round trip of its BEGIN and inbox insert — a
// batch handler's first reads, with callbacks (QueuedQuery.Query) that keep their
// results. f returns what the handler then gets from Prefetched. A failing statement
// fails the transaction's start: retried locally, like a database error around the
// handler. Call it before Run; it is for a BatchHandler that knows what to read from
// the records alone (package participants reads its barrier rows so).
func (c *Consumer) Prefetch(f func(msgs []Message, b *pgx.Batch) any) { c.prefetch = f }

// Prefetched returns what the Prefetch function returned for the transaction of ctx
// (the context a handler got), or nil.
func Prefetched(ctx context.Context) any { return ctx.Value(prefetchKey{}) }

// atCommit holds the statements handlers queued to run with the commit, those to
// run after them (QueueLastAtCommit), and the values handlers keep for the
// transaction (TxValue).
type atCommit struct {
	queued
	last   queued
	values map[any]any
}

// queued are statements queued for the commit.
type queued struct {
	b      pgx.Batch
	ends   []int // the number of statements queued up to each call
	mapErr []func(error) error
}

func (q *queued) add(b *pgx.Batch, mapErr func(error) error) {
	q.b.QueuedQueries = append(q.b.QueuedQueries, b.QueuedQueries...)
	q.ends, q.mapErr = append(q.ends, q.b.Len()), append(q.mapErr, mapErr)
}

// TxValue returns the value kept under key for the consumer transaction that ctx (the
// context a Handler or BatchHandler got) belongs to, made by mk on the first call for
// that transaction; ok is false when ctx is not a consumer's. It lets the handlers of
// the records of one transaction share what lives as long as it does, such as totals
// written once with the commit (QueueAtCommit). A transaction run again (after a
// transient error, or record by record) starts with no values. A handler that
// changes a value and then fails (or, under package participants, refuses) does not
// undo the change: change values only on the way to success. Not safe for concurrent
// use: the handlers of one transaction run one after another.
func TxValue(ctx context.Context, key any, mk func() any) (v any, ok bool) {
	q, ok := ctx.Value(commitKey{}).(*atCommit)
	if !ok {
		return nil, false
	}
	if v, ok = q.values[key]; !ok {
		if q.values == nil {
			q.values = map[any]any{}
		}
		v = mk()
		q.values[key] = v
	}
	return v, true
}

// QueueAtCommit queues the statements of b to run in the round trip of the commit of
// the consumer transaction that ctx (the context a Handler or BatchHandler got)
// belongs to, once the handler returned, and reports whether it did; false means ctx
// is not a consumer's: send b yourself. If one fails, the rest and the commit do not
// run: the record is retried like after a handler error, or locally (spending no
// attempt) when the error is transient or mapErr, if not nil, makes it so (Transient).
// b's statements must not set callbacks (QueuedQuery.Exec and the like).
func QueueAtCommit(ctx context.Context, b *pgx.Batch, mapErr func(error) error) bool {
	q, ok := ctx.Value(commitKey{}).(*atCommit)
	if ok {
		q.add(b, mapErr)
	}
	return ok
}

// QueueLastAtCommit is QueueAtCommit for statements that run after all those queued
// with QueueAtCommit, right before COMMIT. A hot row updated there stays locked for
// the least time, and a savepoint that a batch handler's later statements release or
// roll back (package participants queues those with QueueAtCommit) does not contain
// them: a handler under package participants that queues its own statements for the
// commit must queue them here. Nothing takes queued statements back: a handler that
// queues and then fails (or refuses) still has them committed with the transaction's
// other records, so queue only on the way to success, and only statements that
// cannot fail on what the handler validated (a failure fails the whole transaction,
// and each rerun of the record, until it is dead-lettered).
func QueueLastAtCommit(ctx context.Context, b *pgx.Batch, mapErr func(error) error) bool {
	q, ok := ctx.Value(commitKey{}).(*atCommit)
	if ok {
		q.last.add(b, mapErr)
	}
	return ok
}

// handled marks committed records for the offset commit: the newest offset of every
// partition among them. It reports false when a test simulated a crash right after
// the database commit.
func (r *run) handled(msgs []Message, first []bool, raw []kafka.Message) bool {
	if hook := r.c.crashAfterDBCommit; hook != nil {
		for _, m := range msgs {
			if hook(m) {
				r.crashed.Store(true)
				r.halt()
				r.cancel()
				return false
			}
		}
	}
	hooks := &r.c.cfg.Hooks
	if hooks.Handled != nil && first != nil {
		for i, m := range msgs {
			hooks.Handled(m, !first[i])
		}
	}
	for i, km := range raw {
		if newestOfPartition(raw, i) {
			if hooks.Lag != nil {
				hooks.Lag(km.Topic, km.Partition, max(km.HighWaterMark-km.Offset-1, 0))
			}
			r.done <- km
		}
	}
	return true
}

// newestOfPartition reports whether raw[i] has the highest offset of its partition in raw.
func newestOfPartition(raw []kafka.Message, i int) bool {
	for j := range raw {
		if j != i && raw[j].Topic == raw[i].Topic && raw[j].Partition == raw[i].Partition && raw[j].Offset > raw[i].Offset {
			return false
		}
	}
	return true
}

// deadLetter stores the record with its reason, together with its inbox row, and
// reports false if the run ended before that succeeded.
func (r *run) deadLetter(m Message, km kafka.Message, attempts int, reason error) bool {
	cfg := &r.c.cfg
	d := deadLetterOf(cfg.Name, m, attempts, reason)
	for failures := 1; ; failures++ {
		var ids []uuid.UUID
		if m.ID != uuid.Nil {
			ids = []uuid.UUID{m.ID}
		}
		err := r.inTx(ids, nil, func(ctx context.Context, tx pgx.Tx, fresh []bool) error {
			if len(fresh) > 0 && !fresh[0] {
				return nil // already handled or dead-lettered under this id
			}
			_, err := r.c.store.AddDeadLetter(ctx, tx, d)
			return err
		})
		if err == nil {
			cfg.Logger.Warn("consumer: message dead-lettered", "consumer", cfg.Name, "topic", m.Topic,
				"partition", m.Partition, "offset", m.Offset, "message_id", m.ID, "attempts", attempts, "reason", d.Reason)
			if hook := cfg.Hooks.DeadLettered; hook != nil {
				hook(d)
			}
			return r.handled([]Message{m}, nil, []kafka.Message{km})
		}
		if r.stopping() {
			return false
		}
		// The store escapes what text columns cannot hold, so only the database can
		// fail here: wait for it, backing off, like any local retry.
		r.localRetry(m, failures, 1, fmt.Errorf("store dead letter: %w", err))
		if !r.sleep(r.c.localBackoff(failures)) {
			return false
		}
	}
}

// deadLetterOf is the dead letter consumer stores for m.
func deadLetterOf(consumer string, m Message, attempts int, reason error) inbox.DeadLetter {
	return inbox.DeadLetter{
		Consumer: consumer, MessageID: m.ID, Topic: m.Topic, Partition: m.Partition, Offset: m.Offset,
		Key: m.Key, Value: m.Value, Headers: m.Headers, Attempts: attempts, Reason: reason.Error(),
	}
}
