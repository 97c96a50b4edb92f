//go:build integration

package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/sagabox/sagabox/internal/demo"
)

const (
	commandPartitions = 8 // cmd/orderdemo creates its topics with 8 partitions
	stockPerSKU       = 10000
	skuCount          = 3 // widget, gadget, gizmo, seeded by cmd/orderdemo
	sagaWait          = 5 * time.Minute
)

type sagaEnv struct {
	pg     *PG
	broker *Broker
	bin    string
}

func setupSaga(t *testing.T) *sagaEnv {
	t.Helper()
	bin := binary(t, "orderdemo")
	pg, b := startContainers(t)
	return &sagaEnv{pg: pg, broker: b, bin: bin}
}

// demoArgs are the flags every orderdemo process of the test gets.
func (e *sagaEnv) demoArgs(role string, extra ...string) []string {
	args := []string{"--role", role, "--database-url", e.pg.URL, "--brokers", strings.Join(e.broker.Brokers(), ",")}
	if strings.Contains(kafkaImage(), "kafkabroker") {
		args = append(args, "--fast-groups") // the suite's broker accepts sessions below Kafka's 6 s
	}
	return append(args, extra...)
}

// startDriver starts the relay, the orchestrator and n orders (orderdemo --role driver),
// returning once the driver has created the schema, tables and topics.
func (e *sagaEnv) startDriver(t *testing.T, n int, extra ...string) *Proc {
	t.Helper()
	args := e.demoArgs("driver", append([]string{"--orders", fmt.Sprint(n), "--concurrency", "16",
		"--json", "--timelines=false", "--timeout", "4m"}, extra...)...)
	d := startProc(t, "orderdemo driver", e.bin, nil, args...)
	d.WaitOutput(t, "sagas finished (", 2*time.Minute) // its first progress line: setup is done
	return d
}

// startParticipant runs one participant service as a process of its own.
func (e *sagaEnv) startParticipant(t *testing.T, role string) *Proc {
	t.Helper()
	p := startProc(t, role+" participant", e.bin, nil, e.demoArgs(role)...)
	p.WaitOutput(t, "participant running", time.Minute)
	return p
}

// demoSummary is the part of orderdemo's --json output the suite checks.
type demoSummary struct {
	Count int `json:"count"`
	Sagas []struct {
		ID       string `json:"id"`
		Status   string `json:"status"`
		Expected string `json:"expected"`
	} `json:"sagas"`
	Totals     map[string]int `json:"totals"`
	Throughput float64        `json:"throughput_per_s"`
	Invariants demo.Report    `json:"invariants"`
	OK         bool           `json:"ok"`
}

// finishDriver waits for the driver and checks its report: every saga ended as expected
// and the demo's own business invariants held.
func finishDriver(t *testing.T, d *Proc, n int) demoSummary {
	t.Helper()
	out, err := d.Wait(t, sagaWait)
	var sum demoSummary
	jerr := errors.New("no JSON object on stdout")
	if i := strings.Index(out, "{"); i >= 0 {
		jerr = json.Unmarshal([]byte(out[i:]), &sum)
	}
	if jerr != nil {
		t.Fatalf("orderdemo driver (exit %v) printed no JSON summary: %v\n%s", err, jerr, tail(d.out.String(), 40))
	}
	for _, inv := range sum.Invariants {
		if !inv.OK {
			t.Errorf("orderdemo invariant broken: %s: %s", inv.Name, inv.Detail)
		}
	}
	if err != nil || !sum.OK {
		t.Errorf("orderdemo driver failed (exit %v, ok=%v)", err, sum.OK)
	}
	if sum.Count != n || len(sum.Sagas) != n {
		t.Errorf("orderdemo ran %d sagas (%d reported); want %d", sum.Count, len(sum.Sagas), n)
	}
	t.Logf("orderdemo: totals %v, %.0f sagas/s", sum.Totals, sum.Throughput)
	return sum
}

// checkSagaInvariants checks the database directly, independently of orderdemo's own
// check: every saga completed or compensated, each as expected, stock conserved (a
// reservation applied twice would take stock twice), no payment captured or shipment
// scheduled for a compensated order, every completed order fully applied once.
func checkSagaInvariants(t *testing.T, pg *PG, sum demoSummary) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	byStatus := map[string]int{}
	rows, err := pg.Pool.Query(ctx, `SELECT "status", count(*) FROM "sagabox"."saga_instances" GROUP BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var st string
		var n int
		if err := rows.Scan(&st, &n); err != nil {
			t.Fatal(err)
		}
		byStatus[st] = n
	}
	if rows.Err() != nil {
		t.Fatal(rows.Err())
	}
	if byStatus["completed"]+byStatus["compensated"] != len(sum.Sagas) || len(byStatus) > 2 {
		t.Errorf("saga statuses %v; want all %d completed or compensated", byStatus, len(sum.Sagas))
	}
	var wrong int
	for _, s := range sum.Sagas {
		var st string
		if err := pg.Pool.QueryRow(ctx, `SELECT "status" FROM "sagabox"."saga_instances" WHERE "id" = $1`, s.ID).Scan(&st); err != nil || st != s.Expected {
			wrong++
			if wrong <= 5 {
				t.Errorf("saga %s is %q in the database (%v); want %s", s.ID, st, err, s.Expected)
			}
		}
	}
	for _, c := range []struct{ name, sql string }{
		{"stock not conserved (an effect applied twice or lost)", `SELECT (SELECT sum("available") FROM "demo_inventory"."stock")
			+ (SELECT coalesce(sum("qty"), 0) FROM "demo_inventory"."reservations" WHERE "status" = 'reserved') - ` + fmt.Sprint(stockPerSKU*skuCount)},
		{"payments captured for compensated orders", `SELECT count(*) FROM "demo_payments"."payments" p JOIN "sagabox"."saga_instances" s ON s."id" = p."order_id"
			WHERE s."status" = 'compensated' AND p."status" = 'captured'`},
		{"shipments scheduled for compensated orders", `SELECT count(*) FROM "demo_shipping"."shipments" h JOIN "sagabox"."saga_instances" s ON s."id" = h."order_id"
			WHERE s."status" = 'compensated' AND h."status" = 'scheduled'`},
		{"completed orders without a captured payment, a reservation and a shipment", `SELECT count(*) FROM "sagabox"."saga_instances" s
			WHERE s."status" = 'completed' AND NOT (
				EXISTS (SELECT 1 FROM "demo_payments"."payments" WHERE "order_id" = s."id" AND "status" = 'captured')
				AND EXISTS (SELECT 1 FROM "demo_inventory"."reservations" WHERE "order_id" = s."id" AND "status" = 'reserved')
				AND EXISTS (SELECT 1 FROM "demo_shipping"."shipments" WHERE "order_id" = s."id" AND "status" = 'scheduled'))`},
	} {
		var n int
		if err := pg.Pool.QueryRow(ctx, c.sql).Scan(&n); err != nil {
			t.Fatalf("check %s: %v", c.name, err)
		}
		if n != 0 {
			t.Errorf("%s: %d", c.name, n)
		}
	}
	t.Logf("sagas in the database: %v", byStatus)
}

// topicRecords is the number of records in topic.
func topicRecords(t *testing.T, b *Broker, topic string) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var reqs []kafka.OffsetRequest
	for p := range commandPartitions {
		reqs = append(reqs, kafka.FirstOffsetOf(p), kafka.LastOffsetOf(p))
	}
	resp, err := (&kafka.Client{Addr: kafka.TCP(b.Addr)}).ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: reqs}})
	if err != nil {
		t.Fatalf("list offsets of %s: %v", topic, err)
	}
	var n int64
	for _, po := range resp.Topics[topic] {
		if po.Error != nil {
			t.Fatalf("list offsets of %s/%d: %v", topic, po.Partition, po.Error)
		}
		n += po.LastOffset - po.FirstOffset
	}
	return n
}

// committedRecords is how many records of topic group has committed offsets for.
func committedRecords(t *testing.T, b *Broker, group, topic string) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	parts := make([]int, commandPartitions)
	for i := range parts {
		parts[i] = i
	}
	resp, err := (&kafka.Client{Addr: kafka.TCP(b.Addr)}).OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: group, Topics: map[string][]int{topic: parts}})
	if err == nil {
		err = resp.Error
	}
	if err != nil {
		t.Fatalf("fetch committed offsets of %s: %v", group, err)
	}
	var n int64
	for _, p := range resp.Topics[topic] {
		if p.CommittedOffset > 0 {
			n += p.CommittedOffset
		}
	}
	return n
}

// inboxCount is how many messages consumer recorded (committed effects).
func inboxCount(t *testing.T, pg *PG, consumer string) int64 {
	t.Helper()
	var n int64
	if err := pg.Pool.QueryRow(context.Background(), `SELECT count(*) FROM "sagabox"."inbox_messages" WHERE "consumer" = $1`, consumer).Scan(&n); err != nil {
		t.Fatalf("count inbox rows of %s: %v", consumer, err)
	}
	return n
}

// TestSagaParticipantKilledBetweenDBCommitAndOffsetCommit: the payments participant runs
// as a process of its own and gets SIGKILL while sagas flow. After each kill the test
// compares what the participant committed to PostgreSQL (its inbox rows) with what it
// committed to Kafka (its group's offsets): more inbox rows than committed offsets means
// the kill fell between a database commit and its offset commit, so those commands come
// again to the restarted participant, which must skip them. The test kills until that
// happened, then checks every saga and the business invariants.
func TestSagaParticipantKilledBetweenDBCommitAndOffsetCommit(t *testing.T) {
	t.Parallel()
	e := setupSaga(t)
	const orders = 100
	driver := e.startDriver(t, orders)
	for _, role := range []string{"orders", "inventory", "shipping"} {
		e.startParticipant(t, role)
	}
	topic := demo.Topics{}.WithDefaults().Payments
	const group = "demo-payments"
	victim := e.startParticipant(t, "payments")
	hit := false
	for attempt := 1; attempt <= 10 && !hit; attempt++ {
		// Kill as soon as a database commit shows: the participant commits its offsets
		// every 100 ms (orderdemo's CommitInterval), and a command is applied within
		// milliseconds of its arrival, so polling slower mostly kills it idle.
		before := inboxCount(t, e.pg, group)
		for deadline := time.Now().Add(time.Minute); inboxCount(t, e.pg, group) == before; time.Sleep(2 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("kill %d: the payments participant applied no command in a minute (%d applied)", attempt, before)
			}
		}
		victim.Kill(t)
		applied, committed := inboxCount(t, e.pg, group), committedRecords(t, e.broker, group, topic)
		hit = applied > committed
		t.Logf("kill %d: %d commands applied in PostgreSQL, %d offsets committed in Kafka", attempt, applied, committed)
		victim = e.startParticipant(t, "payments")
	}
	if !hit {
		t.Fatal("no kill fell between a database commit and its offset commit: the fault was never injected")
	}
	sum := finishDriver(t, driver, orders)
	checkSagaInvariants(t, e.pg, sum)
}

// TestSagaDuplicateDeliveries: the relay publishes every message twice (orderdemo
// --duplicate-delivery), so every command and reply arrives twice; each effect must still
// happen once.
func TestSagaDuplicateDeliveries(t *testing.T) {
	t.Parallel()
	e := setupSaga(t)
	const orders = 40
	d := e.startDriver(t, orders, "--duplicate-delivery")
	for _, role := range demo.Roles {
		e.startParticipant(t, role)
	}
	sum := finishDriver(t, d, orders)
	checkSagaInvariants(t, e.pg, sum)
	topics := demo.Topics{}.WithDefaults()
	for role, topic := range map[string]string{"orders": topics.Orders, "inventory": topics.Inventory, "payments": topics.Payments, "shipping": topics.Shipping} {
		records, applied := topicRecords(t, e.broker, topic), inboxCount(t, e.pg, "demo-"+role)
		if records != 2*applied {
			t.Errorf("%s: %d records in %s, %d applied; want every command delivered twice and applied once", role, records, topic, applied)
		}
	}
}
