package console

import (
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/sagabox/sagabox/inbox"
	"github.com/sagabox/sagabox/internal/textfmt"
	"github.com/sagabox/sagabox/outbox"
)

// listLimit caps the dead letters and held rows a page shows.
const listLimit = 200

type topicRow struct {
	Topic                   string
	Pending, RetryDue, Dead int64
	OldestAge               string
}

type heldRow struct {
	ID, Topic, Key, Attempts, Error, Created, NextAttempt, Why string
}

type outboxDead struct {
	ID, Topic, Key, Headers, Payload, Attempts, Error, Created, DeadAt string
}

type openTx struct {
	PID                          int32
	User, App, State, Age, Query string
}

type outboxData struct {
	Backlog outbox.Backlog
	Oldest  string
	Topics  []topicRow
	Held    []heldRow
	OpenTx  *openTx
	Dead    []outboxDead
}

func (c *console) outboxPage(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	var d outboxData
	var err error
	if d.Backlog, err = outbox.Stats(ctx, c.pool, c.cfg.Schema); err != nil {
		c.fail(w, r, http.StatusInternalServerError, err)
		return
	}
	d.Oldest = textfmt.Duration(d.Backlog.OldestPendingAge)
	topics, err := outbox.TopicBacklogs(ctx, c.pool, c.cfg.Schema)
	if err != nil {
		c.fail(w, r, http.StatusInternalServerError, err)
		return
	}
	for _, t := range topics {
		row := topicRow{Topic: t.Topic, Pending: t.Pending, RetryDue: t.RetryLater, Dead: t.Dead, OldestAge: "–"}
		if t.Pending > 0 {
			row.OldestAge = textfmt.Duration(t.OldestPendingAge)
		}
		d.Topics = append(d.Topics, row)
	}
	held, err := outbox.ListHeld(ctx, c.pool, c.cfg.Schema, listLimit)
	if err != nil {
		c.fail(w, r, http.StatusInternalServerError, err)
		return
	}
	for _, h := range held {
		row := heldRow{ID: h.ID.String(), Topic: h.Topic, Key: h.Key, Attempts: strconv.Itoa(h.Attempts), Error: h.LastError,
			Created: textfmt.Time(h.CreatedAt, "–"), NextAttempt: "–", Why: h.Why}
		if !h.NextAttemptAt.IsZero() {
			row.NextAttempt = textfmt.Time(h.NextAttemptAt, "–")
		}
		d.Held = append(d.Held, row)
	}
	var tx openTx
	var txAge float64
	switch err := c.pool.QueryRow(ctx, c.q.oldestTx).Scan(&tx.PID, &tx.User, &tx.App, &tx.State, &txAge, &tx.Query); err {
	case nil:
		tx.Age = textfmt.Duration(time.Duration(txAge * float64(time.Second)))
		d.OpenTx = &tx
	case pgx.ErrNoRows:
	default:
		c.fail(w, r, http.StatusInternalServerError, fmt.Errorf("oldest open transaction: %w", err))
		return
	}
	dead, err := outbox.ListDead(ctx, c.pool, c.cfg.Schema, listLimit)
	if err != nil {
		c.fail(w, r, http.StatusInternalServerError, err)
		return
	}
	for _, m := range dead {
		d.Dead = append(d.Dead, outboxDead{ID: m.ID.String(), Topic: m.Topic, Key: m.Key, Headers: fmtHeaders(m.Headers), Payload: preview(m.Payload),
			Attempts: strconv.Itoa(m.Attempts), Error: m.LastError, Created: textfmt.Time(m.CreatedAt, "–"), DeadAt: textfmt.Time(m.DeadAt, "–")})
	}
	c.render(w, r, "outbox", "Outbox", d)
}

type consumerRow struct {
	Consumer, Count, Last, URL string
	Active                     bool
}

type inboxDead struct {
	ID, Consumer, MessageID, Source, Key, Headers, Value, Attempts, Reason, DeadAt string
}

type inboxData struct {
	Consumer  string
	Consumers []consumerRow
	Dead      []inboxDead
}

func (c *console) inboxPage(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	d := inboxData{Consumer: r.URL.Query().Get("consumer")}
	rows, err := c.pool.Query(ctx, c.q.inboxConsumers)
	if err != nil {
		c.fail(w, r, http.StatusInternalServerError, fmt.Errorf("inbox dead letters per consumer: %w", err))
		return
	}
	var cr consumerRow
	var n int64
	var last time.Time
	if _, err := pgx.ForEachRow(rows, []any{&cr.Consumer, &n, &last}, func() error {
		cr.Count, cr.Last, cr.Active = strconv.FormatInt(n, 10), textfmt.Time(last, "–"), cr.Consumer == d.Consumer
		cr.URL = c.cfg.Prefix + "/inbox?consumer=" + urlQuery(cr.Consumer)
		d.Consumers = append(d.Consumers, cr)
		return nil
	}); err != nil {
		c.fail(w, r, http.StatusInternalServerError, fmt.Errorf("inbox dead letters per consumer: %w", err))
		return
	}
	store, err := inbox.NewStore(c.cfg.Schema)
	if err != nil {
		c.fail(w, r, http.StatusInternalServerError, err)
		return
	}
	dead, err := store.ListDeadLetters(ctx, c.pool, d.Consumer, listLimit)
	if err != nil {
		c.fail(w, r, http.StatusInternalServerError, err)
		return
	}
	for _, m := range dead {
		row := inboxDead{ID: strconv.FormatInt(m.ID, 10), Consumer: m.Consumer, MessageID: "–",
			Source: fmt.Sprintf("%s/%d@%d", m.Topic, m.Partition, m.Offset), Key: preview(m.Key), Headers: fmtHeaders(m.Headers),
			Value: preview(m.Value), Attempts: strconv.Itoa(m.Attempts), Reason: m.Reason, DeadAt: textfmt.Time(m.DeadAt, "–")}
		if m.MessageID.String() != "00000000-0000-0000-0000-000000000000" {
			row.MessageID = m.MessageID.String()
		}
		d.Dead = append(d.Dead, row)
	}
	c.render(w, r, "inbox", "Inbox dead letters", d)
}

type relayRow struct {
	ID, Started, Expires, Heartbeat string
	Alive                           bool
	Shards                          int
}

type leaseRow struct {
	Owner, Shards, Expires string
	Count                  int
	Valid                  bool
	Epoch                  int64
}

type relaysData struct {
	Relays   []relayRow
	Leases   []leaseRow
	LeaseTTL string
	Unowned  int
}

func (c *console) relaysPage(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	d := relaysData{LeaseTTL: c.cfg.LeaseTTL.String()}
	rows, err := c.pool.Query(ctx, c.q.leases)
	if err != nil {
		c.fail(w, r, http.StatusInternalServerError, fmt.Errorf("relay leases: %w", err))
		return
	}
	owned := map[string]int{}
	var l leaseRow
	var shards []int16
	var expires pgtype.Timestamptz
	if _, err := pgx.ForEachRow(rows, []any{&l.Owner, &l.Valid, &shards, &expires, &l.Epoch}, func() error {
		l.Count, l.Shards, l.Expires = len(shards), shardRanges(shards), "–"
		if expires.Valid && expires.InfinityModifier == pgtype.Finite {
			l.Expires = textfmt.Time(expires.Time, "–")
		}
		if l.Owner == "" || !l.Valid {
			d.Unowned += l.Count
		} else {
			owned[l.Owner] += l.Count
		}
		d.Leases = append(d.Leases, l)
		return nil
	}); err != nil {
		c.fail(w, r, http.StatusInternalServerError, fmt.Errorf("relay leases: %w", err))
		return
	}
	rows, err = c.pool.Query(ctx, c.q.relays)
	if err != nil {
		c.fail(w, r, http.StatusInternalServerError, fmt.Errorf("relays: %w", err))
		return
	}
	now := time.Now()
	var rr relayRow
	var started, exp time.Time
	if _, err := pgx.ForEachRow(rows, []any{&rr.ID, &started, &exp, &rr.Alive}, func() error {
		rr.Started, rr.Expires, rr.Shards = textfmt.Time(started, "–"), textfmt.Time(exp, "–"), owned[rr.ID]
		rr.Heartbeat = fmtAgo(now.Sub(exp.Add(-c.cfg.LeaseTTL)))
		d.Relays = append(d.Relays, rr)
		return nil
	}); err != nil {
		c.fail(w, r, http.StatusInternalServerError, fmt.Errorf("relays: %w", err))
		return
	}
	c.render(w, r, "relays", "Relays", d)
}

// shardRanges writes sorted shard numbers as ranges: 0-63, 128, 130-131.
func shardRanges(s []int16) string {
	slices.Sort(s)
	var b strings.Builder
	for i := 0; i < len(s); {
		j := i
		for j+1 < len(s) && s[j+1] == s[j]+1 {
			j++
		}
		if b.Len() > 0 {
			b.WriteString(", ")
		}
		if i == j {
			fmt.Fprintf(&b, "%d", s[i])
		} else {
			fmt.Fprintf(&b, "%d–%d", s[i], s[j])
		}
		i = j + 1
	}
	return b.String()
}

func fmtHeaders(h map[string]string) string {
	keys := make([]string, 0, len(h))
	for k := range h {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s: %s\n", k, h[k])
	}
	return strings.TrimSuffix(b.String(), "\n")
}

// preview shows the start of a payload as text, or its size when it is binary.
func preview(b []byte) string {
	const n = 300
	if len(b) == 0 {
		return ""
	}
	if !utf8.Valid(b) {
		return fmt.Sprintf("(%d bytes of binary data)", len(b))
	}
	if len(b) > n {
		cut := n
		for cut > 0 && !utf8.RuneStart(b[cut]) {
			cut--
		}
		return string(b[:cut]) + fmt.Sprintf("… (%d bytes)", len(b))
	}
	return string(b)
}
