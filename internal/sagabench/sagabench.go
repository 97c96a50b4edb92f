package sagabench

import (
	"context"
	"fmt"
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
)

// Result is one load level's figures.
type Result struct {
	Name     string
	InFlight int     // closed loop: flows kept in flight; 0 for open loop
	Rate     float64 // open loop: flows offered per second; 0 for closed loop
	Flows    int     // the flows counted: all of the level's, or those Steady's window saw finish
	PerSec   float64
	P50, P99 time.Duration // time to consistency: start → finished signal
	// LocalRetries counts transactions the consumer loops ran again after a transient
	// database error (consumer Hooks.LocalRetry) during the level.
	LocalRetries int64
	// SagaRetries counts step commands sent again by the orchestrator (after a
	// retryable reply or a timeout); Deadlocks those of them caused by a deadlock or a
	// serialization failure. Zero for the baseline, which has no saga.
	SagaRetries, Deadlocks int
	// Unfinished counts flows that failed to start or did not finish within Timeout;
	// the other figures are of the finished ones.
	Unfinished int
	// FirstError is why the first unfinished flow failed.
	FirstError error
	// CPU is the CPU time per finished flow (Driver.CPU), 0 when unknown; ServerCPU
	// is the PostgreSQL server's part of it.
	CPU, ServerCPU time.Duration
	// RoundTrips and Statements are the database round trips and statements per
	// finished flow (Driver.Trips), 0 when unknown.
	RoundTrips, Statements float64
}

// StartFunc starts flow id (the ith of its level) and returns once it is committed.
type StartFunc func(ctx context.Context, id uuid.UUID, i int) error

// Driver starts flows and waits for them to finish. Call Finished (from a hook) when a
// flow has finished; it is safe to call for flows the driver did not start, and twice.
type Driver struct {
	start StartFunc
	// LocalRetries is the counter the consumers' LocalRetry hooks add to.
	LocalRetries atomic.Int64
	// CPU, if not nil, reports the CPU time used so far by everything the flows run on
	// (CPUMeter), this process's and the PostgreSQL server's: each level reports its
	// CPU per flow.
	CPU func() (proc, server time.Duration)
	// Trips, if not nil, reports the database round trips and statements sent so far
	// (Trips.Counts): each level reports them per flow.
	Trips func() (roundTrips, statements int64)

	mu      sync.Mutex
	waiting map[uuid.UUID]chan struct{}
}

// NewDriver returns a driver of flows started by start.
func NewDriver(start StartFunc) *Driver {
	return &Driver{start: start, waiting: map[uuid.UUID]chan struct{}{}}
}

// Finished signals that flow id has finished.
func (d *Driver) Finished(id uuid.UUID) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if c, ok := d.waiting[id]; ok {
		close(c)
		delete(d.waiting, id)
	}
}

// LocalRetry is a consumer Hooks.LocalRetry that counts.
func (d *Driver) LocalRetry(string, int, error) { d.LocalRetries.Add(1) }

// one starts a flow and waits up to timeout for it to finish, returning its time to
// consistency.
func (d *Driver) one(ctx context.Context, i int, timeout time.Duration) (uuid.UUID, time.Duration, error) {
	id, _ := uuid.NewV7()
	done := make(chan struct{})
	d.mu.Lock()
	d.waiting[id] = done
	d.mu.Unlock()
	t0 := time.Now()
	if err := d.start(ctx, id, i); err != nil {
		return id, 0, fmt.Errorf("start flow %d: %w", i, err)
	}
	select {
	case <-done:
		return id, time.Since(t0), nil
	case <-time.After(timeout):
		return id, 0, fmt.Errorf("flow %d (%s) did not finish within %s", i, id, timeout)
	case <-ctx.Done():
		return id, 0, ctx.Err()
	}
}

// Timeout bounds one flow; a loaded machine can be slow, but not that slow.
const Timeout = 2 * time.Minute

// Closed runs n flows with inFlight of them in flight at any time and returns the
// figures and the flows' ids.
func (d *Driver) Closed(tb testing.TB, name string, n, inFlight int) (Result, []uuid.UUID) {
	tb.Helper()
	jobs := make(chan int)
	var wg sync.WaitGroup
	r := run{ids: make([]uuid.UUID, n), ttc: make([]time.Duration, n)}
	retries, cpu, trips := d.LocalRetries.Load(), d.cpu(), d.trips()
	begin := time.Now()
	for range inFlight {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				r.do(d, i)
			}
		}()
	}
	for i := range n {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	return r.result(tb, Result{Name: name, InFlight: inFlight}, begin, d.LocalRetries.Load()-retries, d.cpu().minus(cpu), d.trips().minus(trips))
}

// Steady keeps inFlight flows in flight for warm and then for window, and returns the
// figures of the flows that finished within the window (their CPU and round trips are the
// window's) and their ids; Unfinished counts the failures of every flow it ran. The flows
// of the first wave start together and the last ones finish with fewer in flight; counted
// over a fixed number of flows, that ramp and that tail weigh most at the highest load
// (300 flows at 64 in flight measured 147-310 flows/s in four runs of one machine at one
// load). The flows still in flight when the window ends are waited for, not counted.
func (d *Driver) Steady(tb testing.TB, name string, inFlight int, warm, window time.Duration) (Result, []uuid.UUID) {
	tb.Helper()
	var (
		stop atomic.Bool
		next atomic.Int64 // the index of the next flow started, across the workers
		wg   sync.WaitGroup
		mu   sync.Mutex
		ends []flowEnd
		errs []error
	)
	for range inFlight {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				id, ttc, err := d.one(context.Background(), int(next.Add(1)-1), Timeout)
				end := time.Now()
				mu.Lock()
				if err != nil {
					errs = append(errs, err)
				} else {
					ends = append(ends, flowEnd{id, end, ttc})
				}
				mu.Unlock()
			}
		}()
	}
	time.Sleep(warm) // a measurement window, not a wait for a condition
	from, retries, cpu, trips := time.Now(), d.LocalRetries.Load(), d.cpu(), d.trips()
	time.Sleep(window)
	to, retries, cpu, trips := time.Now(), d.LocalRetries.Load()-retries, d.cpu().minus(cpu), d.trips().minus(trips)
	stop.Store(true)
	wg.Wait()
	var (
		ttc []time.Duration
		ids []uuid.UUID
	)
	for _, e := range ends {
		if e.at.After(from) && !e.at.After(to) {
			ttc, ids = append(ttc, e.ttc), append(ids, e.id)
		}
	}
	res := summarize(Result{Name: name, InFlight: inFlight, Flows: len(ttc)}, ttc, to.Sub(from), retries, cpu, trips)
	if len(errs) > 0 {
		res.Unfinished, res.FirstError = len(errs), errs[0]
	}
	return res, ids
}

// flowEnd is a flow, when it finished, and its time to consistency.
type flowEnd struct {
	id  uuid.UUID
	at  time.Time
	ttc time.Duration
}

// Open offers n flows at rate per second, each started on schedule whatever the
// others do, and returns the figures and the flows' ids.
func (d *Driver) Open(tb testing.TB, name string, n int, rate float64) (Result, []uuid.UUID) {
	tb.Helper()
	var wg sync.WaitGroup
	r := run{ids: make([]uuid.UUID, n), ttc: make([]time.Duration, n)}
	retries, cpu, trips := d.LocalRetries.Load(), d.cpu(), d.trips()
	begin := time.Now()
	interval := time.Duration(float64(time.Second) / rate)
	for i := range n {
		if wait := time.Until(begin.Add(time.Duration(i) * interval)); wait > 0 {
			time.Sleep(wait) // the offered schedule, not a wait for a condition
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.do(d, i)
		}()
	}
	wg.Wait()
	return r.result(tb, Result{Name: name, Rate: rate}, begin, d.LocalRetries.Load()-retries, d.cpu().minus(cpu), d.trips().minus(trips))
}

// cpuTimes is a reading of Driver.CPU.
type cpuTimes struct{ proc, server time.Duration }

func (c cpuTimes) minus(o cpuTimes) cpuTimes { return cpuTimes{c.proc - o.proc, c.server - o.server} }

// cpu is Driver.CPU's reading, or zero.
func (d *Driver) cpu() cpuTimes {
	if d.CPU == nil {
		return cpuTimes{}
	}
	proc, server := d.CPU()
	return cpuTimes{proc, server}
}

// tripCounts is a reading of Driver.Trips.
type tripCounts struct{ roundTrips, statements int64 }

func (c tripCounts) minus(o tripCounts) tripCounts {
	return tripCounts{c.roundTrips - o.roundTrips, c.statements - o.statements}
}

// trips is Driver.Trips's reading, or zero.
func (d *Driver) trips() tripCounts {
	if d.Trips == nil {
		return tripCounts{}
	}
	rt, st := d.Trips()
	return tripCounts{rt, st}
}

// run collects one level's flows.
type run struct {
	ids  []uuid.UUID
	ttc  []time.Duration
	mu   sync.Mutex
	errs []error
}

func (r *run) do(d *Driver, i int) {
	id, ttc, err := d.one(context.Background(), i, Timeout)
	r.ids[i], r.ttc[i] = id, ttc
	if err != nil {
		r.mu.Lock()
		r.errs = append(r.errs, err)
		r.mu.Unlock()
	}
}

func (r *run) result(tb testing.TB, res Result, begin time.Time, retries int64, cpu cpuTimes, trips tripCounts) (Result, []uuid.UUID) {
	tb.Helper()
	elapsed := time.Since(begin)
	var ttc []time.Duration
	for _, d := range r.ttc {
		if d > 0 {
			ttc = append(ttc, d)
		}
	}
	res = summarize(res, ttc, elapsed, retries, cpu, trips)
	res.Flows = len(r.ids)
	if len(r.errs) > 0 {
		res.Unfinished, res.FirstError = len(r.errs), r.errs[0]
	}
	return res, r.ids
}

// summarize fills res with the figures of the flows that finished in elapsed, with
// times to consistency ttc, and the retries, CPU and round trips of that time.
func summarize(res Result, ttc []time.Duration, elapsed time.Duration, retries int64, cpu cpuTimes, trips tripCounts) Result {
	slices.Sort(ttc)
	res.PerSec = float64(len(ttc)) / elapsed.Seconds()
	if len(ttc) > 0 {
		res.P50 = ttc[len(ttc)/2]
		res.P99 = ttc[min(len(ttc)-1, len(ttc)*99/100)]
	}
	res.LocalRetries = retries
	if n := time.Duration(len(ttc)); n > 0 && cpu.proc+cpu.server > 0 {
		res.CPU, res.ServerCPU = (cpu.proc+cpu.server)/n, cpu.server/n
	}
	if n := float64(len(ttc)); n > 0 && trips.roundTrips > 0 {
		res.RoundTrips, res.Statements = float64(trips.roundTrips)/n, float64(trips.statements)/n
	}
	return res
}

// Print writes results as a table, each closed-loop row's throughput with its ratio
// to the baseline row of the same InFlight, and its CPU per flow with the baseline's
// CPU per flow divided by it: the throughput ratio a machine the benchmark had to
// itself would show (a loaded machine's throughput ratios are noise).
func Print(w io.Writer, baseline, rows []Result) {
	fmt.Fprintf(w, "%-38s %-12s %6s %9s %7s %9s %9s %8s %8s %9s %10s %9s %8s %9s %8s %9s\n",
		"", "load", "flows", "flows/s", "×base", "p50 ttc", "p99 ttc", "local-rt", "saga-rt", "deadlock", "unfinished", "cpu/flow", "pg part", "×base cpu", "rt/flow", "stmt/flow")
	for _, r := range append(append([]Result(nil), baseline...), rows...) {
		load := fmt.Sprintf("%d in flight", r.InFlight)
		if r.Rate > 0 {
			load = fmt.Sprintf("open %.0f/s", r.Rate)
		}
		ratio, cpu, pg, cpuRatio := "-", "-", "-", "-"
		if r.CPU > 0 {
			cpu = r.CPU.Round(10 * time.Microsecond).String()
			pg = fmt.Sprintf("%.0f%%", 100*float64(r.ServerCPU)/float64(r.CPU))
		}
		for _, b := range baseline {
			if b.InFlight == r.InFlight && r.InFlight > 0 {
				ratio = fmt.Sprintf("%.2f", r.PerSec/b.PerSec)
				if b.CPU > 0 && r.CPU > 0 {
					cpuRatio = fmt.Sprintf("%.2f", float64(b.CPU)/float64(r.CPU))
				}
			}
		}
		fmt.Fprintf(w, "%-38s %-12s %6d %9.0f %7s %9v %9v %8d %8d %9d %10d %9s %8s %9s %8.1f %9.1f\n", r.Name, load, r.Flows, r.PerSec, ratio,
			r.P50.Round(100*time.Microsecond), r.P99.Round(100*time.Microsecond), r.LocalRetries, r.SagaRetries, r.Deadlocks, r.Unfinished, cpu, pg, cpuRatio,
			r.RoundTrips, r.Statements)
	}
}

// Scope is a testing.TB whose cleanups run when Close is called instead of when the
// test ends, so that a benchmark stops one kind of flow — its services, relay,
// broker and database — before it measures the next: left running, the earlier
// kinds' idle work (polls, probes, heartbeats, empty fetches) is counted in every
// later row's CPU per flow. Close also runs when the test ends, if it did not before.
type Scope struct {
	testing.TB
	mu       sync.Mutex
	cleanups []func()
}

// NewScope returns a Scope of tb.
func NewScope(tb testing.TB) *Scope {
	s := &Scope{TB: tb}
	tb.Cleanup(s.Close)
	return s
}

// Cleanup registers f to run when the scope is closed.
func (s *Scope) Cleanup(f func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cleanups = append(s.cleanups, f)
}

// Close runs the cleanups registered so far, the last one first; it is safe to
// call twice.
func (s *Scope) Close() {
	for {
		s.mu.Lock()
		n := len(s.cleanups)
		if n == 0 {
			s.mu.Unlock()
			return
		}
		f := s.cleanups[n-1]
		s.cleanups = s.cleanups[:n-1]
		s.mu.Unlock()
		f()
	}
}
