package deploy_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"go.yaml.in/yaml/v3"

	"github.com/sagabox/sagabox/health"
	"github.com/sagabox/sagabox/inbox/consumer"
	"github.com/sagabox/sagabox/inbox/consumer/consumerprom"
	"github.com/sagabox/sagabox/internal/kafkatest"
	"github.com/sagabox/sagabox/internal/testenv"
	"github.com/sagabox/sagabox/outbox"
	"github.com/sagabox/sagabox/participants"
	"github.com/sagabox/sagabox/participants/participantsprom"
	"github.com/sagabox/sagabox/relay"
	"github.com/sagabox/sagabox/relay/kafkapub"
	"github.com/sagabox/sagabox/relay/relayprom"
	"github.com/sagabox/sagabox/sagastate"
	"github.com/sagabox/sagabox/sagastate/sagastateprom"
	"github.com/sagabox/sagabox/sagastate/sagatest"
	"github.com/sagabox/sagabox/wire"
)

func TestMain(m *testing.M) { os.Exit(testenv.Run(m)) }

var metricName = regexp.MustCompile(`\bsagabox_[a-z0-9_]+`)

// dashboardMetrics returns the metrics the dashboard's queries use.
func dashboardMetrics(t *testing.T) []string {
	t.Helper()
	raw, err := os.ReadFile("grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Title  string
		Panels []struct {
			Title   string
			Type    string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("grafana-dashboard.json does not parse: %v", err)
	}
	var names []string
	for _, p := range dash.Panels {
		if p.Type != "row" && len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			names = append(names, metricName.FindAllString(tg.Expr, -1)...)
		}
	}
	return names
}

// ruleMetrics returns the metrics the alert rules' expressions use.
func ruleMetrics(t *testing.T) []string {
	t.Helper()
	raw, err := os.ReadFile("alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	var rules struct {
		Groups []struct {
			Name  string
			Rules []struct {
				Alert, Expr string
				Labels      map[string]string
			}
		}
	}
	if err := yaml.Unmarshal(raw, &rules); err != nil {
		t.Fatalf("alerts.yml does not parse: %v", err)
	}
	var names []string
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" || r.Expr == "" || r.Labels["severity"] == "" {
				t.Errorf("rule %+v lacks a name, an expression or a severity", r)
			}
			names = append(names, metricName.FindAllString(r.Expr, -1)...)
		}
	}
	if len(names) == 0 {
		t.Fatal("alerts.yml has no rules")
	}
	return names
}

// script says how the participant treats one saga.
type script struct {
	Decline bool `json:"decline"` // the charge is refused: the saga compensates
	Stuck   bool `json:"stuck"`   // and the release fails: the compensation gives up
}

var order = sagastate.Define[script]("order",
	sagastate.Step("reserve", "stock.commands").Do("stock.reserve").Undo("stock.release").UndoRetry(sagastate.RetryPolicy{MaxAttempts: 1}),
	sagastate.Step("charge", "pay.commands").Do("pay.charge").Undo("pay.refund"),
)

// serve serves reg's /metrics with health.Handler until t ends and returns its URL.
func serve(t *testing.T, reg *prometheus.Registry) string {
	t.Helper()
	srv := httptest.NewServer(health.Handler(health.Config{Metrics: reg}))
	t.Cleanup(srv.Close)
	return srv.URL + "/metrics"
}

// scrape returns the names of the samples at url.
func scrape(t *testing.T, url string) map[string]bool {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %v", url, resp.StatusCode, err)
	}
	names := map[string]bool{}
	for _, line := range strings.Split(string(body), "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		names[line[:strings.IndexAny(line, "{ ")]] = true
	}
	return names
}

func must[T any](t *testing.T) func(T, error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

// TestDashboardAndAlertsUseOnlyExportedMetrics runs every component with its metrics
// through sagas that complete, compensate and fail, a relay message Kafka refuses, and
// consumer records that are retried, duplicated and malformed; then every metric the
// dashboard and the alert rules use must be on some component's /metrics.
func TestDashboardAndAlertsUseOnlyExportedMetrics(t *testing.T) {
	t.Parallel()
	want := append(dashboardMetrics(t), ruleMetrics(t)...)
	slices.Sort(want)
	want = slices.Compact(want)

	db := testenv.NewDB(t)
	k := testenv.NewKafka(t)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait)
	t.Cleanup(cancel)

	// The relay.
	relayReg := prometheus.NewPedanticRegistry()
	rm := must[*relayprom.Metrics](t)(relayprom.New(relayReg))
	relayReg.MustRegister(must[prometheus.Collector](t)(relayprom.Outbox(db.Pool, "")), relayprom.BuildInfo())
	pub := must[*kafkapub.Publisher](t)(kafkapub.New(kafkapub.Config{Brokers: k.Brokers, MaxMessageBytes: 4096}))
	t.Cleanup(func() { _ = pub.Close() })
	r := must[*relay.Relay](t)(relay.New(db.Pool, pub, relay.Config{PollInterval: 100 * time.Millisecond, MaxAttempts: 2,
		RetryBackoffMin: 10 * time.Millisecond, Hooks: rm.Hooks()}))
	wg.Go(func() { _ = r.Run(ctx) })

	// The participant and a plain consumer, in one process.
	partReg := prometheus.NewPedanticRegistry()
	pm := must[*participantsprom.Metrics](t)(participantsprom.New(partReg))
	cm := must[*consumerprom.Metrics](t)(consumerprom.New(partReg))
	partReg.MustRegister(must[prometheus.Collector](t)(consumerprom.DeadLetters(db.Pool, "")))
	pc := sagatest.FastConsumer()
	pc.Hooks = cm.Hooks("svc")
	p := must[*participants.Participant](t)(participants.New(db.Pool, participants.Config{Brokers: k.Brokers, GroupID: "svc",
		CommandTopics: []string{"stock.commands", "pay.commands"}, Consumer: pc, Hooks: pm.Hooks("svc")}))
	decode := func(cmd wire.Command) (s script) { _ = json.Unmarshal(cmd.Payload, &s); return s }
	ok := func(context.Context, pgx.Tx, wire.Command) ([]byte, error) { return nil, nil }
	p.Step("stock.reserve", ok, "stock.release", func(_ context.Context, _ pgx.Tx, cmd wire.Command) ([]byte, error) {
		if decode(cmd).Stuck {
			return nil, errors.New("stock service unavailable")
		}
		return nil, nil
	})
	p.Step("pay.charge", func(_ context.Context, _ pgx.Tx, cmd wire.Command) ([]byte, error) {
		if decode(cmd).Decline {
			return nil, participants.Fail("declined")
		}
		return nil, nil
	}, "pay.refund", ok)

	const audit = "audit.events"
	k.CreateTopic(t, audit, 1)
	var failOnce sync.Once
	ac := sagatest.FastConsumer()
	ac.Brokers, ac.GroupID, ac.Topics, ac.Hooks = k.Brokers, "audit", []string{audit}, cm.Hooks("audit")
	ac.MaxAttempts = 3
	c := must[*consumer.Consumer](t)(consumer.New(db.Pool, ac, func(context.Context, pgx.Tx, consumer.Message) error {
		var err error
		failOnce.Do(func() { err = errors.New("audit store busy") }) // one retry
		return err
	}))
	wg.Go(func() { _ = c.Run(ctx) })

	// The orchestrator.
	orchReg := prometheus.NewPedanticRegistry()
	sm := must[*sagastateprom.Metrics](t)(sagastateprom.New(orchReg))
	om := must[*consumerprom.Metrics](t)(consumerprom.New(orchReg))
	orchReg.MustRegister(must[prometheus.Collector](t)(sagastateprom.InFlight(db.Pool, "")))
	oc := sagatest.FastConsumer()
	oc.Hooks = om.Hooks(sagastate.DefaultGroupID)
	env := sagatest.Start(t, db.Pool, k.Brokers, sagatest.Config{
		Orchestrator: sagastate.Config{Sagas: []sagastate.Definition{order}, Consumer: oc, Hooks: sm.Hooks()},
		Participants: []sagatest.Runner{p}, Topics: []string{"stock.commands", "pay.commands"}, NoRelay: true,
	})

	urls := []string{serve(t, relayReg), serve(t, partReg), serve(t, orchReg)}

	// The run: a saga of each outcome, a message too large for Kafka, and audit records
	// of which one comes twice and one has no message id.
	var ids []uuid.UUID
	for _, s := range []script{{}, {Decline: true}, {Decline: true, Stuck: true}} {
		ids = append(ids, env.StartSaga(t, "order", s))
	}
	if err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		return outbox.Enqueue(ctx, tx, outbox.Message{Topic: audit, Payload: make([]byte, 8000)})
	}); err != nil {
		t.Fatal(err)
	}
	rec := kafkatest.FromOutbox(outbox.Message{ID: uuid.New(), Topic: audit, Payload: []byte(`{}`)}, 0)
	kafkatest.Produce(t, k.Brokers, audit, rec, rec, kafkatest.Record{Value: []byte("no message id")})
	for _, id := range ids {
		env.Await(t, id, 60*time.Second)
	}

	var missing []string
	kafkatest.Poll(t, 60*time.Second, func() bool {
		have := map[string]bool{}
		for _, u := range urls {
			for n := range scrape(t, u) {
				have[n] = true
			}
		}
		missing = slices.DeleteFunc(slices.Clone(want), func(n string) bool { return have[n] })
		return len(missing) == 0
	}, func() string {
		return "metrics used by deploy/ but exported by no component: " + strings.Join(missing, ", ")
	})
}
