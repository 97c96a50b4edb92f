package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"go.uber.org/goleak"

	"github.com/sagabox/sagabox/internal/testenv"
)

func TestMain(m *testing.M) {
	// --processes re-executes this binary with --role: play the participant.
	if len(os.Args) > 1 && os.Args[1] == "--role" {
		main()
	}
	code := testenv.Run(m)
	if code == 0 {
		if err := goleak.Find(goleak.IgnoreTopFunction("github.com/jackc/pgx/v5/pgxpool.(*Pool).backgroundHealthCheck")); err != nil {
			fmt.Fprintln(os.Stderr, err)
			code = 1
		}
	}
	os.Exit(code)
}

type result struct {
	code           int
	stdout, stderr string
}

func orderdemo(t *testing.T, args ...string) result {
	t.Helper()
	var out, errOut bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	code := run(ctx, args, &out, &errOut, func(string) string { return "" })
	return result{code, out.String(), errOut.String()}
}

// env is a database and broker of one test's own.
func env(t *testing.T) (*testenv.DB, []string) {
	t.Helper()
	return testenv.NewDB(t), testenv.NewKafka(t).Brokers
}

func infraArgs(db *testenv.DB, brokers []string) []string {
	// A generous --timeout: under -race on a loaded machine a saga can take many seconds.
	return []string{"--database-url", db.URL, "--brokers", strings.Join(brokers, ","), "--fast-groups", "--timeout", "150s"}
}

func decode(t *testing.T, r result) summary {
	t.Helper()
	if r.code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	var s summary
	if err := json.Unmarshal([]byte(r.stdout), &s); err != nil {
		t.Fatalf("--json output is not JSON: %v\n%s", err, r.stdout)
	}
	if !s.OK {
		t.Fatalf("summary not ok: %+v", s.Invariants)
	}
	for _, inv := range s.Invariants {
		if !inv.OK {
			t.Fatalf("invariant %s: %s", inv.Name, inv.Detail)
		}
	}
	return s
}

func count(t *testing.T, db *testenv.DB, sql string, args ...any) int {
	t.Helper()
	var n int
	if err := db.Pool.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// records counts the records in topic, duplicates included.
func records(t *testing.T, brokers []string, topic string) int {
	t.Helper()
	transport := &kafka.Transport{}
	defer transport.CloseIdleConnections()
	client := &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 10 * time.Second, Transport: transport}
	meta, err := client.Metadata(context.Background(), &kafka.MetadataRequest{Topics: []string{topic}})
	if err != nil || len(meta.Topics) != 1 {
		t.Fatalf("metadata of %s: %v", topic, err)
	}
	var reqs []kafka.OffsetRequest
	for _, p := range meta.Topics[0].Partitions {
		reqs = append(reqs, kafka.FirstOffsetOf(p.ID), kafka.LastOffsetOf(p.ID))
	}
	resp, err := client.ListOffsets(context.Background(), &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: reqs}})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, p := range resp.Topics[topic] {
		if p.Error != nil {
			t.Fatal(p.Error)
		}
		n += int(p.LastOffset - p.FirstOffset)
	}
	return n
}

func TestOrderFlow(t *testing.T) {
	t.Parallel()

	t.Run("DuplicateDelivery", func(t *testing.T) {
		t.Parallel()
		db, brokers := env(t)
		n, k := size(20), 4
		r := orderdemo(t, append(infraArgs(db, brokers),
			"--orders", fmt.Sprint(n), "--decline-every", fmt.Sprint(k), "--concurrency", "10", "--json", "--duplicate-delivery")...)
		s := decode(t, r)
		declined := n / k
		ok := n - declined
		if s.Totals["completed"] != ok || s.Totals["compensated"] != declined || len(s.Sagas) != n || !s.DuplicateDelivery {
			t.Fatalf("totals %v over %d sagas; want %d completed, %d compensated", s.Totals, len(s.Sagas), ok, declined)
		}
		for _, r := range s.Sagas {
			declined := r.Order%k == 0
			if declined != (r.Amount > 1000) || r.Status != r.Expected || r.TTCMillis <= 0 {
				t.Fatalf("saga %+v", r)
			}
		}
		if s.TimeToConsistency.P50 <= 0 || s.TimeToConsistency.P99 < s.TimeToConsistency.P50 || s.ThroughputPerS <= 0 {
			t.Fatalf("figures %+v, %.1f/s", s.TimeToConsistency, s.ThroughputPerS)
		}
		// The business tables, read directly: every effect happened exactly once.
		for sql, want := range map[string]int{
			`SELECT count(*) FROM "demo_payments"."payments" WHERE "status" = 'captured'`:                        ok,
			`SELECT count(*) FROM "demo_payments"."payments" WHERE "status" <> 'captured'`:                       0,
			`SELECT count(*) FROM "demo_inventory"."reservations" WHERE "status" = 'reserved'`:                   ok,
			`SELECT count(*) FROM "demo_inventory"."reservations" WHERE "status" = 'released'`:                   declined,
			`SELECT count(*) FROM "demo_shipping"."shipments" WHERE "status" = 'scheduled'`:                      ok,
			`SELECT count(*) FROM "demo_orders"."orders" WHERE "status" = 'cancelled'`:                           declined,
			`SELECT 30000 - sum("available") FROM "demo_inventory"."stock"`:                                      sumQty(s, false),
			`SELECT count(*) FROM "sagabox"."saga_instances" WHERE "status" NOT IN ('completed', 'compensated')`: 0,
		} {
			if got := count(t, db, sql); got != want {
				t.Errorf("%s = %d, want %d", sql, got, want)
			}
		}
		// Every command really arrived twice: the topic holds two records per message
		// the payments participant recorded in its inbox. (More than 20 unique commands
		// means a step timed out on this loaded machine and was retried: also fine.)
		unique := count(t, db, `SELECT count(*) FROM "sagabox"."inbox_messages" WHERE "consumer" = 'demo-payments'`)
		if got := records(t, brokers, "demo.payments.commands"); unique < n || got != 2*unique {
			t.Fatalf("payments: %d records on the topic for %d unique commands; want twice as many records, at least %d commands", got, unique, n)
		}
	})

	t.Run("ProcessesAndRepeatedRun", func(t *testing.T) {
		t.Parallel()
		if raceDetector {
			t.Skip("four race-instrumented child processes exceed this machine's budget; run without -race")
		}
		db, brokers := env(t)
		decode(t, orderdemo(t, append(infraArgs(db, brokers), "--orders", "6", "--decline-every", "3", "--json")...))
		// A second run on the same database, as a team would deploy it: participants, the
		// orchestrator and the real outbox-relay as child processes; human output.
		relayBin := filepath.Join(t.TempDir(), "outbox-relay")
		if out, err := exec.Command("go", "build", "-o", relayBin, "github.com/sagabox/sagabox/cmd/outbox-relay").CombinedOutput(); err != nil {
			t.Fatalf("build outbox-relay: %v\n%s", err, out)
		}
		r := orderdemo(t, append(infraArgs(db, brokers), "--orders", "6", "--decline-every", "3", "--processes", "--relay-binary", relayBin)...)
		if r.code != 0 {
			t.Fatalf("exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
		}
		for _, want := range []string{"as separate processes", "Summary", "completed            4", "compensated          2",
			"time to consistency  p50", "Timeline of a completed saga", "Timeline of a compensated saga", "payment declined", "all invariants hold"} {
			if !strings.Contains(r.stdout, want) {
				t.Fatalf("output lacks %q:\n%s", want, r.stdout)
			}
		}
		for _, role := range []string{"orders participant", "inventory participant", "payments participant", "shipping participant", "orchestrator"} {
			if !strings.Contains(r.stderr, role+" running as pid") {
				t.Fatalf("no %s process:\n%s", role, r.stderr)
			}
		}
		if !strings.Contains(r.stdout, "relay ("+relayBin+")") {
			t.Fatalf("the relay did not run as outbox-relay:\n%s", r.stdout)
		}
		// Stock was seeded once: the second run did not put it back under the first
		// run's reservations.
		if got := count(t, db, `SELECT (SELECT sum("available") FROM "demo_inventory"."stock")
			+ (SELECT sum("qty") FROM "demo_inventory"."reservations" WHERE "status" = 'reserved')`); got != 30000 {
			t.Fatalf("available + reserved = %d after two runs, want the 30000 seeded", got)
		}
		if n := count(t, db, `SELECT count(*) FROM "sagabox"."saga_instances" WHERE "status" = 'completed'`); n != 8 {
			t.Fatalf("%d completed sagas over two runs, want 8", n)
		}
	})
}

// sumQty is the stock the completed (or compensated) orders of s hold.
func sumQty(s summary, compensated bool) int {
	n := 0
	for _, r := range s.Sagas {
		if (r.Status == "compensated") == compensated {
			n += 1 + r.Order%3 // makeOrder's quantity
		}
	}
	return n
}

func TestTransferFlow(t *testing.T) {
	t.Parallel()
	db, brokers := env(t)
	n, k := size(28), 4
	s := decode(t, orderdemo(t, append(infraArgs(db, brokers),
		"--flow", "transfer", "--orders", fmt.Sprint(n), "--decline-every", fmt.Sprint(k), "--json", "--duplicate-delivery")...))
	want := map[string]int{}
	for i := 1; i <= n; i++ {
		_, outcome := makeTransfer(i, k)
		want[outcome]++
	}
	if want["reversed"] == 0 || want["rejected"] == 0 {
		t.Fatalf("the test must cover every outcome: %v", want)
	}
	for _, st := range []string{"completed", "reversed", "rejected"} {
		if s.Totals[st] != want[st] {
			t.Fatalf("totals %v, want %v", s.Totals, want)
		}
	}
	moved := want["completed"] + want["reversed"] // debited
	for sql, w := range map[string]int{
		`SELECT count(*) FROM "demo_bank"."ledger" WHERE "kind" = 'debit'`:  moved,
		`SELECT count(*) FROM "demo_bank"."ledger" WHERE "kind" = 'credit'`: want["completed"],
		`SELECT count(*) FROM "demo_bank"."ledger" WHERE "kind" = 'refund'`: want["reversed"],
		`SELECT count(*) FROM "demo_bank"."audit_log"`:                      n,
		`SELECT sum("balance") FROM "demo_bank"."accounts"`:                 400000,
		`SELECT "balance" FROM "demo_bank"."accounts" WHERE "id" = 'erin'`:  0,
	} {
		if got := count(t, db, sql); got != w {
			t.Errorf("%s = %d, want %d", sql, got, w)
		}
	}
	unique := count(t, db, `SELECT count(*) FROM "sagabox"."inbox_messages" WHERE "consumer" = 'bank-credit'`)
	if got := records(t, brokers, "bank.credits"); unique != moved || got != 2*unique { // no retries in a choreography
		t.Fatalf("credits: %d records for %d unique events; want 2 × %d", got, unique, moved)
	}
}

// size is n, or less under the race detector.
func size(n int) int {
	if raceDetector {
		return max(n/3, 8)
	}
	return n
}

func TestErrors(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := l.Addr().String()
	l.Close()
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"ZeroOrders", []string{"--orders", "0"}, 2, "--orders is 0"},
		{"SeveralProblemsAtOnce", []string{"--concurrency", "0", "--flow", "bogus"}, 2, `--flow is "bogus"`},
		{"UnknownRole", []string{"--role", "cashier"}, 2, `--role is "cashier"`},
		{"RoleWithoutServers", []string{"--role", "inventory"}, 2, "--role inventory needs --database-url and --brokers"},
		{"ProcessesWithRole", []string{"--processes", "--role", "driver"}, 2, "use it without --role"},
		{"NoRelayWithoutDriver", []string{"--relay=false"}, 2, "--relay=false and --orchestrator=false are for --role driver"},
		{"StrayArgument", []string{"fifty"}, 2, `unexpected argument "fifty"`},
		{"UnreachableDatabase", []string{"--database-url", "postgres://u:secret@" + closed + "/x", "--brokers", closed}, 1, "cannot reach postgres://u:xxxxx@"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := orderdemo(t, tc.args...)
			if r.code != tc.code || !strings.Contains(r.stderr, tc.want) || strings.Contains(r.stderr, "secret") {
				t.Fatalf("exit %d (want %d), stderr %q (want %q)", r.code, tc.code, r.stderr, tc.want)
			}
		})
	}
	t.Run("SeveralProblemsReportedTogether", func(t *testing.T) {
		t.Parallel()
		r := orderdemo(t, "--concurrency", "0", "--flow", "bogus")
		if !strings.Contains(r.stderr, "--concurrency is 0") {
			t.Fatalf("stderr %q", r.stderr)
		}
	})
	t.Run("Version", func(t *testing.T) {
		t.Parallel()
		r := orderdemo(t, "--version")
		if r.code != 0 || !strings.HasPrefix(r.stdout, "orderdemo ") {
			t.Fatalf("exit %d, stdout %q", r.code, r.stdout)
		}
	})
	t.Run("Help", func(t *testing.T) {
		t.Parallel()
		r := orderdemo(t, "--help")
		if r.code != 0 || !strings.Contains(r.stderr, "decline-every") {
			t.Fatalf("exit %d, %q", r.code, r.stderr)
		}
	})
}

// orderdemo used to ignore SAGABOX_SCHEMA, which outbox-relay honours.
func TestSchemaComesFromSagaboxSchemaVariable(t *testing.T) {
	t.Parallel()
	env := func(k string) string {
		if k == "SAGABOX_SCHEMA" {
			return "from_env"
		}
		return ""
	}
	c, err := parseFlags(nil, io.Discard, io.Discard, env)
	if err != nil {
		t.Fatal(err)
	}
	if c.schema != "from_env" {
		t.Fatalf("SAGABOX_SCHEMA=from_env: schema %q", c.schema)
	}
	c, err = parseFlags([]string{"--schema", "other"}, io.Discard, io.Discard, env)
	if err != nil {
		t.Fatal(err)
	}
	if c.schema != "other" {
		t.Fatalf("--schema other: schema %q", c.schema)
	}
}
