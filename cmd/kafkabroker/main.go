package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/sagabox/sagabox/internal/buildinfo"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp), errors.Is(err, errVersion):
	default:
		fmt.Fprintf(os.Stderr, "kafkabroker: %s\nsee --help\n", strings.ReplaceAll(err.Error(), "\n", "\nkafkabroker: "))
		os.Exit(2)
	}
}

// errVersion means --version was given and the version printed: nothing else runs.
var errVersion = errors.New("version printed")

type options struct {
	listen, advertise string
	ports             []int
	partitions        int
	dataDir           string
	sync              bool
	noAutoCreate      bool
	minSession        time.Duration
	logLevel          kfake.LogLevel
}

// parse reads the flags; --help prints the usage and --version the version to stdout.
func parse(args []string, stdout io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("kafkabroker", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are returned, help goes to stdout
	fs.StringVar(&o.listen, "listen", "127.0.0.1", "address to listen on (0.0.0.0 in a container)")
	fs.StringVar(&o.advertise, "advertise", "", "host advertised to clients in metadata (default: the -listen address, or 127.0.0.1 when it is 0.0.0.0)")
	ports := fs.String("ports", "9092", "comma-separated ports, one broker each (0 picks a free port)")
	fs.IntVar(&o.partitions, "partitions", 10, "partitions of auto-created topics")
	fs.StringVar(&o.dataDir, "data-dir", os.Getenv("KAFKABROKER_DATA_DIR"), "persist the log, topics and offsets here so a restart keeps them; empty keeps them in memory only ($KAFKABROKER_DATA_DIR)")
	fs.BoolVar(&o.sync, "sync", false, "fsync every write (with -data-dir)")
	fs.BoolVar(&o.noAutoCreate, "no-auto-create-topics", false, "reject produce/metadata for unknown topics, like auto.create.topics.enable=false")
	fs.DurationVar(&o.minSession, "group-min-session-timeout", 6*time.Second, "smallest consumer-group session timeout accepted (Kafka's default is 6s)")
	level := fs.String("log-level", "warn", "none, error, warn, info or debug")
	version := fs.Bool("version", false, "print the version and exit")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `kafkabroker runs a Kafka-protocol broker (franz-go's kfake) for development and tests:
one broker per port, topics auto-created with -partitions partitions. It prints each
listen address on a line, then "kafkabroker ready"; SIGTERM or SIGINT stops it.
Not for production: lenient, single process, no replication.

Usage: kafkabroker [flags]

Flags take one dash or two (-ports or --ports).

`)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stdout)
			fs.Usage()
		}
		return o, err
	}
	if *version {
		fmt.Fprintln(stdout, buildinfo.Line("kafkabroker"))
		return o, errVersion
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q; every setting is a flag (see -h)", fs.Args())
	}
	var errs []error
	for p := range strings.SplitSeq(*ports, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(p))
		if err != nil || n < 0 || n > 65535 {
			errs = append(errs, fmt.Errorf("-ports: %q is not a port number (0-65535); give e.g. -ports 9092,9093", p))
			continue
		}
		o.ports = append(o.ports, n)
	}
	if o.partitions < 1 {
		errs = append(errs, fmt.Errorf("-partitions is %d; it must be at least 1", o.partitions))
	}
	if o.sync && o.dataDir == "" {
		errs = append(errs, errors.New("-sync needs -data-dir: without a data directory nothing is written to disk"))
	}
	if o.minSession <= 0 {
		errs = append(errs, fmt.Errorf("-group-min-session-timeout is %s; it must be positive", o.minSession))
	}
	if net.ParseIP(o.listen) == nil && o.listen != "localhost" {
		errs = append(errs, fmt.Errorf("-listen %q is not an IP address; use 127.0.0.1, 0.0.0.0 or an interface address", o.listen))
	}
	if o.advertise == "" {
		o.advertise = o.listen
		if ip := net.ParseIP(o.listen); ip != nil && ip.IsUnspecified() {
			o.advertise = "127.0.0.1"
		}
	}
	switch strings.ToLower(*level) {
	case "none":
		o.logLevel = kfake.LogLevelNone
	case "error":
		o.logLevel = kfake.LogLevelError
	case "warn":
		o.logLevel = kfake.LogLevelWarn
	case "info":
		o.logLevel = kfake.LogLevelInfo
	case "debug":
		o.logLevel = kfake.LogLevelDebug
	default:
		errs = append(errs, fmt.Errorf("-log-level %q is unknown; use none, error, warn, info or debug", *level))
	}
	return o, errors.Join(errs...)
}

// run serves until ctx ends, then closes the cluster, which flushes -data-dir.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o, err := parse(args, stdout)
	if err != nil {
		return err
	}
	opts := []kfake.Opt{
		kfake.NumBrokers(len(o.ports)),
		kfake.Ports(o.ports...),
		kfake.DefaultNumPartitions(o.partitions),
		kfake.GroupMinSessionTimeout(o.minSession),
		kfake.WithLogger(kfake.BasicLogger(stderr, o.logLevel)),
		kfake.ListenFn(advertisingListen(o.listen, o.advertise)),
	}
	if !o.noAutoCreate {
		opts = append(opts, kfake.AllowAutoTopicCreation())
	}
	if o.dataDir != "" {
		opts = append(opts, kfake.DataDir(o.dataDir))
	}
	if o.sync {
		opts = append(opts, kfake.SyncWrites())
	}
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		return fmt.Errorf("start broker on %s ports %v: %w", o.listen, o.ports, err)
	}
	// The addresses go to stdout, one a line, so scripts can read them; "ready" marks the end.
	for _, a := range c.ListenAddrs() {
		fmt.Fprintln(stdout, a)
	}
	fmt.Fprintln(stdout, "kafkabroker ready")
	<-ctx.Done()
	c.Close()
	fmt.Fprintln(stdout, "kafkabroker stopped")
	return nil
}

// advertisingListen binds each broker to listenHost but makes its listener report
// advertiseHost, because kfake advertises whatever its listener's Addr says.
func advertisingListen(listenHost, advertiseHost string) func(network, address string) (net.Listener, error) {
	return func(network, address string) (net.Listener, error) {
		_, port, err := net.SplitHostPort(address)
		if err != nil {
			return nil, err
		}
		ln, err := net.Listen(network, net.JoinHostPort(listenHost, port))
		if err != nil {
			return nil, err
		}
		_, bound, _ := net.SplitHostPort(ln.Addr().String()) // the real port when port was 0
		return &advertised{Listener: ln, addr: advertisedAddr(net.JoinHostPort(advertiseHost, bound))}, nil
	}
}

type advertised struct {
	net.Listener
	addr net.Addr
}

func (a *advertised) Addr() net.Addr { return a.addr }

type advertisedAddr string

func (a advertisedAddr) Network() string { return "tcp" }
func (a advertisedAddr) String() string  { return string(a) }
