package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/sagabox/sagabox/internal/buildinfo"
	"github.com/sagabox/sagabox/internal/demo"
	"github.com/sagabox/sagabox/migrations"
)

// Errors orderdemo reports.
var (
	// errUsage means the command line was wrong; the reason has been printed.
	errUsage = errors.New("usage error")
	// errBroken means a saga did not finish or an invariant broke.
	errBroken = errors.New("demo failed its checks")
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr, os.Getenv)
	stop()
	os.Exit(code)
}

// config is the parsed command line.
type config struct {
	databaseURL  string
	brokers      []string
	schema       string
	flow         string
	orders       int
	declineEvery int
	concurrency  int
	json         bool
	role         string
	processes    bool
	duplicate    bool
	timeout      time.Duration
	timelines    bool
	verbose      bool
	svgDir       string
	fastGroups   bool
	runRelay     bool   // the driver runs the outbox relay itself
	runOrch      bool   // the driver runs the orchestrator itself
	relayBinary  string // --processes: the outbox-relay program

	stdout, stderr io.Writer
	log            *slog.Logger
}

var roles = append([]string{"all", "driver", "orchestrator"}, demo.Roles...)

// parseFlags reads the command line; after --help or --version it returns flag.ErrHelp.
func parseFlags(args []string, stdout, stderr io.Writer, getenv func(string) string) (*config, error) {
	c := &config{stderr: stderr}
	fs := flag.NewFlagSet("orderdemo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var brokers string
	fs.StringVar(&c.databaseURL, "database-url", getenv("DATABASE_URL"), "PostgreSQL URL. Defaults to $DATABASE_URL; when both are empty a throwaway PostgreSQL is started")
	fs.StringVar(&brokers, "brokers", getenv("KAFKA_BROKERS"), "comma-separated Kafka brokers. Defaults to $KAFKA_BROKERS; when both are empty an in-process broker (kfake) is started")
	schema := getenv("SAGABOX_SCHEMA")
	if schema == "" {
		schema = migrations.DefaultSchema
	}
	fs.StringVar(&c.schema, "schema", schema, "schema of sagabox's tables (the services' business tables have schemas of their own). Defaults to $SAGABOX_SCHEMA, else "+migrations.DefaultSchema)
	fs.StringVar(&c.flow, "flow", "order", "which demo: order (orchestrated saga) or transfer (choreography)")
	fs.IntVar(&c.orders, "orders", 50, "how many orders (or transfers) to run")
	fs.IntVar(&c.declineEvery, "decline-every", 5, "every Kth order is above 1000 and gets declined, so its saga compensates (every Kth transfer goes to a frozen account and is reversed); 0 for none")
	fs.IntVar(&c.concurrency, "concurrency", 8, "sagas (or transfers) in flight at once")
	fs.BoolVar(&c.json, "json", false, "print a machine-readable summary on stdout (progress goes to stderr)")
	fs.StringVar(&c.role, "role", "all", "what this process runs: all; driver (the orders, with the relay and the orchestrator unless --relay=false / --orchestrator=false); orchestrator (the saga orchestrator alone: reply consumer and sweeper); or one participant: "+strings.Join(demo.Roles, ", "))
	fs.BoolVar(&c.processes, "processes", false, "run the four participants, the orchestrator (--role orchestrator) and the relay (the outbox-relay program, see --relay-binary) as child processes; this one only drives the orders")
	fs.BoolVar(&c.runRelay, "relay", true, "the driver runs the outbox relay in its own process; false when outbox-relay runs apart")
	fs.BoolVar(&c.runOrch, "orchestrator", true, "the driver runs the orchestrator in its own process; false when orderdemo --role orchestrator runs apart (as many as you like)")
	fs.StringVar(&c.relayBinary, "relay-binary", "", "with --processes: the outbox-relay program to run as the relay. Defaults to outbox-relay next to this program, then on $PATH; without one the relay runs in this process")
	fs.BoolVar(&c.duplicate, "duplicate-delivery", false, "publish every message twice, to show that effects still happen exactly once")
	fs.DurationVar(&c.timeout, "timeout", 60*time.Second, "give up when the sagas have not all finished after this long")
	fs.BoolVar(&c.timelines, "timelines", true, "print the timeline of one completed and one compensated saga")
	fs.StringVar(&c.svgDir, "svg-dir", "", "also write those two timelines as SVG files into this directory")
	fs.BoolVar(&c.fastGroups, "fast-groups", false, "join consumer groups faster (short heartbeats, join backoff and fetch waits); set by itself for the in-process broker and passed on by --processes")
	fs.BoolVar(&c.verbose, "verbose", false, "log what the relay, orchestrator and participants do to stderr")
	version := fs.Bool("version", false, "print the version and exit")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "Usage: orderdemo [flags]")
		fmt.Fprintln(stderr, "\nRuns the demo order saga (or --flow transfer) end to end and checks the business invariants.")
		fmt.Fprintln(stderr, "\nFlags:")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if *version {
		fmt.Fprintln(stdout, buildinfo.Line("orderdemo"))
		return nil, flag.ErrHelp
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "orderdemo: unexpected argument %q (flags start with --)\n", fs.Arg(0))
		return nil, errUsage
	}
	for _, b := range strings.Split(brokers, ",") {
		if b = strings.TrimSpace(b); b != "" {
			c.brokers = append(c.brokers, b)
		}
	}
	var errs []error
	if c.flow != "order" && c.flow != "transfer" {
		errs = append(errs, fmt.Errorf("--flow is %q; want order or transfer", c.flow))
	}
	if c.orders < 1 {
		errs = append(errs, fmt.Errorf("--orders is %d; it must be at least 1", c.orders))
	}
	if c.declineEvery < 0 {
		errs = append(errs, fmt.Errorf("--decline-every is %d; use 0 (none) or a positive K", c.declineEvery))
	}
	if c.concurrency < 1 {
		errs = append(errs, fmt.Errorf("--concurrency is %d; it must be at least 1", c.concurrency))
	}
	if c.timeout <= 0 {
		errs = append(errs, fmt.Errorf("--timeout is %s; it must be positive", c.timeout))
	}
	if err := migrations.ValidateSchema(c.schema); err != nil {
		errs = append(errs, fmt.Errorf("--schema: %w", err))
	}
	if !slices.Contains(roles, c.role) {
		errs = append(errs, fmt.Errorf("--role is %q; want one of %s", c.role, strings.Join(roles, ", ")))
	}
	if c.role != "all" && c.role != "driver" && (c.databaseURL == "" || len(c.brokers) == 0) {
		errs = append(errs, fmt.Errorf("--role %s needs --database-url and --brokers: separate processes must share one database and one broker", c.role))
	}
	if (!c.runRelay || !c.runOrch) && c.role != "driver" {
		errs = append(errs, errors.New("--relay=false and --orchestrator=false are for --role driver (--processes sets them itself)"))
	}
	if c.processes && c.role != "all" {
		errs = append(errs, errors.New("--processes starts the participants itself; use it without --role"))
	}
	if c.flow == "transfer" && (c.processes || c.role != "all") {
		errs = append(errs, errors.New("--flow transfer runs in one process; --processes and --role are for the order flow"))
	}
	if err := errors.Join(errs...); err != nil {
		fmt.Fprintf(stderr, "orderdemo: %v\n(see orderdemo --help)\n", err)
		return nil, errUsage
	}
	return c, nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	// Child processes and progress goroutines write concurrently.
	stdout, stderr = &lockedWriter{w: stdout}, &lockedWriter{w: stderr}
	c, err := parseFlags(args, stdout, stderr, getenv)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		return 2
	}
	c.stdout = stdout
	c.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	if c.verbose {
		c.log = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	switch {
	case c.role != "all" && c.role != "driver":
		err = runRole(ctx, c)
	case c.flow == "transfer":
		err = runTransfers(ctx, c)
	default:
		err = runOrders(ctx, c)
	}
	if err != nil {
		if !errors.Is(err, errBroken) {
			fmt.Fprintf(stderr, "orderdemo: %v\n", err)
		}
		return 1
	}
	return 0
}

// progress is where progress lines go: stderr when stdout carries JSON.
func (c *config) progress() io.Writer {
	if c.json {
		return c.stderr
	}
	return c.stdout
}

// out is where the human summary goes; nothing when --json.
func (c *config) out() io.Writer {
	if c.json {
		return io.Discard
	}
	return c.stdout
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
