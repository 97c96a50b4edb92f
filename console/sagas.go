package console

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/sagabox/sagabox/internal/textfmt"
	"github.com/sagabox/sagabox/internal/timeline"
	"github.com/sagabox/sagabox/sagastate"
)

var allStatuses = []sagastate.SagaStatus{
	sagastate.SagaRunning, sagastate.SagaCompensating, sagastate.SagaTimeout,
	sagastate.SagaFailed, sagastate.SagaCompensated, sagastate.SagaCompleted,
}

// countLimit bounds the status counts: above it the list shows the planner's estimate.
const countLimit = 1000

type statusCount struct {
	Status  string
	Count   string
	Checked bool
	URL     string
}

type sagaRow struct {
	ID, Type, Status      string
	Aborted               bool
	Created, Age, Updated string
	Took, LastError       string
}

type listData struct {
	Counts                       []statusCount
	Types                        []string
	Type, Newer, Older, Stuck    string
	Q                            string
	Durations                    []string
	Rows                         []sagaRow
	FirstURL, NewerURL, OlderURL string
	Filtered                     bool
}

// parseAge reads a duration such as 90s, 15m, 2h or 7d; "" is zero.
func parseAge(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, nil
	}
	if d, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.ParseFloat(d, 64)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("%q is not a duration; use e.g. 30s, 15m, 2h or 7d", s)
		}
		return time.Duration(n * float64(24*time.Hour)), nil
	}
	v, err := time.ParseDuration(s)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("%q is not a duration; use e.g. 30s, 15m, 2h or 7d", s)
	}
	return v, nil
}

// cursor is a keyset position: the (created_at, id) of a row.
type cursor struct {
	at time.Time
	id uuid.UUID
}

func (c cursor) String() string {
	return strconv.FormatInt(c.at.UnixMicro(), 10) + "_" + c.id.String()
}

func parseCursor(s string) (cursor, error) {
	a, b, ok := strings.Cut(s, "_")
	micros, err := strconv.ParseInt(a, 10, 64)
	id, err2 := uuid.Parse(b)
	if !ok || err != nil || err2 != nil {
		return cursor{}, fmt.Errorf("page cursor %q is not valid; start again from the first page", s)
	}
	return cursor{at: time.UnixMicro(micros), id: id}, nil
}

// idRange turns a full id or a hex prefix of one (dashes optional) into a primary-key range.
func idRange(q string) (lo, hi uuid.UUID, err error) {
	hex := strings.ToLower(strings.ReplaceAll(strings.TrimSpace(q), "-", ""))
	if len(hex) == 0 || len(hex) > 32 || strings.Trim(hex, "0123456789abcdef") != "" {
		return lo, hi, fmt.Errorf("%q is not a saga id or the start of one (hex digits, dashes optional)", q)
	}
	pad := func(c string) uuid.UUID {
		u, _ := uuid.Parse(hex + strings.Repeat(c, 32-len(hex)))
		return u
	}
	return pad("0"), pad("f"), nil
}

func (c *console) sagaList(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	v := r.URL.Query()
	d := listData{Type: v.Get("type"), Newer: v.Get("newer"), Older: v.Get("older"), Stuck: v.Get("stuck"), Q: strings.TrimSpace(v.Get("q")),
		Durations: []string{"1m", "5m", "15m", "1h", "6h", "24h", "7d"}}
	var statuses []string
	for _, s := range v["status"] {
		if !slices.Contains(allStatuses, sagastate.SagaStatus(s)) {
			c.fail(w, r, http.StatusBadRequest, fmt.Errorf("unknown status %q", s))
			return
		}
		statuses = append(statuses, s)
	}
	newer, err1 := parseAge(d.Newer)
	older, err2 := parseAge(d.Older)
	stuck, err3 := parseAge(d.Stuck)
	if err := errors.Join(err1, err2, err3); err != nil {
		c.fail(w, r, http.StatusBadRequest, err)
		return
	}
	d.Filtered = len(statuses) > 0 || d.Type != "" || newer > 0 || older > 0 || stuck > 0 || d.Q != ""

	if d.Q != "" {
		if id, err := uuid.Parse(d.Q); err == nil {
			http.Redirect(w, r, c.cfg.Prefix+"/sagas/"+id.String(), http.StatusSeeOther)
			return
		}
	}
	var err error
	if d.Types, err = c.sagaTypes(r); err != nil {
		c.fail(w, r, http.StatusInternalServerError, err)
		return
	}
	if d.Counts, err = c.statusCounts(r, statuses, d.Type); err != nil {
		c.fail(w, r, http.StatusInternalServerError, err)
		return
	}

	var rows pgx.Rows
	limit := c.cfg.PageSize + 1
	newerPage := false
	switch {
	case d.Q != "":
		lo, hi, err := idRange(d.Q)
		if err != nil {
			c.fail(w, r, http.StatusBadRequest, err)
			return
		}
		rows, err = c.pool.Query(ctx, c.q.listByID, pgx.QueryExecModeExec, lo, hi, limit)
		if err != nil {
			c.fail(w, r, http.StatusInternalServerError, fmt.Errorf("list sagas: %w", err))
			return
		}
	default:
		if len(statuses) == 0 {
			for _, s := range allStatuses {
				statuses = append(statuses, string(s))
			}
		}
		if stuck > 0 {
			// Only unfinished sagas can be stuck; skipping the finished statuses keeps the
			// scan off the (large) completed and compensated ranges.
			statuses = slices.DeleteFunc(statuses, func(s string) bool {
				return s == string(sagastate.SagaCompleted) || s == string(sagastate.SagaCompensated)
			})
		}
		now := time.Now()
		from, until := time.Time{}, time.Time{}
		fromArg, untilArg := any("-infinity"), any("infinity")
		if newer > 0 {
			from = now.Add(-newer)
			fromArg = from
		}
		if older > 0 {
			until = now.Add(-older)
			untilArg = until
		}
		var stuckArg pgtype.Timestamptz
		if stuck > 0 {
			stuckArg = pgtype.Timestamptz{Time: now.Add(-stuck), Valid: true}
		}
		sql := c.q.listOlder
		curAt, curID := any("infinity"), uuid.Max
		if s := v.Get("before"); s != "" {
			cur, err := parseCursor(s)
			if err != nil {
				c.fail(w, r, http.StatusBadRequest, err)
				return
			}
			curAt, curID = cur.at, cur.id
		} else if s := v.Get("after"); s != "" {
			cur, err := parseCursor(s)
			if err != nil {
				c.fail(w, r, http.StatusBadRequest, err)
				return
			}
			sql, curAt, curID, newerPage = c.q.listNewer, cur.at, cur.id, true
		}
		rows, err = c.pool.Query(ctx, sql, pgx.QueryExecModeExec, statuses, d.Type, fromArg, untilArg, stuckArg, curAt, curID, limit)
		if err != nil {
			c.fail(w, r, http.StatusInternalServerError, fmt.Errorf("list sagas: %w", err))
			return
		}
	}
	list, err := pgx.CollectRows(rows, scanListRow)
	if err != nil {
		c.fail(w, r, http.StatusInternalServerError, fmt.Errorf("list sagas: %w", err))
		return
	}
	more := len(list) > c.cfg.PageSize
	if more {
		list = list[:c.cfg.PageSize]
	}
	if newerPage {
		slices.Reverse(list)
	}
	now := time.Now()
	for _, s := range list {
		d.Rows = append(d.Rows, toRow(s, now))
	}

	base := url.Values{}
	for k, vs := range v {
		if k != "before" && k != "after" {
			base[k] = vs
		}
	}
	link := func(k, val string) string {
		u := url.Values{}
		for kk, vs := range base {
			u[kk] = vs
		}
		if k != "" {
			u.Set(k, val)
		}
		return c.cfg.Prefix + "/sagas?" + u.Encode()
	}
	if d.Q == "" && len(list) > 0 {
		// Older pages follow when this page is full (or when we came from an older page);
		// newer pages exist whenever this one did not start at the top.
		if more || newerPage {
			d.OlderURL = link("before", cursor{list[len(list)-1].CreatedAt, list[len(list)-1].ID}.String())
		}
		if v.Get("before") != "" || (newerPage && more) {
			d.NewerURL = link("after", cursor{list[0].CreatedAt, list[0].ID}.String())
		}
		if d.NewerURL != "" {
			d.FirstURL = link("", "")
		}
	}
	c.render(w, r, "sagas", "Sagas", d)
}

func scanListRow(row pgx.CollectableRow) (sagastate.Instance, error) {
	var s sagastate.Instance
	var status string
	var fin, ab pgtype.Timestamptz
	err := row.Scan(&s.ID, &s.Type, &status, &s.CreatedAt, &s.UpdatedAt, &fin, &ab, &s.LastError)
	s.Status = sagastate.SagaStatus(status)
	if fin.Valid {
		s.FinishedAt = fin.Time
	}
	if ab.Valid {
		s.AbortedAt = ab.Time
	}
	return s, err
}

func toRow(s sagastate.Instance, now time.Time) sagaRow {
	row := sagaRow{ID: s.ID.String(), Type: s.Type, Status: string(s.Status), Aborted: !s.AbortedAt.IsZero(),
		Created: textfmt.Time(s.CreatedAt, "–"), Age: fmtAgo(now.Sub(s.CreatedAt)), Updated: fmtAgo(now.Sub(s.UpdatedAt)), LastError: s.LastError, Took: "–"}
	if !s.FinishedAt.IsZero() {
		row.Took = textfmt.Duration(s.FinishedAt.Sub(s.CreatedAt))
	}
	return row
}

func (c *console) sagaTypes(r *http.Request) ([]string, error) {
	rows, err := c.pool.Query(r.Context(), c.q.types)
	if err != nil {
		return nil, fmt.Errorf("list saga types: %w", err)
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// statusCounts counts sagas by status (exactly up to countLimit, estimated above it).
func (c *console) statusCounts(r *http.Request, checked []string, sagaType string) ([]statusCount, error) {
	ctx := r.Context()
	names := make([]string, len(allStatuses))
	for i, s := range allStatuses {
		names[i] = string(s)
	}
	counts := map[string]int64{}
	rows, err := c.pool.Query(ctx, c.q.boundedCount, pgx.QueryExecModeExec, sagaType, countLimit)
	if err != nil {
		return nil, fmt.Errorf("count sagas: %w", err)
	}
	var name string
	var n int64
	if _, err := pgx.ForEachRow(rows, []any{&name, &n}, func() error { counts[name] = n; return nil }); err != nil {
		return nil, fmt.Errorf("count sagas: %w", err)
	}
	estimates := map[string]float64{}
	for _, n := range counts {
		if n >= countLimit {
			rows, err := c.pool.Query(ctx, c.q.statusEstimate, c.cfg.Schema)
			if err != nil {
				return nil, fmt.Errorf("estimate saga counts: %w", err)
			}
			var v string
			var f float64
			if _, err := pgx.ForEachRow(rows, []any{&v, &f}, func() error { estimates[v] = f; return nil }); err != nil {
				return nil, fmt.Errorf("estimate saga counts: %w", err)
			}
			break
		}
	}
	out := make([]statusCount, 0, len(names))
	for _, s := range names {
		sc := statusCount{Status: s, Count: strconv.FormatInt(counts[s], 10), Checked: slices.Contains(checked, s)}
		if counts[s] >= countLimit {
			sc.Count = fmt.Sprintf("%d+", countLimit)
			if e := estimates[s]; sagaType == "" && e > countLimit {
				sc.Count = "≈" + fmtCount(e)
			}
		}
		u := url.Values{"status": {s}}
		if sagaType != "" {
			u.Set("type", sagaType)
		}
		sc.URL = c.cfg.Prefix + "/sagas?" + u.Encode()
		out = append(out, sc)
	}
	return out, nil
}

type stepRow struct {
	Name, Stage, Status, Op, Attempt string
	Started, Finished, Took, Error   string
	Input, Result                    string
}

type eventRow struct {
	At, Offset, Type, Step, Op, Attempt, Detail string
	Bad                                         bool
}

type detailData struct {
	ID, Type, Status          string
	Aborted                   string
	Created, Updated          string
	Finished, Took, LastError string
	Payload                   string
	Steps                     []stepRow
	Events                    []eventRow
	Timeline                  template.HTML
	RefreshMS                 int64
	CanRetry, CanAbort        bool
}

func (c *console) sagaDetail(w http.ResponseWriter, r *http.Request) {
	id, err := uuid.Parse(r.PathValue("id"))
	if err != nil {
		c.fail(w, r, http.StatusBadRequest, fmt.Errorf("%q is not a saga id (a UUID)", r.PathValue("id")))
		return
	}
	s, err := c.orch.Get(r.Context(), id)
	if errors.Is(err, sagastate.ErrNotFound) {
		c.fail(w, r, http.StatusNotFound, fmt.Errorf("no saga %s in schema %s", id, c.cfg.Schema))
		return
	}
	if err != nil {
		c.fail(w, r, http.StatusInternalServerError, err)
		return
	}
	c.render(w, r, "saga", "Saga "+id.String(), c.detail(s))
}

func (c *console) detail(s *sagastate.Instance) detailData {
	d := detailData{ID: s.ID.String(), Type: s.Type, Status: string(s.Status), Created: textfmt.Time(s.CreatedAt, "–"), Updated: textfmt.Time(s.UpdatedAt, "–"),
		LastError: s.LastError, Payload: pretty(s.Payload)}
	if !s.AbortedAt.IsZero() {
		d.Aborted = textfmt.Time(s.AbortedAt, "–")
	}
	if !s.FinishedAt.IsZero() {
		d.Finished, d.Took = textfmt.Time(s.FinishedAt, "–"), textfmt.Duration(s.FinishedAt.Sub(s.CreatedAt))
	}
	for _, st := range s.Steps {
		row := stepRow{Name: st.Name, Stage: strconv.Itoa(st.Stage + 1), Status: string(st.Status), Op: string(st.Op), Attempt: strconv.Itoa(st.Attempt),
			Started: textfmt.Time(st.StartedAt, "–"), Finished: textfmt.Time(st.FinishedAt, "–"), Error: st.LastError, Input: pretty(st.Input), Result: pretty(st.Result), Took: "–"}
		if !st.StartedAt.IsZero() && !st.FinishedAt.IsZero() {
			row.Took = textfmt.Duration(st.FinishedAt.Sub(st.StartedAt))
		}
		d.Steps = append(d.Steps, row)
	}
	for _, e := range s.Events {
		row := eventRow{At: textfmt.Time(e.At, "–"), Offset: "+" + textfmt.Duration(e.At.Sub(s.CreatedAt)), Type: string(e.Type), Step: e.Step, Op: string(e.Op), Detail: e.Detail,
			Bad: strings.Contains(string(e.Type), "failed") || e.Type == sagastate.EventSagaCompensating}
		if e.Attempt > 0 {
			row.Attempt = strconv.Itoa(e.Attempt)
		}
		d.Events = append(d.Events, row)
	}
	var svg bytes.Buffer
	if err := timeline.FromSaga(s).SVG(&svg); err == nil {
		d.Timeline = template.HTML(svg.String()) // drawn by internal/timeline, which escapes every label
	}
	failedOpen := s.Status == sagastate.SagaFailed && s.AbortedAt.IsZero() // waits for an operator
	if !s.Status.Final() {
		d.RefreshMS = c.cfg.RefreshInterval.Milliseconds()
	}
	d.CanAbort = !s.Status.Final() || failedOpen
	d.CanRetry = failedOpen || s.Status == sagastate.SagaCompensating || s.Status == sagastate.SagaTimeout
	return d
}

// pretty shows JSON indented, other UTF-8 text as is, and binary as its size.
func pretty(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	var out bytes.Buffer
	if json.Valid(b) && json.Indent(&out, b, "", "  ") == nil {
		return out.String()
	}
	if utf8.Valid(b) {
		return string(b)
	}
	return fmt.Sprintf("(%d bytes of binary data)", len(b))
}

func fmtAgo(d time.Duration) string {
	switch {
	case d < time.Second:
		return "just now"
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%02dm ago", int(d.Hours()), int(d.Minutes())%60)
	default:
		return fmt.Sprintf("%dd ago", int(d.Hours()/24))
	}
}

func fmtCount(f float64) string {
	switch {
	case f >= 1e6:
		return fmt.Sprintf("%.1fM", f/1e6)
	case f >= 1e3:
		return fmt.Sprintf("%.0fk", f/1e3)
	}
	return fmt.Sprintf("%.0f", f)
}
