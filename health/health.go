package health

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// CheckTimeout bounds each check of a probe.
const CheckTimeout = 2 * time.Second

// Check is one named health condition; Func returns nil when it holds.
type Check struct {
	Name string
	Func func(ctx context.Context) error
}

// Func adapts a Health method (relay.Relay.Health, sagastate.Orchestrator.Health,
// participants.Participant.Health) to a Check's Func.
func Func(health func() error) func(context.Context) error {
	return func(context.Context) error { return health() }
}

// Pinger is what Ping needs of a database pool (*pgxpool.Pool has it).
type Pinger interface {
	Ping(ctx context.Context) error
}

// Ping returns a check named "database" that pings db.
func Ping(db Pinger) Check {
	return Check{Name: "database", Func: db.Ping}
}

// Config says what the handler serves.
type Config struct {
	// Live are the liveness checks of /healthz. Defaults to none (always ok).
	Live []Check
	// Ready are the checks /readyz adds to Live. Defaults to none.
	Ready []Check
	// Metrics is served on /metrics. Defaults to nil: no /metrics.
	Metrics prometheus.Gatherer
}

// Handler returns the handler of /healthz, /readyz and (with Config.Metrics) /metrics.
func Handler(cfg Config) http.Handler {
	mux := http.NewServeMux()
	live := append([]Check(nil), cfg.Live...)
	ready := append(append([]Check(nil), cfg.Live...), cfg.Ready...)
	mux.HandleFunc("GET /healthz", probe(live))
	mux.HandleFunc("GET /readyz", probe(ready))
	if cfg.Metrics != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(cfg.Metrics, promhttp.HandlerOpts{}))
	}
	return mux
}

func probe(checks []Check) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var failed []string
		for _, c := range checks {
			ctx, cancel := context.WithTimeout(r.Context(), CheckTimeout)
			err := c.Func(ctx)
			cancel()
			if err != nil {
				failed = append(failed, fmt.Sprintf("%s: %v", c.Name, err))
			}
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if len(failed) > 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, strings.Join(failed, "\n"))
			return
		}
		fmt.Fprintln(w, "ok")
	}
}

// Serve serves h on addr until ctx ends, then shuts the server down (letting requests
// in flight finish for up to 5s) and returns nil. It returns an error at once if addr
// cannot be listened on.
func Serve(ctx context.Context, addr string, h http.Handler, log *slog.Logger) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("health: listen on %s: %w", addr, err)
	}
	return ServeListener(ctx, ln, h, log)
}

// ServeListener is Serve on a listener of the caller's (say one on port 0 in a test).
func ServeListener(ctx context.Context, ln net.Listener, h http.Handler, log *slog.Logger) error {
	if log != nil {
		log.Info("health: serving /healthz, /readyz and /metrics", "addr", ln.Addr().String())
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	select {
	case err := <-done:
		return fmt.Errorf("health: serve: %w", err)
	case <-ctx.Done():
	}
	shutCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(shutCtx)
	if err := <-done; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("health: serve: %w", err)
	}
	return nil
}
