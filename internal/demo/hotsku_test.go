package demo_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/sagabox/sagabox/internal/demo"
	"github.com/sagabox/sagabox/internal/testenv"
	"github.com/sagabox/sagabox/migrations"
	"github.com/sagabox/sagabox/participants"
	"github.com/sagabox/sagabox/sagastate"
	"github.com/sagabox/sagabox/sagastate/sagatest"
)

// TestHotSKUSagasNeverRetryOnDeadlock runs many order sagas at once over two hot SKUs,
// so that the inventory participant's shared transactions lock the same two stock rows
// from every partition. Every saga must complete or compensate, and no step may have
// been retried by the saga because of a transient database error: deadlocks are
// avoided by lock order, and any other transient error is the consumer loop's.
func TestHotSKUSagasNeverRetryOnDeadlock(t *testing.T) {
	t.Parallel()
	hot := []string{"widget", "gadget"}
	r := runOrderSagas(t, map[string]int{"widget": 100000, "gadget": 100000}, 160, func(j int, id uuid.UUID) demo.Order {
		amount := int64(100)
		if j%5 == 4 {
			amount = demo.PaymentLimit + 1 // declined: compensates, releasing its reservation
		}
		return demo.Order{ID: id, Customer: "c", SKU: hot[(j/3)%2], Qty: 1 + j%3, Amount: amount, Address: fmt.Sprint(j)}
	})
	t.Logf("%d sagas over 2 hot SKUs: %d saga-level retries (timeouts only), none after a deadlock", len(r.outcomes), r.retries.Attempts)
}

// TestLastItemsOfAHotSKUAreReservedOnce: many sagas at once want the last items of a
// SKU. The inventory service decides on the stock without locking it and takes it
// with the commit; transactions that counted on the same items must not both get
// them. Exactly as many orders complete as there were items, the others are refused
// (out of stock) and compensated, and the stock ends at zero.
func TestLastItemsOfAHotSKUAreReservedOnce(t *testing.T) {
	t.Parallel()
	const items, n = 12, 60
	r := runOrderSagas(t, map[string]int{"last": items}, n, func(j int, id uuid.UUID) demo.Order {
		return demo.Order{ID: id, Customer: "c", SKU: "last", Qty: 1, Amount: 10, Address: fmt.Sprint(j)}
	})
	completed := 0
	for _, st := range r.outcomes {
		if st == "completed" {
			completed++
		}
	}
	var available int
	if err := r.pool.QueryRow(context.Background(), `SELECT "available" FROM "demo_inventory"."stock" WHERE "sku" = 'last'`).Scan(&available); err != nil {
		t.Fatal(err)
	}
	if completed != items || available != 0 {
		t.Fatalf("%d of %d orders completed, %d items left; want %d completed and none left", completed, n, available, items)
	}
}

type sagaRun struct {
	pool interface {
		QueryRow(context.Context, string, ...any) pgx.Row
	}
	outcomes map[uuid.UUID]string
	retries  demo.Retries
}

// runOrderSagas runs n order sagas (order(j, id) is the j-th) at once over stock, and
// checks that every one completed or compensated, that no step was retried by the
// saga because of a transient database error, and that the business invariants hold.
func runOrderSagas(t *testing.T, stock map[string]int, n int, order func(j int, id uuid.UUID) demo.Order) sagaRun {
	t.Helper()
	return runOrderSagasIn(t, "", stock, n, order)
}

// runOrderSagasIn is runOrderSagas with every service's pool in pgx's query exec mode
// mode (default_query_exec_mode; "" for pgx's default).
func runOrderSagasIn(t *testing.T, mode string, stock map[string]int, n int, order func(j int, id uuid.UUID) demo.Order) sagaRun {
	t.Helper()
	ctx := context.Background()
	db, svc, env := startOrderSagas(t, mode, stock, 8)

	ids := make([]uuid.UUID, n)
	// Started in a few transactions of many sagas each, so their commands arrive
	// together and the participants' consumers batch them into shared transactions.
	for i := 0; i < n; i += 40 {
		err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
			for j := i; j < min(i+40, n); j++ {
				ids[j], _ = uuid.NewV7()
				if err := env.Orchestrator.Start(ctx, tx, demo.SagaType, ids[j], order(j, ids[j])); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	outcomes := map[uuid.UUID]string{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := env.Await(t, id, 2*time.Minute)
			mu.Lock()
			outcomes[id] = string(s.Status)
			mu.Unlock()
		}()
	}
	wg.Wait()
	for id, st := range outcomes {
		if st != "completed" && st != "compensated" {
			t.Errorf("saga %s ended %s, want completed or compensated", id, st)
		}
	}
	var retryable int
	if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM "sagabox"."saga_events" WHERE "type" = 'step_failed' AND "detail" LIKE 'retryable:%'`).Scan(&retryable); err != nil {
		t.Fatal(err)
	}
	r, err := demo.CountRetries(ctx, db.Pool, migrations.DefaultSchema, ids)
	if err != nil {
		t.Fatal(err)
	}
	if r.Deadlocks != 0 || retryable != 0 {
		t.Fatalf("%d steps failed with a deadlock or serialization failure, %d retryable replies in all (%d saga-level retries): a transient database error reached the saga",
			r.Deadlocks, retryable, r.Attempts)
	}
	rep, err := svc.CheckOrders(ctx, db.Pool, outcomes)
	if err != nil {
		t.Fatal(err)
	}
	if err := rep.Err(); err != nil {
		t.Fatal(err)
	}
	return sagaRun{pool: db.Pool, outcomes: outcomes, retries: r}
}

// startOrderSagas sets up the demo's services over stock, runs every participant and
// the orchestrator of the order saga on topics of the given partitions, and returns
// the database, the services and the saga environment.
func startOrderSagas(t *testing.T, mode string, stock map[string]int, partitions int) (*testenv.DB, *demo.Services, *sagatest.Env) {
	t.Helper()
	db, k := testenv.NewDB(t), testenv.NewKafka(t)
	if mode != "" {
		db = db.InQueryExecMode(t, mode)
	}
	ctx := context.Background()
	svc, err := demo.NewServices(demo.Schemas{})
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.Setup(ctx, db.Pool); err != nil {
		t.Fatal(err)
	}
	if err := svc.SeedStock(ctx, db.Pool, stock); err != nil {
		t.Fatal(err)
	}
	topics := demo.Topics{}.WithDefaults()
	var runners []sagatest.Runner
	for _, role := range demo.Roles {
		p, err := svc.Participant(db.Pool, role, topics, participants.Config{Brokers: k.Brokers, Consumer: sagatest.FastConsumer()})
		if err != nil {
			t.Fatal(err)
		}
		runners = append(runners, p)
	}
	env := sagatest.Start(t, db.Pool, k.Brokers, sagatest.Config{
		Orchestrator: sagastate.Config{Sagas: []sagastate.Definition{demo.OrderSaga(topics)}},
		Participants: runners, Topics: topics.All(), Partitions: partitions,
	})
	return db, svc, env
}
