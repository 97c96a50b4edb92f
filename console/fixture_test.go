package console_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/sagabox/sagabox/console"
	"github.com/sagabox/sagabox/internal/testenv"
	"github.com/sagabox/sagabox/sagastate"
	"github.com/sagabox/sagabox/wire"
)

func TestMain(m *testing.M) {
	code := testenv.Run(m)
	if browserCancel != nil {
		browserCancel()
	}
	os.Exit(code)
}

type order struct {
	Amount int `json:"amount"`
}

var once = sagastate.RetryPolicy{MaxAttempts: 1}

var shopSaga = sagastate.Define[order]("shop",
	sagastate.Step("reserve", "t.reserve").Do("reserve").Undo("release").Timeout(time.Minute).Retry(once).UndoRetry(once),
	sagastate.Step("charge", "t.charge").Do("charge").Undo("refund").Timeout(time.Minute).Retry(once).UndoRetry(once),
)

var transferSaga = sagastate.Define[order]("transfer",
	sagastate.Step("debit", "t.debit").Do("debit").Undo("credit-back"),
)

// fixture is a database holding sagas in every status, made by the orchestrator itself
// (Start, HandleReply, Sweep) with the participants' replies played by the test.
type fixture struct {
	db    *testenv.DB
	orch  *sagastate.Orchestrator
	clock atomic.Int64 // added to time.Now, so the sweeper sees deadlines pass
	ids   map[sagastate.SagaStatus]uuid.UUID
	// failed2 is a second failed saga, so retry and abort each have one.
	failed2, transfer uuid.UUID
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	f := &fixture{db: testenv.NewDB(t), ids: map[sagastate.SagaStatus]uuid.UUID{}}
	orch, err := sagastate.New(f.db.Pool, sagastate.Config{
		Sagas: []sagastate.Definition{shopSaga, transferSaga},
		Now:   func() time.Time { return time.Now().Add(time.Duration(f.clock.Load())) },
	})
	if err != nil {
		t.Fatal(err)
	}
	f.orch = orch
	S := wire.OutcomeSuccess
	F := wire.OutcomeFailure
	// The timeout saga lives two minutes in the past: its charge (timeout 1m) gets no
	// reply, so the sweeper at the end times it out while every other deadline is ahead.
	f.clock.Store(int64(-2 * time.Minute))
	f.ids[sagastate.SagaTimeout] = f.start(t, "shop", 5)
	f.reply(t, f.ids[sagastate.SagaTimeout], "reserve", S, "", "")
	f.clock.Store(0)
	f.ids[sagastate.SagaCompleted] = f.start(t, "shop", 10)
	f.reply(t, f.ids[sagastate.SagaCompleted], "reserve", S, "", `{"reservation":"r-1"}`)
	f.reply(t, f.ids[sagastate.SagaCompleted], "charge", S, "", `{"charge":"c-1"}`)

	f.ids[sagastate.SagaCompensated] = f.start(t, "shop", 2000)
	f.reply(t, f.ids[sagastate.SagaCompensated], "reserve", S, "", "")
	f.reply(t, f.ids[sagastate.SagaCompensated], "charge", F, "card declined", "")
	f.reply(t, f.ids[sagastate.SagaCompensated], "reserve", S, "", "")

	f.ids[sagastate.SagaCompensating] = f.start(t, "shop", 3000)
	f.reply(t, f.ids[sagastate.SagaCompensating], "reserve", S, "", "")
	f.reply(t, f.ids[sagastate.SagaCompensating], "charge", F, "card declined", "")

	for _, id := range []*uuid.UUID{new(uuid.UUID), &f.failed2} {
		*id = f.start(t, "shop", 4000)
		f.reply(t, *id, "reserve", S, "", "")
		f.reply(t, *id, "charge", F, "card declined", "")
		f.reply(t, *id, "reserve", F, "warehouse offline", "")
		if *id != f.failed2 {
			f.ids[sagastate.SagaFailed] = *id
		}
	}

	f.ids[sagastate.SagaRunning] = f.start(t, "shop", 6)
	f.transfer = f.start(t, "transfer", 7)
	if _, err := orch.Sweep(context.Background()); err != nil {
		t.Fatal(err)
	}
	for st, id := range f.ids {
		if got := f.status(t, id); got != st {
			t.Fatalf("fixture: saga %s is %s, want %s", id, got, st)
		}
	}
	return f
}

func (f *fixture) start(t testing.TB, typ string, amount int) uuid.UUID {
	t.Helper()
	id := uuid.New()
	ctx := context.Background()
	if err := pgx.BeginFunc(ctx, f.db.Pool, func(tx pgx.Tx) error { return f.orch.Start(ctx, tx, typ, id, order{Amount: amount}) }); err != nil {
		t.Fatal(err)
	}
	return id
}

// reply answers the step's command in flight.
func (f *fixture) reply(t testing.TB, id uuid.UUID, step string, outcome wire.Outcome, reason, payload string) {
	t.Helper()
	ctx := context.Background()
	inst, err := f.orch.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	st := inst.Step(step)
	r := wire.Reply{SagaID: id, Step: step, Op: st.Op, Attempt: st.Attempt, Outcome: outcome, Reason: reason}
	if payload != "" {
		r.Payload = []byte(payload)
	}
	if err := pgx.BeginFunc(ctx, f.db.Pool, func(tx pgx.Tx) error { return f.orch.HandleReply(ctx, tx, r) }); err != nil {
		t.Fatal(err)
	}
}

func (f *fixture) get(t testing.TB, id uuid.UUID) *sagastate.Instance {
	t.Helper()
	inst, err := f.orch.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return inst
}

func (f *fixture) status(t testing.TB, id uuid.UUID) sagastate.SagaStatus { return f.get(t, id).Status }

// serve runs the console over the fixture's database until the test ends.
func (f *fixture) serve(t testing.TB, cfg console.Config) *httptest.Server {
	t.Helper()
	h, err := console.New(f.db.Pool, cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}

// mount serves the console under a prefix, as a user's service would.
func (f *fixture) mount(t testing.TB, prefix string, cfg console.Config) *httptest.Server {
	t.Helper()
	cfg.Prefix = prefix
	h, err := console.New(f.db.Pool, cfg)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle(prefix+"/", h)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}
