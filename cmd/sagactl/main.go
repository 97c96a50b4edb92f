package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/term"

	"github.com/sagabox/sagabox/internal/buildinfo"
	"github.com/sagabox/sagabox/migrations"
)

// Errors sagactl reports. main turns them into exit codes: errUsage → 2, others → 1.
var (
	// errUsage means the command line was wrong; the usage text has been printed.
	errUsage = errors.New("usage error")
	// errNoDatabase means neither --database-url nor DATABASE_URL was given.
	errNoDatabase = errors.New("no database: pass --database-url or set DATABASE_URL (e.g. postgres://user:pass@localhost:5432/db)")
	// errUnreachable means the database did not answer.
	errUnreachable = errors.New("database unreachable")
	// errRefused means the database answered and refused the connection (password, role,
	// database name): retrying does not help.
	errRefused = errors.New("database refused the connection")
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	a := &app{stdout: os.Stdout, stderr: os.Stderr, getenv: os.Getenv,
		stdin: os.Stdin, interactive: term.IsTerminal(int(os.Stdin.Fd()))}
	code := a.run(ctx, os.Args[1:])
	stop()
	os.Exit(code)
}

// app is what every subcommand receives: where to print and how to read the environment.
type app struct {
	stdout, stderr io.Writer
	getenv         func(string) string
	// stdin answers confirmation questions when interactive (a terminal); otherwise
	// destructive commands need --yes.
	stdin       io.Reader
	interactive bool
}

// command is one subcommand; sub-subcommands (migrate up) are commands of their own
// with a space in the name.
type command struct {
	name    string
	args    string // positional arguments for the usage line
	summary string
	run     func(ctx context.Context, a *app, o *opts, pos []string) error
	// flags adds the subcommand's own flags.
	flags func(fs *flag.FlagSet, o *opts)
	// npos is the number of positional arguments required; -1 means any.
	npos int
	// noDB marks commands that need no database.
	noDB bool
}

// opts holds every flag any subcommand may use; each subcommand registers only its own.
type opts struct {
	databaseURL string
	schema      string
	json        bool
	timeout     time.Duration

	// saga list, stats
	sagaType  string
	status    string
	olderThan time.Duration
	stuckFor  time.Duration
	since     time.Duration
	limit     int
	// saga show
	svg  string
	html string
	// saga retry, abort
	replyTopic string
	reason     string
	// outbox retry
	all bool
	// destructive commands (migrate down, outbox retry --all): see destructive and confirm
	yes, dryRun bool
	// console, inbox list/replay (console.go, inbox.go)
	ops opsOpts
}

var commands []*command

func register(c *command) { commands = append(commands, c) }

// run runs sagactl without a terminal: destructive commands need --yes.
func run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	return (&app{stdout: stdout, stderr: stderr, getenv: getenv}).run(ctx, args)
}

func (a *app) run(ctx context.Context, args []string) int {
	stderr := a.stderr
	err := a.dispatch(ctx, args)
	switch {
	case err == nil:
		return 0
	case errors.Is(err, errUsage):
		return 2
	case errors.Is(err, flag.ErrHelp):
		return 0
	default:
		fmt.Fprintf(stderr, "sagactl: %v\n", err)
		return 1
	}
}

func (a *app) usage() {
	w := a.stderr
	fmt.Fprintln(w, "Usage: sagactl <command> [flags]")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Commands:")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	sorted := append([]*command(nil), commands...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].name < sorted[j].name })
	for _, c := range sorted {
		fmt.Fprintf(tw, "  %s %s\t%s\n", c.name, c.args, c.summary)
	}
	tw.Flush()
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Every command takes --database-url (or DATABASE_URL), --schema (or SAGABOX_SCHEMA), --json and --help.")
	fmt.Fprintln(w, "sagactl --version prints the version.")
}

func (a *app) dispatch(ctx context.Context, args []string) error {
	if len(args) > 0 && (args[0] == "--version" || args[0] == "-version" || args[0] == "version") {
		fmt.Fprintln(a.stdout, buildinfo.Line("sagactl"))
		return nil
	}
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		a.usage()
		if len(args) == 0 {
			return errUsage
		}
		return nil
	}
	// The longest command name made of the leading words wins: "saga show" before "saga".
	var cmd *command
	var rest []string
	for _, c := range commands {
		words := strings.Fields(c.name)
		if len(words) > len(args) {
			continue
		}
		match := true
		for i, w := range words {
			if args[i] != w {
				match = false
				break
			}
		}
		if match && (cmd == nil || len(words) > len(strings.Fields(cmd.name))) {
			cmd, rest = c, args[len(words):]
		}
	}
	if cmd == nil {
		// "sagactl saga" alone: list the saga commands.
		var group []string
		for _, c := range commands {
			if strings.HasPrefix(c.name, args[0]+" ") {
				group = append(group, c.name)
			}
		}
		if len(group) > 0 && (len(args) == 1 || strings.HasPrefix(args[1], "-")) {
			sort.Strings(group)
			fmt.Fprintf(a.stderr, "sagactl %s: choose one of: %s\n", args[0], strings.Join(group, ", "))
			return errUsage
		}
		fmt.Fprintf(a.stderr, "sagactl: unknown command %q\n\n", strings.Join(args[:min(2, len(args))], " "))
		a.usage()
		return errUsage
	}
	return a.runCommand(ctx, cmd, rest)
}

func (a *app) runCommand(ctx context.Context, c *command, args []string) error {
	o := &opts{}
	fs := flag.NewFlagSet("sagactl "+c.name, flag.ContinueOnError)
	fs.SetOutput(a.stderr)
	if !c.noDB {
		fs.StringVar(&o.databaseURL, "database-url", "", "PostgreSQL URL. Defaults to $DATABASE_URL; prefer the variable, a password in a flag shows in ps")
		schema := a.getenv("SAGABOX_SCHEMA")
		if schema == "" {
			schema = migrations.DefaultSchema
		}
		fs.StringVar(&o.schema, "schema", schema, "schema holding sagabox's tables ($SAGABOX_SCHEMA)")
		fs.DurationVar(&o.timeout, "timeout", 10*time.Second, "how long to wait for the database to answer")
	}
	fs.BoolVar(&o.json, "json", false, "print JSON instead of a table")
	if c.flags != nil {
		c.flags(fs, o)
	}
	fs.Usage = func() {
		fmt.Fprintf(a.stderr, "Usage: sagactl %s %s[flags]\n\n%s\n\nFlags:\n", c.name, withSpace(c.args), c.summary)
		fs.PrintDefaults()
	}
	// Flags may come before or after positional arguments: "saga show ID --svg f".
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return flag.ErrHelp
			}
			return errUsage
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if c.npos >= 0 && len(pos) != c.npos {
		if len(pos) < c.npos {
			fmt.Fprintf(a.stderr, "sagactl %s: missing argument %s\n", c.name, c.args)
		} else {
			fmt.Fprintf(a.stderr, "sagactl %s: unexpected argument(s) %s\n", c.name, strings.Join(pos[c.npos:], " "))
		}
		fs.Usage()
		return errUsage
	}
	if !c.noDB {
		if o.databaseURL != "" && passwordInURL(o.databaseURL) {
			fmt.Fprintln(a.stderr, "sagactl: warning: --database-url carries a password, which every user of this machine can read in ps; set DATABASE_URL instead (or PGPASSWORD / ~/.pgpass)")
		}
		if o.databaseURL == "" {
			o.databaseURL = a.getenv("DATABASE_URL")
		}
		if o.databaseURL == "" {
			return errNoDatabase
		}
		if err := migrations.ValidateSchema(o.schema); err != nil {
			return err
		}
	}
	return c.run(ctx, a, o, pos)
}

// errNotConfirmed means a destructive command was neither confirmed nor given --yes.
var errNotConfirmed = errors.New("not confirmed")

// destructive adds --yes and --dry-run to a command that changes or loses state.
func destructive(fs *flag.FlagSet, o *opts) {
	fs.BoolVar(&o.yes, "yes", false, "do it without asking (needed when stdin is not a terminal)")
	fs.BoolVar(&o.dryRun, "dry-run", false, "print what would be done and change nothing")
}

// confirm asks before what (e.g. "roll back migration 3 in schema sagabox"): --yes skips
// the question, a terminal on stdin is asked, anything else is refused.
func (a *app) confirm(o *opts, what string) error {
	if o.yes {
		return nil
	}
	if !a.interactive || a.stdin == nil {
		return fmt.Errorf("%w: this would %s; pass --yes to do it (or --dry-run to see what it would do)", errNotConfirmed, what)
	}
	fmt.Fprintf(a.stderr, "This will %s. Type yes to go on: ", what)
	answer, _ := bufio.NewReader(a.stdin).ReadString('\n')
	if strings.TrimSpace(answer) != "yes" {
		return fmt.Errorf("%w: nothing done", errNotConfirmed)
	}
	return nil
}

// passwordInURL reports whether a database URL or key=value string names a password.
func passwordInURL(raw string) bool {
	if u, err := url.Parse(raw); err == nil && u.Scheme != "" {
		_, set := u.User.Password()
		return set || u.Query().Has("password")
	}
	return strings.Contains(raw, "password=")
}

func withSpace(s string) string {
	if s == "" {
		return ""
	}
	return s + " "
}

// connect opens a pool and checks the database answers within o.timeout, so an
// unreachable server is one clear error instead of a hang.
func connect(ctx context.Context, o *opts) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(o.databaseURL)
	if err != nil {
		return nil, fmt.Errorf("database URL is not valid (%v); want e.g. postgres://user:pass@localhost:5432/db", err)
	}
	cfg.MaxConns = 4
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errUnreachable, err)
	}
	if err := ping(ctx, o, func(ctx context.Context) error { return pool.Ping(ctx) }); err != nil {
		pool.Close()
		return nil, err
	}
	return pool, nil
}

func ping(ctx context.Context, o *opts, f func(context.Context) error) error {
	pctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	err := f(pctx)
	if err == nil {
		return nil
	}
	where := redact(o.databaseURL)
	// PostgreSQL answered and refused: say what it said, not that it was silent.
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch {
		case pgErr.Code == "28P01":
			return fmt.Errorf("%w: %s refused the password (SQLSTATE 28P01: %s); check the password in DATABASE_URL", errRefused, where, pgErr.Message)
		case strings.HasPrefix(pgErr.Code, "28"):
			return fmt.Errorf("%w: %s refused the login (SQLSTATE %s: %s); check the user in DATABASE_URL and pg_hba.conf", errRefused, where, pgErr.Code, pgErr.Message)
		case pgErr.Code == "3D000":
			return fmt.Errorf("%w: %s (SQLSTATE 3D000); check the database name in DATABASE_URL", errRefused, pgErr.Message)
		}
		return fmt.Errorf("%w: %s refused the connection: %v", errRefused, where, err)
	}
	if pctx.Err() != nil && ctx.Err() == nil {
		return fmt.Errorf("%w: %s did not answer within %s (--timeout): %v; check the host and port in DATABASE_URL and that PostgreSQL is running",
			errUnreachable, where, o.timeout, err)
	}
	return fmt.Errorf("%w: cannot connect to %s: %v; check the host and port in DATABASE_URL and that PostgreSQL is running",
		errUnreachable, where, err)
}

// checkReachable connects once with pgx so commands that do not use a pool fail fast too.
func checkReachable(ctx context.Context, o *opts) error {
	cfg, err := pgx.ParseConfig(o.databaseURL)
	if err != nil {
		return fmt.Errorf("database URL is not valid (%v); want e.g. postgres://user:pass@localhost:5432/db", err)
	}
	return ping(ctx, o, func(ctx context.Context) error {
		conn, err := pgx.ConnectConfig(ctx, cfg)
		if err != nil {
			return err
		}
		return conn.Close(ctx)
	})
}

func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return "the database"
	}
	return u.Redacted()
}

func (a *app) printJSON(v any) error {
	enc := json.NewEncoder(a.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// table prints rows under a header, aligned.
func (a *app) table(header []string, rows [][]string) {
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	tw.Flush()
}
