//go:build integration

package integration

import (
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sagabox/sagabox/internal/demo"
)

// TestSoak runs SAGABOX_SOAK_SAGAS order sagas (make soak: 100000) through the containers
// while random faults hit them: a participant process SIGKILLed and restarted, the broker
// stopped for 5 s, the PostgreSQL container restarted. It then checks every saga and the
// business invariants and prints the throughput. Not part of CI; without
// SAGABOX_SOAK_SAGAS it is skipped.
//
// SAGABOX_SOAK_FAULTS picks the faults (comma-separated: participant, broker, postgres;
// default all), SAGABOX_SOAK_FAULT_EVERY the mean pause between faults (default 30s; each
// pause is drawn from half to one and a half of it), SAGABOX_SOAK_SEED the random seed,
// SAGABOX_SOAK_CONCURRENCY the sagas in flight (default 64), SAGABOX_SOAK_TIMEOUT how
// long the sagas may take (default 6h).
func TestSoak(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("SAGABOX_SOAK_SAGAS"))
	if n <= 0 {
		t.Skip("soak run: set SAGABOX_SOAK_SAGAS (make soak)")
	}
	seed, err := strconv.ParseUint(envOr("SAGABOX_SOAK_SEED", strconv.FormatInt(time.Now().UnixNano(), 10)), 10, 64)
	if err != nil {
		t.Fatalf("SAGABOX_SOAK_SEED must be a number: %v", err)
	}
	faults := strings.Split(envOr("SAGABOX_SOAK_FAULTS", "participant,broker,postgres"), ",")
	for _, f := range faults {
		if f != "participant" && f != "broker" && f != "postgres" {
			t.Fatalf("SAGABOX_SOAK_FAULTS: unknown fault %q; use participant, broker or postgres", f)
		}
	}
	timeout, err := time.ParseDuration(envOr("SAGABOX_SOAK_TIMEOUT", "6h"))
	if err != nil {
		t.Fatalf("SAGABOX_SOAK_TIMEOUT: %v", err)
	}
	every, err := time.ParseDuration(envOr("SAGABOX_SOAK_FAULT_EVERY", "30s"))
	if err != nil || every <= 0 {
		t.Fatalf("SAGABOX_SOAK_FAULT_EVERY must be a positive duration like 30s: %q", os.Getenv("SAGABOX_SOAK_FAULT_EVERY"))
	}
	rng := rand.New(rand.NewPCG(seed, 0))
	t.Logf("soak: %d sagas, faults %v about every %s, seed %d", n, faults, every, seed)

	e := setupSaga(t)
	start := time.Now()
	driver := e.startDriver(t, n, "--concurrency", envOr("SAGABOX_SOAK_CONCURRENCY", "64"), "--timeout", timeout.String())
	procs := map[string]*Proc{}
	for _, role := range demo.Roles {
		procs[role] = e.startParticipant(t, role)
	}
	injected := map[string]int{}
loop:
	for {
		select {
		case <-driver.done:
			break loop
		case <-time.After(every/2 + time.Duration(rng.Int64N(int64(every)))):
		}
		switch f := faults[rng.IntN(len(faults))]; f {
		case "participant":
			role := demo.Roles[rng.IntN(len(demo.Roles))]
			procs[role].Kill(t)
			procs[role] = e.startParticipant(t, role)
			injected["participant "+role+" killed"]++
		case "broker":
			e.broker.Stop(t)
			<-time.After(5 * time.Second) // the fault's duration
			e.broker.Start(t)
			injected["broker stopped 5s"]++
		case "postgres":
			e.pg.Restart(t)
			injected["postgres restarted"]++
		}
	}
	elapsed := time.Since(start)
	sum := finishDriver(t, driver, n)
	checkSagaInvariants(t, e.pg, sum)
	t.Logf("soak: %d sagas in %s = %.1f sagas/s under faults %v (seed %d); invariants: %s",
		n, elapsed.Round(time.Second), float64(n)/elapsed.Seconds(), injected, seed, verdict(t))
}

func verdict(t *testing.T) string {
	if t.Failed() {
		return "BROKEN (see above)"
	}
	return "all held"
}
