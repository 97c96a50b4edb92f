package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/sagabox/sagabox/internal/demo"
	"github.com/sagabox/sagabox/internal/timeline"
	"github.com/sagabox/sagabox/participants"
	"github.com/sagabox/sagabox/sagastate"
)

// replyTopic is the orchestrator default, so sagactl saga retry needs no --reply-topic.
const replyTopic = sagastate.DefaultReplyTopic

var skus = []string{"widget", "gadget", "gizmo"}

// makeOrder returns the ith order (from 1): every kth is above the payment limit.
func makeOrder(i, k int) (demo.Order, bool) {
	declined := k > 0 && i%k == 0
	amount := int64(20 + (i*37)%900)
	if declined {
		amount = demo.PaymentLimit + int64(50*(1+i%10))
	}
	id, _ := uuid.NewV7()
	return demo.Order{
		ID: id, Customer: fmt.Sprintf("customer-%d", i%17), SKU: skus[i%len(skus)], Qty: 1 + i%3,
		Amount: amount, Address: fmt.Sprintf("%d Saga Street", i),
	}, declined
}

// services runs long-lived parts until ctx ends and collects their errors.
type services struct {
	wg       sync.WaitGroup
	mu       sync.Mutex
	errs     []error
	fail     context.CancelFunc
	closePub func()
}

// newServices returns the set of long-lived parts, run under a context of their
// own; stop ends them all.
func newServices(ctx context.Context) (*services, context.Context) {
	runCtx, cancel := context.WithCancel(ctx)
	return &services{fail: cancel, closePub: func() {}}, runCtx
}

// runRelay starts the outbox relay in this process.
func (s *services) runRelay(ctx context.Context, c *config, in *infra) error {
	rl, closePub, err := in.newRelay(c)
	if err != nil {
		return err
	}
	s.closePub = closePub
	s.run(ctx, "relay", rl.Run)
	return nil
}

func (s *services) run(ctx context.Context, name string, fn func(context.Context) error) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := fn(ctx); err != nil && ctx.Err() == nil {
			s.mu.Lock()
			s.errs = append(s.errs, fmt.Errorf("%s: %w", name, err))
			s.mu.Unlock()
			s.fail() // one part down stops the demo instead of hanging it
		}
	}()
}

// stop ends every part, waits for them, and returns why the run went wrong, if it
// did: an interrupt, a part that failed, or driveErr (sagas left unfinished are
// not an error here: the report shows them and fails the checks).
func (s *services) stop(ctx context.Context, driveErr error) error {
	s.fail()
	s.wg.Wait()
	s.closePub()
	switch {
	case driveErr != nil && ctx.Err() != nil:
		return fmt.Errorf("interrupted: %w", ctx.Err())
	case len(s.errs) > 0:
		return fmt.Errorf("a demo service stopped: %w", errors.Join(s.errs...))
	case driveErr != nil && !errors.Is(driveErr, errUnfinished):
		return driveErr
	}
	return nil
}

// finals tells workers when their saga has finished, from the orchestrator's event feed.
type finals struct {
	mu sync.Mutex
	ch map[uuid.UUID]chan struct{}
}

func (f *finals) register(id uuid.UUID) chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := make(chan struct{})
	f.ch[id] = c
	return c
}

func (f *finals) listen(e sagastate.Event) {
	switch e.Type {
	case sagastate.EventSagaCompleted, sagastate.EventSagaCompensated, sagastate.EventSagaFailed:
		f.mu.Lock()
		if c, ok := f.ch[e.SagaID]; ok {
			close(c)
			delete(f.ch, e.SagaID)
		}
		f.mu.Unlock()
	}
}

type sagaResult struct {
	ID        uuid.UUID `json:"id"`
	Order     int       `json:"order"`
	Amount    int64     `json:"amount"`
	Status    string    `json:"status"`
	Expected  string    `json:"expected"`
	TTCMillis float64   `json:"time_to_consistency_ms"`
	LastError string    `json:"last_error,omitempty"`
}

func runOrders(ctx context.Context, c *config) error {
	topics := demo.Topics{}.WithDefaults()
	in, err := startInfra(ctx, c, true, append(topics.All(), replyTopic))
	if err != nil {
		return err
	}
	defer in.close()
	out := c.out()
	fmt.Fprintf(out, "sagabox order demo: %d orders, %s, %d in flight%s\n", c.orders, declineText(c.declineEvery), c.concurrency, dupText(c.duplicate))
	fmt.Fprintf(out, "  on %s\n", in.describe)

	// Seeded once: a driver restarted on the same database must not put stock back
	// under the reservations of sagas that are still running.
	stock := map[string]int{}
	for _, s := range skus {
		stock[s] = 10000
	}
	if err := in.svc.SeedStock(ctx, in.pool, stock); err != nil {
		return err
	}

	f := &finals{ch: map[uuid.UUID]chan struct{}{}}
	orch, err := sagastate.New(in.pool, orchestratorConfig(c, in, f.listen))
	if err != nil {
		return err
	}
	svcs, runCtx := newServices(ctx)
	runRelay, runOrch := c.runRelay, c.runOrch
	if c.processes {
		relayBin := ""
		if relayBin, err = findRelay(c); err != nil {
			fmt.Fprintf(out, "  relay: %v; it runs in this process\n", err)
		}
		stop, err := startChildren(c, in, relayBin)
		if err != nil {
			return svcs.stop(ctx, err)
		}
		defer stop()
		runRelay, runOrch = relayBin == "", false
		parts := append([]string{"orchestrator"}, demo.Roles...)
		if relayBin != "" {
			parts = append(parts, "relay ("+relayBin+")")
		}
		fmt.Fprintf(out, "  %s as separate processes; this one drives the orders\n", strings.Join(parts, ", "))
	}
	if runRelay {
		if err := svcs.runRelay(runCtx, c, in); err != nil {
			return svcs.stop(ctx, err)
		}
	}
	if runOrch {
		svcs.run(runCtx, "orchestrator", orch.Run)
	}
	switch {
	case c.processes:
	case c.role == "all":
		for _, role := range demo.Roles {
			p, err := in.svc.Participant(in.pool, role, topics, participants.Config{
				Brokers: in.brokers, Schema: c.schema, Consumer: in.consumerConfig(c), Logger: c.log,
			})
			if err != nil {
				return svcs.stop(ctx, err)
			}
			svcs.run(runCtx, role+" participant", p.Run)
		}
	default:
		fmt.Fprintf(out, "  participants: not started here (run orderdemo --role <%s> against the same database and brokers)\n", strings.Join(demo.Roles, "|"))
		if !runOrch {
			fmt.Fprintln(out, "  orchestrator: not started here (run orderdemo --role orchestrator)")
		}
		if !runRelay {
			fmt.Fprintln(out, "  relay: not started here (run outbox-relay)")
		}
	}
	// Without the orchestrator in this process its event feed does not run: the
	// driver learns that sagas finished by polling them.
	poll := 500 * time.Millisecond
	if !runOrch {
		poll = 50 * time.Millisecond
	}

	start := time.Now()
	results, driveErr := drive(runCtx, c, orch, in, f, start, poll)
	elapsed := time.Since(start)
	if err := svcs.stop(ctx, driveErr); err != nil {
		return err
	}
	if err := report(ctx, c, in, orch, results, elapsed); err != nil {
		return err
	}
	if in.stopDB != nil {
		fmt.Fprintln(out, "(the throwaway database goes away now; run with --database-url to keep the sagas for sagactl saga list/show)")
	}
	return nil
}

var errUnfinished = errors.New("sagas unfinished")

// drive starts the orders with c.concurrency in flight and waits for each saga to end.
func drive(ctx context.Context, c *config, orch *sagastate.Orchestrator, in *infra, f *finals, start time.Time, poll time.Duration) ([]sagaResult, error) {
	results := make([]sagaResult, c.orders)
	var finished, compensated, failed atomic.Int64
	deadline := start.Add(c.timeout)
	jobs := make(chan int)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	for w := 0; w < c.concurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				o, declined := makeOrder(i+1, c.declineEvery)
				r := sagaResult{ID: o.ID, Order: i + 1, Amount: o.Amount, Expected: "completed"}
				if declined {
					r.Expected = "compensated"
				}
				done := f.register(o.ID)
				err := startSaga(ctx, orch, in, o, deadline)
				if err == nil {
					r.Status, err = await(ctx, orch, o.ID, done, deadline, poll)
				}
				results[i] = r
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					continue
				}
				finished.Add(1)
				switch r.Status {
				case string(sagastate.SagaCompensated):
					compensated.Add(1)
				case string(sagastate.SagaFailed):
					failed.Add(1)
				}
			}
		}()
	}
	stopProgress := make(chan struct{})
	progressDone := make(chan struct{})
	go func() {
		defer close(progressDone)
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-stopProgress:
				return
			case <-t.C:
				fmt.Fprintf(c.progress(), "  [%4.1fs] %d/%d sagas finished (%d compensated, %d failed)\n",
					time.Since(start).Seconds(), finished.Load(), c.orders, compensated.Load(), failed.Load())
			}
		}
	}()
feed:
	for i := 0; i < c.orders; i++ {
		select {
		case jobs <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(jobs)
	wg.Wait()
	close(stopProgress)
	<-progressDone
	fmt.Fprintf(c.progress(), "  [%4.1fs] %d/%d sagas finished (%d compensated, %d failed)\n",
		time.Since(start).Seconds(), finished.Load(), c.orders, compensated.Load(), failed.Load())
	return results, firstErr
}

// startSaga starts the order's saga, retrying while the database is unreachable (a
// restart, a failover) until deadline. If a commit went through but its answer was
// lost, the retry finds the saga already there, which is what was wanted.
func startSaga(ctx context.Context, orch *sagastate.Orchestrator, in *infra, o demo.Order, deadline time.Time) error {
	pause := 100 * time.Millisecond
	for {
		err := pgx.BeginFunc(ctx, in.pool, func(tx pgx.Tx) error {
			return orderSaga.Start(ctx, tx, orch, o.ID, o)
		})
		switch {
		case err == nil || errors.Is(err, sagastate.ErrDuplicate):
			return nil
		case errors.Is(err, sagastate.ErrInvalidPayload), errors.Is(err, sagastate.ErrUnknownSagaType),
			ctx.Err() != nil, time.Now().Add(pause).After(deadline):
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(pause):
		}
		pause = min(2*pause, 2*time.Second)
	}
}

// await waits for saga id to finish: on the event feed's signal, or by polling in case
// the feed missed it, until deadline. Database errors are waited out: the saga's state
// is in PostgreSQL, and a restart of it delays the answer but does not change it.
func await(ctx context.Context, orch *sagastate.Orchestrator, id uuid.UUID, done chan struct{}, deadline time.Time, every time.Duration) (string, error) {
	poll := time.NewTicker(every)
	defer poll.Stop()
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	var lastErr error
	for {
		select {
		case <-done:
		case <-poll.C:
		case <-timer.C:
			s, err := orch.Get(ctx, id)
			if err == nil && s.Status.Final() {
				return string(s.Status), nil
			}
			if lastErr != nil {
				return "unfinished", fmt.Errorf("%w: saga %s did not finish before --timeout (last database error: %v)", errUnfinished, id, lastErr)
			}
			return "unfinished", fmt.Errorf("%w: saga %s did not finish before --timeout", errUnfinished, id)
		case <-ctx.Done():
			return "unfinished", ctx.Err()
		}
		s, err := orch.Get(ctx, id)
		if err != nil {
			if errors.Is(err, sagastate.ErrNotFound) {
				return "", err
			}
			lastErr = err
			continue
		}
		if s.Status.Final() {
			return string(s.Status), nil
		}
	}
}

// startChildren runs the orchestrator and each participant as a child process of this
// binary with --role, and relayBin (the outbox-relay program), when not empty.
func startChildren(c *config, in *infra, relayBin string) (stop func(), err error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find this program to start the participants: %w", err)
	}
	var cmds []*exec.Cmd
	stop = func() {
		for _, cmd := range cmds {
			_ = cmd.Process.Signal(syscall.SIGTERM)
		}
		for _, cmd := range cmds {
			done := make(chan struct{})
			go func() { _ = cmd.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(15 * time.Second):
				_ = cmd.Process.Kill()
				<-done
			}
		}
	}
	start := func(name string, cmd *exec.Cmd) error {
		cmd.Stdout, cmd.Stderr = c.stderr, c.stderr
		// A child never outlives the demo, even when the demo is killed.
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			stop()
			return fmt.Errorf("start the %s process: %w", name, err)
		}
		cmds = append(cmds, cmd)
		return nil
	}
	for _, role := range append([]string{"orchestrator"}, demo.Roles...) {
		args := []string{"--role", role, "--database-url", in.dbURL, "--brokers", strings.Join(in.brokers, ","), "--schema", c.schema}
		if in.embedded {
			args = append(args, "--fast-groups")
		}
		if c.verbose {
			args = append(args, "--verbose")
		}
		if err := start(role, exec.Command(exe, args...)); err != nil {
			return nil, err
		}
	}
	if relayBin != "" {
		relay := exec.Command(relayBin)
		relay.Env = append(os.Environ(), "DATABASE_URL="+in.dbURL, "KAFKA_BROKERS="+strings.Join(in.brokers, ","),
			"SAGABOX_SCHEMA="+c.schema, "RELAY_POLL_INTERVAL=100ms", "LOG_LEVEL="+map[bool]string{true: "info", false: "warn"}[c.verbose])
		if err := start("outbox-relay", relay); err != nil {
			return nil, err
		}
	}
	return stop, nil
}

// findRelay returns the outbox-relay program: --relay-binary, else outbox-relay next
// to this program, else on $PATH.
func findRelay(c *config) (string, error) {
	if c.relayBinary != "" {
		return exec.LookPath(c.relayBinary)
	}
	if exe, err := os.Executable(); err == nil {
		if p, err := exec.LookPath(filepath.Join(filepath.Dir(exe), "outbox-relay")); err == nil {
			return p, nil
		}
	}
	p, err := exec.LookPath("outbox-relay")
	if err != nil {
		return "", errors.New("no outbox-relay program next to orderdemo or on $PATH (make build puts both in bin/; or pass --relay-binary)")
	}
	return p, nil
}

// orchestratorConfig is the demo orchestrator's configuration, in the driver or in a
// process of its own.
// orderSaga is the demo's saga, on the default topics; the driver starts orders with
// its typed Start.
var orderSaga = demo.OrderSaga(demo.Topics{})

func orchestratorConfig(c *config, in *infra, listeners ...sagastate.Listener) sagastate.Config {
	return sagastate.Config{
		Sagas: []sagastate.Definition{orderSaga}, Brokers: in.brokers, ReplyTopic: replyTopic,
		GroupID: "demo-orchestrator", Schema: c.schema, SweepInterval: 100 * time.Millisecond,
		Listeners: listeners, FeedInterval: 20 * time.Millisecond,
		Consumer: in.consumerConfig(c), Logger: c.log,
	}
}

// runRole runs one participant, or the orchestrator, until ctx ends (SIGTERM/SIGINT).
func runRole(ctx context.Context, c *config) error {
	in, err := startInfra(ctx, c, false, nil)
	if err != nil {
		return err
	}
	defer in.close()
	var r interface{ Run(context.Context) error }
	if c.role == "orchestrator" {
		r, err = sagastate.New(in.pool, orchestratorConfig(c, in))
	} else {
		r, err = in.svc.Participant(in.pool, c.role, demo.Topics{}, participants.Config{
			Brokers: in.brokers, Schema: c.schema, Consumer: in.consumerConfig(c), Logger: c.log,
		})
	}
	if err != nil {
		return err
	}
	what := c.role + " participant"
	if c.role == "orchestrator" {
		what = "orchestrator"
	}
	fmt.Fprintf(c.stderr, "orderdemo: %s running as pid %d\n", what, os.Getpid())
	return r.Run(ctx)
}

// writeSVG draws saga id's timeline into dir.
func writeSVG(ctx context.Context, orch *sagastate.Orchestrator, id uuid.UUID, dir, name string) (string, error) {
	s, err := orch.Get(ctx, id)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	path := filepath.Join(dir, name)
	fh, err := os.Create(path)
	if err != nil {
		return "", err
	}
	if err := timeline.FromSaga(s).SVG(fh); err != nil {
		fh.Close()
		return "", err
	}
	return path, fh.Close()
}

func declineText(k int) string {
	switch k {
	case 0:
		return "none declined"
	case 1:
		return "every order above 1000"
	}
	return fmt.Sprintf("every %s above 1000", ordinal(k))
}

func ordinal(k int) string {
	suffix := "th"
	switch {
	case k%100 >= 11 && k%100 <= 13:
	case k%10 == 1:
		suffix = "st"
	case k%10 == 2:
		suffix = "nd"
	case k%10 == 3:
		suffix = "rd"
	}
	return fmt.Sprintf("%d%s", k, suffix)
}

func dupText(dup bool) string {
	if dup {
		return ", every message delivered twice"
	}
	return ""
}
