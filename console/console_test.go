package console_test

import (
	"context"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/sagabox/sagabox/console"
	"github.com/sagabox/sagabox/inbox"
	"github.com/sagabox/sagabox/internal/pguuid"
	"github.com/sagabox/sagabox/outbox"
	"github.com/sagabox/sagabox/sagastate"
)

func TestListFilters(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	srv := f.serve(t, console.Config{})
	ctx := browser(t)
	ids := func() []string { return texts(t, ctx, "#sagas tbody tr[data-id] td:first-child") }

	run(t, ctx, chromedp.Navigate(srv.URL+"/"), chromedp.WaitVisible(chromedp.CSS("#sagas")))
	if got := ids(); len(got) != 8 {
		t.Fatalf("unfiltered list shows %d sagas, want 8: %v", len(got), got)
	}
	for st, id := range f.ids {
		if !slices.Contains(ids(), id.String()) {
			t.Errorf("the %s saga %s is not listed", st, id)
		}
	}
	counts := texts(t, ctx, "#counts a.count")
	if !slices.Contains(counts, "failed2") || !slices.Contains(counts, "running2") {
		t.Errorf("status counts %q, want failed 2 and running 2", counts)
	}

	// Status: tick "failed" and submit the form.
	run(t, ctx, chromedp.Click(chromedp.CSS(`#filters input[name=status][value=failed]`)))
	navigating(t, ctx, chromedp.Click(chromedp.CSS(`#filters button[type=submit]`)))
	got := ids()
	want := []string{f.ids[sagastate.SagaFailed].String(), f.failed2.String()}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("status=failed lists %v, want %v", got, want)
	}

	// Type.
	run(t, ctx, chromedp.Navigate(srv.URL+"/sagas"), chromedp.WaitVisible(chromedp.CSS("#filters")),
		chromedp.SetValue(chromedp.CSS(`#filters select[name=type]`), "transfer"))
	navigating(t, ctx, chromedp.Click(chromedp.CSS(`#filters button[type=submit]`)))
	if got := ids(); !slices.Equal(got, []string{f.transfer.String()}) {
		t.Fatalf("type=transfer lists %v, want [%s]", got, f.transfer)
	}

	// Stuck for over 90s: only the timeout saga has not changed for that long... it changed
	// at the sweep. Older than 90s: only the saga created two minutes back.
	run(t, ctx, chromedp.Navigate(srv.URL+"/sagas?older=90s"), chromedp.WaitVisible(chromedp.CSS("#sagas")))
	if got := ids(); !slices.Equal(got, []string{f.ids[sagastate.SagaTimeout].String()}) {
		t.Fatalf("older=90s lists %v, want the timeout saga %s", got, f.ids[sagastate.SagaTimeout])
	}
	run(t, ctx, chromedp.Navigate(srv.URL+"/sagas?newer=90s"), chromedp.WaitVisible(chromedp.CSS("#sagas")))
	if got := ids(); len(got) != 7 || slices.Contains(got, f.ids[sagastate.SagaTimeout].String()) {
		t.Fatalf("newer=90s lists %v, want the 7 sagas but the timeout one", got)
	}

	// Id search by prefix, typed into the form; a full id opens the saga.
	target := f.ids[sagastate.SagaCompensated].String()
	run(t, ctx, chromedp.Navigate(srv.URL+"/sagas"), chromedp.WaitVisible(chromedp.CSS("#filters")),
		chromedp.SendKeys(chromedp.CSS(`#filters input[name=q]`), target[:13]))
	navigating(t, ctx, chromedp.Submit(chromedp.CSS(`#filters input[name=q]`)))
	if got := ids(); !slices.Equal(got, []string{target}) {
		t.Fatalf("id prefix %s lists %v", target[:13], got)
	}
	run(t, ctx, chromedp.Navigate(srv.URL+"/sagas?q="+target), chromedp.WaitVisible(chromedp.CSS("#timeline")))
	loc, err := chromedp.Run(ctx, chromedp.Location())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(loc, "/sagas/"+target) {
		t.Fatalf("searching a full id went to %s", loc)
	}
}

func TestKeysetPaging(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	srv := f.serve(t, console.Config{PageSize: 3})
	ctx := browser(t)
	var seen []string
	run(t, ctx, chromedp.Navigate(srv.URL+"/sagas"), chromedp.WaitVisible(chromedp.CSS("#sagas")))
	for page := 0; ; page++ {
		seen = append(seen, texts(t, ctx, "#sagas tbody tr[data-id] td:first-child")...)
		if count(t, ctx, "#older") == 0 {
			break
		}
		if page > 5 {
			t.Fatal("paging does not end")
		}
		navigating(t, ctx, chromedp.Click(chromedp.CSS("#older")))
	}
	if len(seen) != 8 || len(uniq(seen)) != 8 {
		t.Fatalf("paging through 8 sagas 3 at a time saw %d (%d distinct): %v", len(seen), len(uniq(seen)), seen)
	}
	// And back: the newer link of the last page shows the page before it.
	navigating(t, ctx, chromedp.Click(chromedp.CSS("#newer")))
	if got := texts(t, ctx, "#sagas tbody tr[data-id] td:first-child"); !slices.Equal(got, seen[3:6]) {
		t.Fatalf("newer page shows %v, want %v", got, seen[3:6])
	}
}

func uniq(s []string) []string {
	c := slices.Clone(s)
	slices.Sort(c)
	return slices.Compact(c)
}

func TestDetailShowsTimeline(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	srv := f.serve(t, console.Config{})
	ctx := browser(t)
	id := f.ids[sagastate.SagaCompensated]
	run(t, ctx, chromedp.Navigate(srv.URL+"/sagas/"+id.String()), chromedp.WaitVisible(chromedp.CSS("#timeline svg")))
	svgText := strings.Join(texts(t, ctx, "#timeline svg text"), " ")
	for _, want := range []string{"reserve", "charge", "compensated"} {
		if !strings.Contains(svgText, want) {
			t.Errorf("timeline SVG lacks %q: %s", want, svgText)
		}
	}
	if n := count(t, ctx, "#timeline svg rect"); n < 4 {
		t.Errorf("timeline draws %d rects, want bars", n)
	}
	if got := texts(t, ctx, "#steps tbody td:first-child"); !slices.Equal(got, []string{"reserve", "charge"}) {
		t.Errorf("steps table %v", got)
	}
	events := strings.Join(texts(t, ctx, "#events tbody tr"), "\n")
	for _, want := range []string{"saga_started", "card declined", "saga_compensated"} {
		if !strings.Contains(events, want) {
			t.Errorf("event log lacks %q:\n%s", want, events)
		}
	}
	if p := strings.Join(texts(t, ctx, "#payload"), ""); !strings.Contains(p, `"amount": 2000`) {
		t.Errorf("payload %q", p)
	}
	// A finished saga does not refresh; a running one does, and follows its changes.
	if n := count(t, ctx, "#live[data-refresh]"); n != 0 {
		t.Error("a compensated saga's page refreshes itself")
	}
	running := f.ids[sagastate.SagaRunning]
	srvFast := f.serve(t, console.Config{RefreshInterval: 200 * time.Millisecond})
	run(t, ctx, chromedp.Navigate(srvFast.URL+"/sagas/"+running.String()), chromedp.WaitVisible(chromedp.CSS("#live[data-refresh]")))
	f.reply(t, running, "reserve", "success", "", "")
	f.reply(t, running, "charge", "success", "", "")
	run(t, ctx, chromedp.WaitVisible(chromedp.CSS(`#saga-status.st-completed`)))
	if n := count(t, ctx, "#live[data-refresh]"); n != 0 {
		t.Error("the page keeps refreshing after the saga completed")
	}
}

// act opens an action's confirmation page from link, gives a reason and confirms.
func act(t *testing.T, ctx context.Context, link, reason string) {
	t.Helper()
	navigating(t, ctx, chromedp.Click(chromedp.CSS(link)))
	run(t, ctx, chromedp.WaitVisible(chromedp.CSS("#confirm")), chromedp.SendKeys(chromedp.CSS("#reason"), reason))
	navigating(t, ctx, chromedp.Click(chromedp.CSS("#do")))
	run(t, ctx, chromedp.WaitVisible(chromedp.CSS("#flash")))
}

func TestRetryAndAbortChangeTheSaga(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	srv := f.serve(t, console.Config{})
	ctx := browser(t)

	retried := f.ids[sagastate.SagaFailed]
	run(t, ctx, chromedp.Navigate(srv.URL+"/sagas/"+retried.String()), chromedp.WaitVisible(chromedp.CSS("#actions")))
	// The confirmation page refuses an empty reason (the browser's required check is
	// bypassed by submitting the form directly).
	navigating(t, ctx, chromedp.Click(chromedp.CSS("#retry")))
	if got := strings.Join(texts(t, ctx, "#about"), ""); !strings.Contains(got, "shop saga, failed since") || !strings.Contains(got, "warehouse offline") {
		t.Errorf("the confirmation page describes the saga as %q", got)
	}
	run(t, ctx, chromedp.WaitVisible(chromedp.CSS("#confirm")), chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		_, err := chromedp.Evaluate[bool](`document.getElementById("reason").removeAttribute("required"), true`)(ctx, tg)
		return err
	}))
	navigating(t, ctx, chromedp.Click(chromedp.CSS("#do")))
	run(t, ctx, chromedp.WaitVisible(chromedp.CSS("#error")))
	if f.status(t, retried) != sagastate.SagaFailed {
		t.Fatal("a retry without a reason changed the saga")
	}
	run(t, ctx, chromedp.SendKeys(chromedp.CSS("#confirm #reason"), "warehouse back online"))
	navigating(t, ctx, chromedp.Click(chromedp.CSS("#do")))
	run(t, ctx, chromedp.WaitVisible(chromedp.CSS("#flash")))
	s := f.get(t, retried)
	if s.Status != sagastate.SagaCompensating {
		t.Fatalf("after retry the saga is %s, want compensating", s.Status)
	}
	if st := s.Step("reserve"); st.Status != sagastate.StepCompensating || st.Attempt != 2 {
		t.Fatalf("after retry reserve is %s attempt %d, want compensating attempt 2", st.Status, st.Attempt)
	}
	if !hasEvent(s, sagastate.EventSagaCompensating, "operator retry: warehouse back online (by console@") {
		t.Errorf("event log lacks the retry with its reason and operator: %+v", s.Events)
	}

	aborted := f.failed2
	run(t, ctx, chromedp.Navigate(srv.URL+"/sagas/"+aborted.String()), chromedp.WaitVisible(chromedp.CSS("#actions")))
	act(t, ctx, "#abort", "refunded by hand, ticket OPS-7")
	s = f.get(t, aborted)
	if s.AbortedAt.IsZero() || s.Status != sagastate.SagaFailed {
		t.Fatalf("after abort the saga is %s, aborted at %v", s.Status, s.AbortedAt)
	}
	if !hasEvent(s, sagastate.EventSagaFailed, "refunded by hand, ticket OPS-7 (by console@") {
		t.Errorf("event log lacks the abort reason and operator: %+v", s.Events)
	}
	// The page shows the abort and offers nothing more.
	if n := count(t, ctx, "#actions"); n != 0 {
		t.Error("an aborted saga still offers actions")
	}
	if got := strings.Join(texts(t, ctx, "#events tbody tr"), "\n"); !strings.Contains(got, "ticket OPS-7") {
		t.Errorf("the page's event log lacks the reason:\n%s", got)
	}
}

func TestAbortRunningAndTimedOutSagas(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	srv := f.serve(t, console.Config{})
	ctx := browser(t)

	running := f.ids[sagastate.SagaRunning]
	run(t, ctx, chromedp.Navigate(srv.URL+"/sagas/"+running.String()), chromedp.WaitVisible(chromedp.CSS("#actions")))
	if n := count(t, ctx, "#retry"); n != 0 {
		t.Error("a running saga offers retry")
	}
	act(t, ctx, "#abort", "customer cancelled by phone")
	s := f.get(t, running)
	if s.Status != sagastate.SagaCompensating && s.Status != sagastate.SagaCompensated {
		t.Fatalf("after abort the running saga is %s, want compensating", s.Status)
	}
	if !hasEvent(s, sagastate.EventSagaCompensating, "customer cancelled by phone (by console@") {
		t.Errorf("event log lacks the abort reason: %+v", s.Events)
	}

	timedOut := f.ids[sagastate.SagaTimeout]
	run(t, ctx, chromedp.Navigate(srv.URL+"/sagas/"+timedOut.String()), chromedp.WaitVisible(chromedp.CSS("#actions")))
	act(t, ctx, "#abort", "warehouse system retired")
	s = f.get(t, timedOut)
	if s.Status != sagastate.SagaFailed || s.AbortedAt.IsZero() {
		t.Fatalf("after abort the timed-out saga is %s, aborted at %v; want failed and aborted", s.Status, s.AbortedAt)
	}
	if !hasEvent(s, sagastate.EventSagaFailed, "warehouse system retired") {
		t.Errorf("event log lacks the abort reason: %+v", s.Events)
	}
	// A finished saga offers nothing, and the server refuses with the orchestrator's reason.
	done := f.ids[sagastate.SagaCompleted]
	run(t, ctx, chromedp.Navigate(srv.URL+"/sagas/"+done.String()), chromedp.WaitVisible(chromedp.CSS("#timeline")))
	if n := count(t, ctx, "#actions"); n != 0 {
		t.Error("a completed saga offers actions")
	}
	run(t, ctx, chromedp.Navigate(srv.URL+"/sagas/"+done.String()+"/abort"), chromedp.WaitVisible(chromedp.CSS("#confirm")),
		chromedp.SendKeys(chromedp.CSS("#reason"), "just because"))
	navigating(t, ctx, chromedp.Click(chromedp.CSS("#do")))
	if got := strings.Join(texts(t, ctx, "#error"), ""); !strings.Contains(got, "completed") {
		t.Errorf("aborting a completed saga says %q", got)
	}
	if s := f.get(t, done); s.Status != sagastate.SagaCompleted || !s.AbortedAt.IsZero() {
		t.Errorf("the completed saga changed: %s", s.Status)
	}
}

func hasEvent(s *sagastate.Instance, typ sagastate.EventType, detail string) bool {
	return slices.ContainsFunc(s.Events, func(e sagastate.Event) bool { return e.Type == typ && strings.Contains(e.Detail, detail) })
}

// deadOutbox stores n dead-lettered outbox rows, as the relay leaves them.
func deadOutbox(t *testing.T, f *fixture, n int) []uuid.UUID {
	t.Helper()
	ctx := context.Background()
	w, err := outbox.New(outbox.Config{})
	if err != nil {
		t.Fatal(err)
	}
	var ids []uuid.UUID
	for i := 0; i < n; i++ {
		m := outbox.Message{Topic: "orders.events", Key: "k", Payload: []byte(`{"order":1}`), Headers: map[string]string{"x-trace": "abc"}}
		if err := pgx.BeginFunc(ctx, f.db.Pool, func(tx pgx.Tx) error { return w.Enqueue(ctx, tx, m) }); err != nil {
			t.Fatal(err)
		}
		var id uuid.UUID
		if err := f.db.Pool.QueryRow(ctx, `UPDATE sagabox.outbox_messages SET dead_at = now(), attempts = 5,
 last_error = 'message too large (MESSAGE_TOO_LARGE)' WHERE dead_at IS NULL AND id NOT IN (SELECT unnest($1::uuid[]))
 AND topic = 'orders.events' RETURNING id`, pguuid.Array(ids)).Scan(&id); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	return ids
}

func TestOutboxDeadLetterRetried(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	dead := deadOutbox(t, f, 3)
	srv := f.serve(t, console.Config{})
	ctx := browser(t)
	run(t, ctx, chromedp.Navigate(srv.URL+"/outbox"), chromedp.WaitVisible(chromedp.CSS("#dead")))
	if got := strings.Join(texts(t, ctx, "#dead tbody"), ""); !strings.Contains(got, "MESSAGE_TOO_LARGE") || !strings.Contains(got, "x-trace: abc") {
		t.Fatalf("dead letters shown without their error or headers: %s", got)
	}
	// Retry one from its row, then two selected together.
	act(t, ctx, `#dead tr[data-id="`+dead[0].String()+`"] a.button`, "topic limit raised")
	if deadNow(t, f, dead[0]) {
		t.Fatal("the retried dead letter is still dead")
	}
	run(t, ctx, chromedp.Navigate(srv.URL+"/outbox"), chromedp.WaitVisible(chromedp.CSS("#dead")),
		chromedp.Click(chromedp.CSS(`#dead input[value="`+dead[1].String()+`"]`)),
		chromedp.Click(chromedp.CSS(`#dead input[value="`+dead[2].String()+`"]`)))
	act(t, ctx, "#retry-selected", "topic limit raised")
	for _, id := range dead[1:] {
		if deadNow(t, f, id) {
			t.Errorf("selected dead letter %s is still dead", id)
		}
	}
	if n := count(t, ctx, "#dead tbody tr[data-id]"); n != 0 {
		t.Errorf("%d dead letters still listed", n)
	}
}

func deadNow(t *testing.T, f *fixture, id uuid.UUID) bool {
	t.Helper()
	var dead bool
	if err := f.db.Pool.QueryRow(context.Background(), `SELECT dead_at IS NOT NULL FROM sagabox.outbox_messages WHERE id = $1`, id).Scan(&dead); err != nil {
		t.Fatal(err)
	}
	return dead
}

func TestInboxDeadLetterReplayed(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx0 := context.Background()
	store, err := inbox.NewStore("")
	if err != nil {
		t.Fatal(err)
	}
	msgID := uuid.New()
	for i, c := range []string{"payments", "shipping"} {
		if _, err := store.AddDeadLetter(ctx0, f.db.Pool, inbox.DeadLetter{Consumer: c, MessageID: msgID, Topic: "orders.commands", Partition: 1, Offset: int64(i),
			Key: []byte("o-1"), Value: []byte(`{"charge":1}`), Headers: map[string]string{"saga-step": "charge"}, Attempts: 3, Reason: "handler: no such account"}); err != nil {
			t.Fatal(err)
		}
	}
	srv := f.serve(t, console.Config{})
	ctx := browser(t)
	run(t, ctx, chromedp.Navigate(srv.URL+"/inbox"), chromedp.WaitVisible(chromedp.CSS("#dead")))
	if got := strings.Join(texts(t, ctx, "#dead tbody"), ""); !strings.Contains(got, "no such account") || !strings.Contains(got, "saga-step: charge") {
		t.Fatalf("dead letters shown without reason or headers: %s", got)
	}
	navigating(t, ctx, chromedp.Click(chromedp.CSS(`a.count[href$="consumer=payments"]`)))
	if n := count(t, ctx, "#dead tbody tr[data-id]"); n != 1 {
		t.Fatalf("consumer payments shows %d dead letters, want 1", n)
	}
	act(t, ctx, "#dead tbody a.button", "account created")
	left, err := store.ListDeadLetters(ctx0, f.db.Pool, "", 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(left) != 1 || left[0].Consumer != "shipping" {
		t.Fatalf("dead letters left after replaying payments': %+v", left)
	}
	var n int
	if err := f.db.Pool.QueryRow(ctx0, `SELECT count(*) FROM sagabox.outbox_messages WHERE id = $1 AND topic = 'orders.commands'`, msgID).Scan(&n); err != nil || n != 1 {
		t.Fatalf("replayed message in the outbox: %d (%v)", n, err)
	}
}

func TestReadOnlyShowsNoAction(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	dead := deadOutbox(t, f, 1)
	srv := f.serve(t, console.Config{ReadOnly: true})
	ctx := browser(t)
	for _, path := range []string{"/sagas/" + f.ids[sagastate.SagaFailed].String(), "/outbox", "/sagas", "/inbox"} {
		run(t, ctx, chromedp.Navigate(srv.URL+path), chromedp.WaitVisible(chromedp.CSS("#read-only")))
		for _, sel := range []string{"#actions", "form[method=post]", "input[type=checkbox][name=id]", "a.button", "#retry-selected"} {
			if n := count(t, ctx, sel); n != 0 {
				t.Errorf("read-only %s shows %d %s", path, n, sel)
			}
		}
	}
	// The server refuses actions, whatever the page shows.
	for _, path := range []string{"/sagas/" + f.ids[sagastate.SagaFailed].String() + "/retry", "/outbox/retry?id=" + dead[0].String()} {
		resp, err := http.PostForm(srv.URL+path, url.Values{"reason": {"x"}, "id": {dead[0].String()}})
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("read-only POST %s: %s, want 403", path, resp.Status)
		}
	}
	if f.status(t, f.ids[sagastate.SagaFailed]) != sagastate.SagaFailed || !deadNow(t, f, dead[0]) {
		t.Error("a read-only console changed the database")
	}
}
