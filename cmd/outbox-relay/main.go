package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/segmentio/kafka-go/sasl"
	"github.com/segmentio/kafka-go/sasl/plain"
	"github.com/segmentio/kafka-go/sasl/scram"

	"github.com/sagabox/sagabox/health"
	"github.com/sagabox/sagabox/internal/buildinfo"
	"github.com/sagabox/sagabox/internal/cpuprio"
	"github.com/sagabox/sagabox/migrations"
	"github.com/sagabox/sagabox/outbox"
	"github.com/sagabox/sagabox/relay"
	"github.com/sagabox/sagabox/relay/kafkapub"
	"github.com/sagabox/sagabox/relay/relayprom"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}

// options are the parsed flags.
type options struct {
	databaseURL, brokers, schema, metricsAddr, relayID           string
	createTopics                                                 bool
	topicPartitions, replicationFactor                           int
	maxMessageBytes                                              int
	tls, tlsInsecure                                             bool
	tlsCA, tlsCert, tlsKey                                       string
	saslMechanism, saslUser, saslPassword                        string
	batchSize, maxBatchBytes, workers, maxPublishes, maxAttempts int
	pollInterval, leaseTTL, heartbeat, publishTimeout            time.Duration
	noNotify                                                     bool
	listen                                                       bool
	logLevel, logFormat, cpuPriority                             string
	version, deprecatedBrokersFlag                               bool
}

// flagSet declares every flag with its environment variable; a set variable
// replaces the default, a flag on the command line wins over both. Call
// applySecrets after parsing: it reads the secret variables.
func flagSet(o *options, getenv func(string) string) (*flag.FlagSet, *[]error, func()) {
	fs := flag.NewFlagSet("outbox-relay", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // run prints help and errors itself
	var envErrs []error
	// Per call, not a package variable: two runs at once (parallel tests) must not
	// share them.
	var secrets []func()
	applySecrets := func() {
		for _, apply := range secrets {
			apply()
		}
	}
	str := func(p *string, name, env, def, usage string) {
		if v := getenv(env); v != "" {
			def = v
		}
		fs.StringVar(p, name, def, usage+" ($"+env+")")
	}
	// Secrets are read from the environment after parsing, so --help never prints them.
	secret := func(p *string, name, env, usage string) {
		fs.StringVar(p, name, "", usage+" ($"+env+")")
		secrets = append(secrets, func() {
			if *p == "" {
				*p = getenv(env)
			}
		})
	}
	integer := func(p *int, name, env string, def int, usage string) {
		if v := getenv(env); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil {
				envErrs = append(envErrs, fmt.Errorf("$%s=%q is not an integer", env, v))
			}
			def = n
		}
		fs.IntVar(p, name, def, usage+" ($"+env+")")
	}
	boolean := func(p *bool, name, env string, usage string) {
		def := false
		if v := getenv(env); v != "" {
			b, err := strconv.ParseBool(v)
			if err != nil {
				envErrs = append(envErrs, fmt.Errorf("$%s=%q is not a boolean (true/false)", env, v))
			}
			def = b
		}
		fs.BoolVar(p, name, def, usage+" ($"+env+")")
	}
	duration := func(p *time.Duration, name, env string, def time.Duration, usage string) {
		if v := getenv(env); v != "" {
			d, err := time.ParseDuration(v)
			if err != nil {
				envErrs = append(envErrs, fmt.Errorf("$%s=%q is not a duration (e.g. 500ms, 10s)", env, v))
			}
			def = d
		}
		fs.DurationVar(p, name, def, usage+" ($"+env+")")
	}
	secret(&o.databaseURL, "database-url", "DATABASE_URL", "PostgreSQL URL of the database holding the outbox (required)")
	str(&o.brokers, "brokers", "KAFKA_BROKERS", "", "comma-separated Kafka bootstrap brokers, host:port (required)")
	// The old name keeps working for a while; run warns when it is used.
	fs.Func("kafka-brokers", "deprecated: the old name of --brokers", func(v string) error {
		o.brokers, o.deprecatedBrokersFlag = v, true
		return nil
	})
	str(&o.schema, "schema", "SAGABOX_SCHEMA", migrations.DefaultSchema, "schema holding the outbox tables")
	str(&o.metricsAddr, "metrics-addr", "METRICS_ADDR", "", "address serving /healthz, /readyz and /metrics, e.g. :9090; empty disables it")
	str(&o.relayID, "relay-id", "RELAY_ID", "", "unique name of this relay in the lease table (default <host>-<pid>-<random>)")
	boolean(&o.createTopics, "create-topics", "KAFKA_CREATE_TOPICS", "create missing topics instead of failing their messages")
	integer(&o.topicPartitions, "topic-partitions", "KAFKA_TOPIC_PARTITIONS", -1, "partitions of created topics; -1 = broker default")
	integer(&o.replicationFactor, "replication-factor", "KAFKA_REPLICATION_FACTOR", -1, "replication factor of created topics; -1 = broker default")
	integer(&o.maxMessageBytes, "max-message-bytes", "KAFKA_MAX_MESSAGE_BYTES", outbox.DefaultMaxMessageBytes, "refuse larger messages before sending; match the broker's message.max.bytes")
	boolean(&o.tls, "kafka-tls", "KAFKA_TLS", "connect to Kafka over TLS")
	str(&o.tlsCA, "kafka-tls-ca", "KAFKA_TLS_CA_FILE", "", "PEM file of CA certificates to trust (default: system roots)")
	str(&o.tlsCert, "kafka-tls-cert", "KAFKA_TLS_CERT_FILE", "", "PEM client certificate for mutual TLS")
	str(&o.tlsKey, "kafka-tls-key", "KAFKA_TLS_KEY_FILE", "", "PEM client key for mutual TLS")
	boolean(&o.tlsInsecure, "kafka-tls-insecure-skip-verify", "KAFKA_TLS_INSECURE_SKIP_VERIFY", "do not verify the brokers' certificates (testing only)")
	str(&o.saslMechanism, "kafka-sasl-mechanism", "KAFKA_SASL_MECHANISM", "", "SASL mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512; empty = none")
	str(&o.saslUser, "kafka-sasl-username", "KAFKA_SASL_USERNAME", "", "SASL user name")
	secret(&o.saslPassword, "kafka-sasl-password", "KAFKA_SASL_PASSWORD", "SASL password (prefer the environment variable)")
	integer(&o.batchSize, "batch-size", "RELAY_BATCH_SIZE", relay.BatchSizeDefault, "rows claimed, published and settled per batch")
	integer(&o.maxBatchBytes, "max-batch-bytes", "RELAY_MAX_BATCH_BYTES", relay.MaxBatchBytesDefault, "payload bytes a batch stops at (bounds memory with large messages)")
	integer(&o.workers, "workers", "RELAY_WORKERS", relay.WorkersDefault, "parallel publish loops; each serves its own shards, so per-key order holds")
	integer(&o.maxPublishes, "max-publishes", "RELAY_MAX_PUBLISHES", relay.MaxPublishesDefault, "batches one publish loop has under way at once, on disjoint keys (1: one after another)")
	integer(&o.maxAttempts, "max-attempts", "RELAY_MAX_ATTEMPTS", relay.MaxAttemptsDefault, "failed publishes of a message before it is dead-lettered")
	duration(&o.pollInterval, "poll-interval", "RELAY_POLL_INTERVAL", relay.PollIntervalDefault, "polling interval, the fallback for LISTEN/NOTIFY")
	duration(&o.leaseTTL, "lease-ttl", "RELAY_LEASE_TTL", relay.LeaseTTLDefault, "shard lease lifetime: a dead relay's shards move after this plus one heartbeat")
	duration(&o.heartbeat, "heartbeat", "RELAY_HEARTBEAT", relay.HeartbeatIntervalDefault, "lease renewal and rebalancing interval")
	duration(&o.publishTimeout, "publish-timeout", "RELAY_PUBLISH_TIMEOUT", relay.PublishTimeoutDefault, "bound on one batch's publish; must be below lease-ttl minus heartbeat")
	str(&o.cpuPriority, "cpu-priority", "RELAY_CPU_PRIORITY", "background", "background: nice 10 and SCHED_BATCH on Linux, so a relay on PostgreSQL's cores yields them to the producers; normal: leave it")
	boolean(&o.listen, "listen", "RELAY_LISTEN", "LISTEN for the NOTIFY trigger's wake-ups instead of probing (enable the trigger too; it serialises producers' commits: see relay's doc)")
	boolean(&o.noNotify, "no-notify", "RELAY_NO_NOTIFY", "deprecated: the relay probes unless --listen is given")
	str(&o.logLevel, "log-level", "LOG_LEVEL", "info", "debug, info, warn or error")
	str(&o.logFormat, "log-format", "LOG_FORMAT", "text", "text or json")
	fs.BoolVar(&o.version, "version", false, "print the version and exit")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `outbox-relay publishes committed outbox rows from PostgreSQL to Kafka (acks=all),
per key in order, at least once. Run several against one database to share the work;
SIGTERM or SIGINT stops it after the batch in flight and hands its shards over.

Usage: outbox-relay [flags]

Every flag can also be set by the environment variable shown; a flag wins.

`)
		fs.PrintDefaults()
	}
	return fs, &envErrs, applySecrets
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	var o options
	fs, envErrs, applySecrets := flagSet(&o, getenv)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stdout)
			fs.Usage()
			return 0
		}
		fmt.Fprintf(stderr, "outbox-relay: %v\nsee --help\n", err)
		return 2
	}
	if o.version {
		fmt.Fprintln(stdout, buildinfo.Line("outbox-relay"))
		return 0
	}
	if o.noNotify {
		fmt.Fprintln(stderr, "outbox-relay: warning: --no-notify (RELAY_NO_NOTIFY) is deprecated: the relay no longer listens unless --listen is given")
	}
	if o.deprecatedBrokersFlag {
		fmt.Fprintln(stderr, "outbox-relay: warning: --kafka-brokers is deprecated and will be removed; use --brokers (same meaning, also $KAFKA_BROKERS)")
	}
	applySecrets()
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "outbox-relay: unexpected argument %q; see --help\n", fs.Arg(0))
		return 2
	}
	log, err := newLogger(o.logLevel, o.logFormat, stderr)
	errs := append(*envErrs, err)
	if o.databaseURL == "" {
		errs = append(errs, errors.New("no database: set --database-url or DATABASE_URL"))
	}
	pubCfg, err := o.publisherConfig()
	errs = append(errs, err)
	if o.cpuPriority != "background" && o.cpuPriority != "normal" {
		errs = append(errs, fmt.Errorf("--cpu-priority %q: use background or normal", o.cpuPriority))
	}
	if err := errors.Join(errs...); err != nil {
		fmt.Fprintf(stderr, "outbox-relay: %v\nsee --help\n", strings.ReplaceAll(err.Error(), "\n", "\noutbox-relay: "))
		return 2
	}
	pubCfg.Logger = log
	if o.cpuPriority == "background" {
		// BenchmarkRelayWakeup, 2,000 msgs/s from 16 producers on the relay's two
		// cores, the relay in PostgreSQL's session, eight interleaved pairs on a busy
		// machine: the producers' tx p50 1.4-3.2x their baseline against 2.3-5.0x at
		// the normal priority (relay/doc.go, Wake-ups, has the rest).
		if err := cpuprio.Background(); err != nil {
			log.Warn("outbox-relay: could not lower the CPU priority of every thread; some may run at the normal one (--cpu-priority=normal silences this)", "err", err)
		}
	}
	if err := serve(ctx, o, pubCfg, log); err != nil {
		var se *startError
		if errors.As(err, &se) {
			fmt.Fprintf(stderr, "outbox-relay: %v\n", se)
			return 1
		}
		log.Error("outbox-relay: stopped", "err", err)
		return 1
	}
	return 0
}

func newLogger(level, format string, w io.Writer) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: use debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: use text or json", format)
}

func (o *options) publisherConfig() (kafkapub.Config, error) {
	cfg := kafkapub.Config{MaxMessageBytes: o.maxMessageBytes, CreateTopics: o.createTopics}
	if o.publishTimeout > kafkapub.WriteTimeoutDefault {
		// kafka-go must not time out and resend a produce request the relay still waits for.
		cfg.WriteTimeout = o.publishTimeout
	}
	if o.createTopics {
		cfg.TopicPartitions, cfg.ReplicationFactor = o.topicPartitions, o.replicationFactor
	}
	var errs []error
	for _, b := range strings.Split(o.brokers, ",") {
		if b = strings.TrimSpace(b); b != "" {
			cfg.Brokers = append(cfg.Brokers, b)
		}
	}
	if len(cfg.Brokers) == 0 {
		errs = append(errs, errors.New("no Kafka brokers: set --brokers or KAFKA_BROKERS (host:port,...)"))
	}
	if o.tls || o.tlsCA != "" || o.tlsCert != "" || o.tlsInsecure {
		tc, err := o.tlsConfig()
		errs = append(errs, err)
		cfg.TLS = tc
	}
	mech, err := o.sasl()
	errs = append(errs, err)
	cfg.SASL = mech
	return cfg, errors.Join(errs...)
}

func (o *options) tlsConfig() (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: o.tlsInsecure} //nolint:gosec // opt-in, documented as testing only
	if o.tlsCA != "" {
		pem, err := os.ReadFile(o.tlsCA)
		if err != nil {
			return nil, fmt.Errorf("--kafka-tls-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--kafka-tls-ca %s: no PEM certificate found", o.tlsCA)
		}
		tc.RootCAs = pool
	}
	if (o.tlsCert == "") != (o.tlsKey == "") {
		return nil, errors.New("--kafka-tls-cert and --kafka-tls-key go together: give both or neither")
	}
	if o.tlsCert != "" {
		cert, err := tls.LoadX509KeyPair(o.tlsCert, o.tlsKey)
		if err != nil {
			return nil, fmt.Errorf("--kafka-tls-cert/--kafka-tls-key: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

func (o *options) sasl() (sasl.Mechanism, error) {
	m := strings.ToUpper(o.saslMechanism)
	if m == "" {
		if o.saslUser != "" {
			return nil, errors.New("--kafka-sasl-username given without --kafka-sasl-mechanism")
		}
		return nil, nil
	}
	if o.saslUser == "" || o.saslPassword == "" {
		return nil, fmt.Errorf("SASL %s needs --kafka-sasl-username and KAFKA_SASL_PASSWORD", m)
	}
	switch m {
	case "PLAIN":
		return plain.Mechanism{Username: o.saslUser, Password: o.saslPassword}, nil
	case "SCRAM-SHA-256":
		return scram.Mechanism(scram.SHA256, o.saslUser, o.saslPassword)
	case "SCRAM-SHA-512":
		return scram.Mechanism(scram.SHA512, o.saslUser, o.saslPassword)
	}
	return nil, fmt.Errorf("--kafka-sasl-mechanism %q: use PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512", o.saslMechanism)
}

// serve runs the relay (and the metrics server) until ctx ends.
func serve(ctx context.Context, o options, pubCfg kafkapub.Config, log *slog.Logger) error {
	poolCfg, err := pgxpool.ParseConfig(o.databaseURL)
	if err != nil {
		return &startError{fmt.Errorf("--database-url: %w", err)}
	}
	cfg := relay.Config{
		Schema: o.schema, ID: o.relayID, BatchSize: o.batchSize, MaxBatchBytes: o.maxBatchBytes, Workers: o.workers, MaxPublishes: o.maxPublishes, MaxAttempts: o.maxAttempts,
		PollInterval: o.pollInterval, LeaseTTL: o.leaseTTL, HeartbeatInterval: o.heartbeat,
		PublishTimeout: o.publishTimeout, Listen: o.listen && !o.noNotify, Logger: log,
	}
	if want := cfg.PoolConns() + 1; !strings.Contains(o.databaseURL, "pool_max_conns") && poolCfg.MaxConns < want {
		poolCfg.MaxConns = want // and one for the backlog gauge
	}
	pool, err := pgxpool.NewWithConfig(ctx, poolCfg)
	if err != nil {
		return &startError{fmt.Errorf("--database-url: %w", err)}
	}
	defer pool.Close()
	pub, err := kafkapub.New(pubCfg)
	if err != nil {
		return err
	}
	defer pub.Close()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics, err := relayprom.New(reg)
	if err != nil {
		return err
	}
	backlog, err := relayprom.Outbox(pool, o.schema)
	if err != nil {
		return err
	}
	reg.MustRegister(backlog, relayprom.BuildInfo())
	cfg.Hooks = metrics.Hooks()
	r, err := relay.New(pool, pub, cfg)
	if err != nil {
		return err
	}

	st := &startup{}
	start := func(ctx context.Context) error {
		if err := awaitDatabase(ctx, pool, o.schema, st, log); err != nil || ctx.Err() != nil {
			return err
		}
		return r.Run(ctx)
	}
	if o.metricsAddr == "" {
		return start(ctx)
	}
	ln, err := net.Listen("tcp", o.metricsAddr)
	if err != nil {
		return fmt.Errorf("--metrics-addr %s: %w", o.metricsAddr, err)
	}
	// Liveness covers the start-up (database not ready yet), the relay's loops and
	// database, and the broker.
	h := health.Handler(health.Config{
		Live: []health.Check{
			{Name: "start", Func: health.Func(st.check)},
			{Name: "relay", Func: health.Func(r.Health)},
			{Name: "broker", Func: pub.Health},
		},
		Ready:   []health.Check{health.Ping(pool)},
		Metrics: reg,
	})
	srvCtx, stopSrv := context.WithCancel(context.WithoutCancel(ctx))
	srvDone := make(chan error, 1)
	go func() { srvDone <- health.ServeListener(srvCtx, ln, h, log) }()
	runErr := start(ctx)
	stopSrv()
	return errors.Join(runErr, <-srvDone)
}
