package health_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sagabox/sagabox/health"
	"github.com/sagabox/sagabox/internal/kafkatest"
	"github.com/sagabox/sagabox/internal/testenv"
	"github.com/sagabox/sagabox/participants"
	"github.com/sagabox/sagabox/sagastate"
	"github.com/sagabox/sagabox/sagastate/sagatest"
)

func TestMain(m *testing.M) { os.Exit(testenv.Run(m)) }

// get returns the status code and body of url.
func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func serve(t *testing.T, cfg health.Config) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- health.ServeListener(ctx, ln, health.Handler(cfg), nil) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return "http://" + ln.Addr().String()
}

func TestOrchestratorAndParticipantProbes(t *testing.T) {
	t.Parallel()
	db := testenv.NewDB(t)
	k := testenv.NewKafka(t)
	p, err := participants.New(db.Pool, participants.Config{Brokers: k.Brokers, GroupID: "svc",
		CommandTopics: []string{"svc.commands"}, Consumer: sagatest.FastConsumer()})
	if err != nil {
		t.Fatal(err)
	}
	// A second pool for readiness, closed below to make the database unreachable.
	pool, err := pgxpool.New(context.Background(), db.URL)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(prometheus.NewCounter(prometheus.CounterOpts{Name: "sagabox_test_total", Help: "x"}))

	o, err := sagastate.New(db.Pool, sagastate.Config{})
	if err != nil {
		t.Fatal(err)
	}
	url := serve(t, health.Config{
		Live:    []health.Check{{Name: "orchestrator", Func: health.Func(o.Health)}, {Name: "participant", Func: health.Func(p.Health)}},
		Ready:   []health.Check{health.Ping(pool)},
		Metrics: reg,
	})
	if code, body := get(t, url+"/healthz"); code != http.StatusServiceUnavailable ||
		!strings.Contains(body, "orchestrator: sagastate: orchestrator not running") || !strings.Contains(body, "participant: participants: participant not running") {
		t.Errorf("before Run: /healthz = %d %q, want 503 naming both", code, body)
	}

	env := sagatest.Start(t, db.Pool, k.Brokers, sagatest.Config{Participants: []sagatest.Runner{p}, Topics: []string{"svc.commands"}})
	o = env.Orchestrator // the orchestrator that runs
	url = serve(t, health.Config{
		Live:    []health.Check{{Name: "orchestrator", Func: health.Func(o.Health)}, {Name: "participant", Func: health.Func(p.Health)}},
		Ready:   []health.Check{health.Ping(pool)},
		Metrics: reg,
	})
	kafkatest.Poll(t, 30*time.Second, func() bool {
		code, _ := get(t, url+"/readyz")
		return code == http.StatusOK
	}, func() string { _, body := get(t, url+"/readyz"); return "/readyz: " + body })
	if code, body := get(t, url+"/healthz"); code != http.StatusOK || body != "ok\n" {
		t.Errorf("running: /healthz = %d %q", code, body)
	}
	if code, body := get(t, url+"/metrics"); code != http.StatusOK || !strings.Contains(body, "sagabox_test_total 0") {
		t.Errorf("/metrics = %d %q", code, body)
	}

	pool.Close()
	if code, body := get(t, url+"/readyz"); code != http.StatusServiceUnavailable || !strings.HasPrefix(body, "database: ") {
		t.Errorf("database pool closed: /readyz = %d %q, want 503 from the database check", code, body)
	}
	env.Stop()
	if code, _ := get(t, url+"/healthz"); code != http.StatusServiceUnavailable {
		t.Errorf("after Stop: /healthz = %d, want 503", code)
	}
}
