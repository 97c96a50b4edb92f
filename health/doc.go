// Package health serves the probes and metrics of a sagabox process: /healthz
// (liveness: the process's loops run and reach the database), /readyz (readiness:
// liveness plus the checks that say it can do work now, such as a database ping) and
// /metrics (a Prometheus registry).
//
// Each endpoint answers 200 "ok" when every check passes, else 503 with one line per
// failed check ("name: error"). Checks run on every request, each bounded by
// CheckTimeout, so a probe never hangs on a dead database.
//
//	mux := health.Handler(health.Config{
//		Live:    []health.Check{{Name: "orchestrator", Func: health.Func(o.Health)}},
//		Ready:   []health.Check{health.Ping(pool)},
//		Metrics: reg,
//	})
//	go health.Serve(ctx, ":9090", mux, logger)
package health
