package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/sagabox/sagabox/internal/kafkatest"
	"github.com/sagabox/sagabox/internal/testenv"
	"github.com/sagabox/sagabox/outbox"
)

const daemonEnv = "OUTBOX_RELAY_TEST_DAEMON"

func TestMain(m *testing.M) {
	if os.Getenv(daemonEnv) != "" { // run as the daemon, for the signal test
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
		code := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
		stop()
		os.Exit(code)
	}
	os.Exit(testenv.Run(m))
}

func TestHelpDocumentsEveryFlagAndVariable(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	if code := run(context.Background(), []string{"--help"}, func(k string) string {
		if k == "KAFKA_SASL_PASSWORD" || k == "DATABASE_URL" {
			return "s3cret"
		}
		return ""
	}, &out, io.Discard); code != 0 {
		t.Fatalf("--help exited %d", code)
	}
	help := out.String()
	for _, want := range []string{
		"-database-url", "$DATABASE_URL", "-brokers", "$KAFKA_BROKERS", "-metrics-addr", "$METRICS_ADDR",
		"-create-topics", "-schema", "-kafka-tls", "-kafka-tls-ca", "-kafka-tls-cert", "-kafka-tls-key",
		"-kafka-sasl-mechanism", "-kafka-sasl-username", "$KAFKA_SASL_PASSWORD", "-lease-ttl", "-batch-size", "SIGTERM",
	} {
		if !strings.Contains(help, want) {
			t.Errorf("--help does not mention %s", want)
		}
	}
	if strings.Contains(help, "s3cret") {
		t.Error("--help prints a secret taken from the environment")
	}
}

func TestBadConfigurationIsExplained(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		args []string
		env  map[string]string
		want []string
	}{
		{"NothingSet", nil, nil, []string{"DATABASE_URL", "KAFKA_BROKERS"}},
		{"BadEnvValue", []string{"--database-url=postgres://x", "--brokers=k:9092"}, map[string]string{"RELAY_BATCH_SIZE": "many"}, []string{"$RELAY_BATCH_SIZE", "not an integer"}},
		{"UnknownSASL", []string{"--database-url=postgres://x", "--brokers=k:9092", "--kafka-sasl-mechanism=GSSAPI", "--kafka-sasl-username=u"}, map[string]string{"KAFKA_SASL_PASSWORD": "p"}, []string{"GSSAPI", "SCRAM-SHA-512"}},
		{"HalfAClientCert", []string{"--database-url=postgres://x", "--brokers=k:9092", "--kafka-tls-cert=c.pem"}, nil, []string{"go together"}},
		{"StrayArgument", []string{"extra"}, nil, []string{"unexpected argument"}},
		{"BadCPUPriority", []string{"--database-url=postgres://x", "--brokers=k:9092"}, map[string]string{"RELAY_CPU_PRIORITY": "high"}, []string{`--cpu-priority "high"`, "background or normal"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			var stderr bytes.Buffer
			code := run(context.Background(), c.args, func(k string) string { return c.env[k] }, io.Discard, &stderr)
			if code != 2 {
				t.Fatalf("exit code %d, want 2; stderr:\n%s", code, stderr.String())
			}
			for _, w := range c.want {
				if !strings.Contains(stderr.String(), w) {
					t.Errorf("stderr does not mention %q:\n%s", w, stderr.String())
				}
			}
		})
	}
}

// TestDaemon runs the command as a process: it publishes, serves /healthz and
// /metrics, and on SIGTERM exits 0 having released its shards.
func TestDaemon(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.NewDB(t)
	k := testenv.NewKafka(t)
	topic := testenv.Topic("daemon") // not created: --create-topics does it
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()

	cmd := exec.Command(os.Args[0], "--create-topics", "--topic-partitions=2", "--relay-id=daemon-1", "--log-format=json")
	cmd.Env = append(os.Environ(), daemonEnv+"=1", "DATABASE_URL="+db.URL, "KAFKA_BROKERS="+strings.Join(k.Brokers, ","),
		"METRICS_ADDR="+addr, "RELAY_POLL_INTERVAL=50ms")
	var logs bytes.Buffer
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			<-exited
		}
	})

	get := func(path string) (int, string) { return httpGet(addr, path) }
	waitFor(t, 20*time.Second, "/healthz to answer 200", func() bool { code, _ := get("/healthz"); return code == 200 })

	if err := outbox.Enqueue(ctx, db.Pool, outbox.Message{Topic: topic, Key: "k", Payload: []byte("hello")}); err != nil {
		t.Fatal(err)
	}
	rd := kafka.NewReader(kafka.ReaderConfig{Brokers: k.Brokers, Topic: topic, Partition: partitionOf(t, k.Brokers, topic), MaxWait: 50 * time.Millisecond})
	defer rd.Close()
	readCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	m, err := rd.ReadMessage(readCtx)
	if err != nil || string(m.Value) != "hello" {
		t.Fatalf("read %q, %v; want the enqueued message\nlogs:\n%s", m.Value, err, logs.String())
	}
	waitFor(t, 10*time.Second, "/metrics to count the message", func() bool {
		_, body := get("/metrics")
		return strings.Contains(body, `sagabox_relay_published_total{topic="`+topic+`"} 1`)
	})

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("after SIGTERM: %v\nlogs:\n%s", err, logs.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("no exit within 20s of SIGTERM\nlogs:\n%s", logs.String())
	}
	var held int
	if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM "sagabox"."outbox_leases" WHERE "owner" IS NOT NULL`).Scan(&held); err != nil {
		t.Fatal(err)
	}
	if held != 0 {
		t.Fatalf("%d shards still leased after a graceful stop", held)
	}
}

// partitionOf waits for topic to exist (the daemon creates it) and returns the
// partition holding key "k": the only one with data, found by its end offset.
func partitionOf(t *testing.T, brokers []string, topic string) int {
	t.Helper()
	var found = -1
	waitFor(t, 30*time.Second, "the topic to be created and written", func() bool {
		conn, err := kafka.Dial("tcp", brokers[0])
		if err != nil {
			return false
		}
		defer conn.Close()
		parts, err := conn.ReadPartitions(topic)
		if err != nil || len(parts) == 0 {
			return false
		}
		for _, p := range parts {
			pc, err := kafka.DialLeader(context.Background(), "tcp", brokers[0], topic, p.ID)
			if err != nil {
				return false
			}
			last, err := pc.ReadLastOffset()
			pc.Close()
			if err == nil && last > 0 {
				found = p.ID
				return true
			}
		}
		return false
	})
	return found
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	kafkatest.Poll(t, timeout, cond, func() string { return what })
}

func TestVersionPrintsTheBuild(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	if code := run(context.Background(), []string{"--version"}, func(string) string { return "" }, &out, io.Discard); code != 0 {
		t.Fatalf("--version exited %d", code)
	}
	if !strings.HasPrefix(out.String(), "outbox-relay ") || !strings.Contains(out.String(), "go1.") {
		t.Fatalf("--version printed %q", out.String())
	}
}

// httpGet returns the status and body of GET http://addr/path (0 and the error
// when it cannot connect).
func httpGet(addr, path string) (int, string) {
	resp, err := http.Get("http://" + addr + path)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// --kafka-brokers was the relay's own name; every binary now says --brokers. The old
// name still sets the brokers, with a warning.
func TestDeprecatedKafkaBrokersFlagWarnsAndStillWorks(t *testing.T) {
	t.Parallel()
	var stderr bytes.Buffer
	// The half client certificate stops run before it connects anywhere.
	code := run(context.Background(), []string{"--database-url=postgres://x", "--kafka-brokers=k:9092", "--kafka-tls-cert=c.pem"},
		func(string) string { return "" }, io.Discard, &stderr)
	if code != 2 {
		t.Fatalf("exit code %d, want 2; stderr:\n%s", code, stderr.String())
	}
	if !strings.Contains(stderr.String(), "--kafka-brokers is deprecated") || !strings.Contains(stderr.String(), "use --brokers") {
		t.Errorf("no deprecation warning:\n%s", stderr.String())
	}
	if strings.Contains(stderr.String(), "no Kafka brokers") {
		t.Errorf("--kafka-brokers did not set the brokers:\n%s", stderr.String())
	}
}
