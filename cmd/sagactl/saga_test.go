package main

import (
	"context"
	"encoding/json"
	"encoding/xml"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/sagabox/sagabox/internal/testenv"
	"github.com/sagabox/sagabox/sagastate"
	"github.com/sagabox/sagabox/wire"
)

type testPayload struct {
	N int `json:"n"`
}

// sagas drives real sagas through the orchestrator's public API (Start, HandleReply),
// playing the participants' replies, so that every status sagactl shows exists.
type sagas struct {
	db                                      *testenv.DB
	orch                                    *sagastate.Orchestrator
	completed, compensated, failed, running uuid.UUID
}

func setupSagas(t *testing.T) *sagas {
	t.Helper()
	db := testenv.NewDB(t)
	def := sagastate.Define[testPayload]("shop",
		sagastate.Step("reserve", "t.reserve").Do("reserve").Undo("release").UndoRetry(sagastate.RetryPolicy{MaxAttempts: 1}),
		sagastate.Step("charge", "t.charge").Do("charge").Undo("refund"),
	)
	orch, err := sagastate.New(db.Pool, sagastate.Config{Sagas: []sagastate.Definition{def}})
	if err != nil {
		t.Fatal(err)
	}
	s := &sagas{db: db, orch: orch}
	s.completed = s.start(t)
	s.reply(t, s.completed, "reserve", wire.OutcomeSuccess, "")
	s.reply(t, s.completed, "charge", wire.OutcomeSuccess, "")
	s.compensated = s.start(t)
	s.reply(t, s.compensated, "reserve", wire.OutcomeSuccess, "")
	s.reply(t, s.compensated, "charge", wire.OutcomeFailure, "card declined")
	s.reply(t, s.compensated, "reserve", wire.OutcomeSuccess, "")
	s.failed = s.start(t)
	s.reply(t, s.failed, "reserve", wire.OutcomeSuccess, "")
	s.reply(t, s.failed, "charge", wire.OutcomeFailure, "card declined")
	s.reply(t, s.failed, "reserve", wire.OutcomeFailure, "warehouse offline")
	s.running = s.start(t)
	for id, want := range map[uuid.UUID]sagastate.SagaStatus{s.completed: "completed", s.compensated: "compensated", s.failed: "failed", s.running: "running"} {
		if got := s.status(t, id); got != want {
			t.Fatalf("setup: saga %s is %s, want %s", id, got, want)
		}
	}
	return s
}

func (s *sagas) start(t *testing.T) uuid.UUID {
	t.Helper()
	id := uuid.New()
	ctx := context.Background()
	if err := pgx.BeginFunc(ctx, s.db.Pool, func(tx pgx.Tx) error {
		return s.orch.Start(ctx, tx, "shop", id, testPayload{N: 1})
	}); err != nil {
		t.Fatal(err)
	}
	return id
}

// reply answers the step's command currently in flight.
func (s *sagas) reply(t *testing.T, id uuid.UUID, step string, outcome wire.Outcome, reason string) {
	t.Helper()
	ctx := context.Background()
	inst, err := s.orch.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	st := inst.Step(step)
	r := wire.Reply{SagaID: id, Step: step, Op: st.Op, Attempt: st.Attempt, Outcome: outcome, Reason: reason}
	if err := pgx.BeginFunc(ctx, s.db.Pool, func(tx pgx.Tx) error { return s.orch.HandleReply(ctx, tx, r) }); err != nil {
		t.Fatal(err)
	}
}

func (s *sagas) status(t *testing.T, id uuid.UUID) sagastate.SagaStatus {
	t.Helper()
	inst, err := s.orch.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return inst.Status
}

func TestSagaList(t *testing.T) {
	t.Parallel()
	s := setupSagas(t)
	list := func(args ...string) []sagaJSON {
		t.Helper()
		r := mustOK(t, sagactl(t, s.db.URL, append([]string{"saga", "list", "--json"}, args...)...))
		var out struct{ Sagas []sagaJSON }
		if err := json.Unmarshal([]byte(r.stdout), &out); err != nil {
			t.Fatalf("%v\n%s", err, r.stdout)
		}
		return out.Sagas
	}
	if got := list(); len(got) != 4 {
		t.Fatalf("%d sagas listed, want 4", len(got))
	}
	got := list("--status", "failed,compensated")
	if len(got) != 2 {
		t.Fatalf("--status failed,compensated: %+v", got)
	}
	for _, g := range got {
		if g.Status != "failed" && g.Status != "compensated" {
			t.Fatalf("--status filter let %s through", g.Status)
		}
	}
	if got := list("--type", "other"); len(got) != 0 {
		t.Fatalf("--type other: %+v", got)
	}
	if got := list("--older-than", "1h"); len(got) != 0 {
		t.Fatalf("--older-than 1h: sagas made just now were listed: %+v", got)
	}
	if got := list("--limit", "1"); len(got) != 1 || got[0].ID != s.running.String() {
		t.Fatalf("--limit 1 must give the newest (the running saga): %+v", got)
	}
	r := mustOK(t, sagactl(t, s.db.URL, "saga", "list"))
	for _, want := range []string{"STATUS", s.failed.String(), "failed", "compensation of step reserve gave up"} {
		if !strings.Contains(r.stdout, want) {
			t.Fatalf("table lacks %q:\n%s", want, r.stdout)
		}
	}
	r = sagactl(t, s.db.URL, "saga", "list", "--status", "stuck")
	if r.code != 1 || !strings.Contains(r.stderr, `unknown status "stuck"`) {
		t.Fatalf("exit %d, %q", r.code, r.stderr)
	}
}

func TestSagaShow(t *testing.T) {
	t.Parallel()
	s := setupSagas(t)
	dir := t.TempDir()
	svg, page := filepath.Join(dir, "t.svg"), filepath.Join(dir, "t.html")

	r := mustOK(t, sagactl(t, s.db.URL, "saga", "show", s.compensated.String(), "--svg", svg, "--html", page))
	for _, want := range []string{"status   compensated", "reserve", "charge", "STEP", "EVENT", "step_failed", "card declined",
		"saga_compensated", "timeline written to " + svg} {
		if !strings.Contains(r.stdout, want) {
			t.Fatalf("show lacks %q:\n%s", want, r.stdout)
		}
	}
	body, err := os.ReadFile(svg)
	if err != nil {
		t.Fatal(err)
	}
	if err := xml.Unmarshal(body, new(struct{})); err != nil || !strings.Contains(string(body), "card declined") {
		t.Fatalf("SVG (%v):\n%s", err, body)
	}
	if html, err := os.ReadFile(page); err != nil || !strings.Contains(string(html), "<table>") || !strings.Contains(string(html), "<svg") {
		t.Fatalf("HTML page: %v", err)
	}

	r = mustOK(t, sagactl(t, s.db.URL, "saga", "show", s.failed.String(), "--json"))
	var j sagaJSON
	if err := json.Unmarshal([]byte(r.stdout), &j); err != nil {
		t.Fatal(err)
	}
	if j.Status != "failed" || len(j.Steps) != 2 || j.Steps[0].Status != "compensating" || j.Steps[0].LastError == "" || len(j.Events) < 6 {
		t.Fatalf("show --json: %+v", j)
	}

	unknown := uuid.New()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"saga", "show", unknown.String()}, "no saga " + unknown.String()},
		{[]string{"saga", "show", "42"}, `"42" is not a saga id`},
		{[]string{"saga", "show"}, "missing argument ID"},
		{[]string{"saga", "show", s.failed.String(), "--svg", filepath.Join(dir, "no", "such", "dir.svg")}, "cannot write the timeline"},
	} {
		r := sagactl(t, s.db.URL, tc.args...)
		if r.code == 0 || !strings.Contains(r.stderr, tc.want) {
			t.Fatalf("%v: exit %d, stderr %q, want %q", tc.args, r.code, r.stderr, tc.want)
		}
	}
}

func TestSagaRetryAndAbort(t *testing.T) {
	t.Parallel()
	s := setupSagas(t)
	id := s.failed.String()

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"saga", "retry", s.completed.String()}, "is completed; only a failed, compensating or timed-out saga"},
		{[]string{"saga", "retry", s.running.String()}, "is running; only a failed, compensating or timed-out saga"},
		{[]string{"saga", "abort", s.completed.String(), "--reason", "x"}, "a finished saga cannot be aborted"},
		{[]string{"saga", "retry", uuid.Nil.String()}, "no saga"},
		{[]string{"saga", "abort", id}, "--reason is required"},
	} {
		r := sagactl(t, s.db.URL, tc.args...)
		if r.code != 1 || !strings.Contains(r.stderr, tc.want) {
			t.Fatalf("%v: exit %d, stderr %q, want %q", tc.args, r.code, r.stderr, tc.want)
		}
	}

	// Retry resumes the compensation: the saga compensates again and a new release
	// command for the reserve step is in the outbox.
	countReleases := func() int {
		return count(t, s.db, `SELECT count(*) FROM "sagabox"."outbox_messages" WHERE "key" = $1 AND "headers"->>'saga-command' = 'release'`, id)
	}
	before := countReleases()
	r := mustOK(t, sagactl(t, s.db.URL, "saga", "retry", id))
	if !strings.Contains(r.stdout, "compensation resumed") || s.status(t, s.failed) != sagastate.SagaCompensating {
		t.Fatalf("retry: %q, status %s", r.stdout, s.status(t, s.failed))
	}
	if after := countReleases(); after != before+1 {
		t.Fatalf("release commands %d → %d, want one more", before, after)
	}
	// The warehouse is still offline: failed again, and this time the operator gives up.
	s.reply(t, s.failed, "reserve", wire.OutcomeFailure, "warehouse offline")
	mustOK(t, sagactl(t, s.db.URL, "saga", "abort", id, "--reason", "released by hand in the warehouse UI"))
	r = mustOK(t, sagactl(t, s.db.URL, "saga", "show", id))
	if !strings.Contains(r.stdout, "failed (aborted") || !strings.Contains(r.stdout, "released by hand in the warehouse UI") {
		t.Fatalf("show after abort:\n%s", r.stdout)
	}
	r = sagactl(t, s.db.URL, "saga", "retry", id)
	if r.code != 1 || !strings.Contains(r.stderr, "aborted") {
		t.Fatalf("retry after abort: exit %d, %q", r.code, r.stderr)
	}
}

func TestStats(t *testing.T) {
	t.Parallel()
	s := setupSagas(t)
	r := mustOK(t, sagactl(t, s.db.URL, "stats", "--json"))
	var st struct {
		Total            int
		Counts           map[string]int
		CompensationRate float64                         `json:"compensation_rate"`
		TTC              struct{ P50, P99, Max float64 } `json:"time_to_consistency_ms"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		t.Fatal(err)
	}
	if st.Total != 4 || st.Counts["completed"] != 1 || st.Counts["compensated"] != 1 || st.Counts["failed"] != 1 || st.Counts["running"] != 1 {
		t.Fatalf("stats %+v", st)
	}
	if st.CompensationRate != 0.5 || st.TTC.P50 <= 0 || st.TTC.Max < st.TTC.P99 {
		t.Fatalf("stats %+v", st)
	}
	r = mustOK(t, sagactl(t, s.db.URL, "stats", "--type", "shop", "--since", "1h"))
	if !strings.Contains(r.stdout, "compensation rate    50.0%") || !strings.Contains(r.stdout, "time to consistency  p50") {
		t.Fatalf("stats:\n%s", r.stdout)
	}
	r = mustOK(t, sagactl(t, s.db.URL, "stats", "--type", "other", "--json"))
	if !strings.Contains(r.stdout, `"total": 0`) || !strings.Contains(r.stdout, `"time_to_consistency_ms": null`) {
		t.Fatalf("stats of an unknown type: %s", r.stdout)
	}
	// With no finished saga it printed "p50 0s p99 0s", which reads as instant.
	r = mustOK(t, sagactl(t, s.db.URL, "stats", "--type", "other"))
	if !strings.Contains(r.stdout, "time to consistency  none yet") || strings.Contains(r.stdout, "p50 0s") {
		t.Fatalf("stats with no finished saga:\n%s", r.stdout)
	}
}

func count(t *testing.T, db *testenv.DB, sql string, args ...any) int {
	t.Helper()
	var n int
	if err := db.Pool.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}
