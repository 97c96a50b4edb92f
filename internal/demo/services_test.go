package demo_test

import (
	"context"
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagabox/sagabox/internal/demo"
	"github.com/sagabox/sagabox/internal/testenv"
	"github.com/sagabox/sagabox/wire"
)

func TestMain(m *testing.M) { os.Exit(testenv.Run(m)) }

type bundle struct {
	pool *pgxpool.Pool
	svc  *demo.Services
}

func setup(t *testing.T, stock map[string]int) bundle {
	t.Helper()
	db := testenv.NewDB(t)
	svc, err := demo.NewServices(demo.Schemas{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := svc.Setup(ctx, db.Pool); err != nil {
		t.Fatal(err)
	}
	if err := svc.Setup(ctx, db.Pool); err != nil {
		t.Fatalf("Setup must be repeatable: %v", err)
	}
	if err := svc.SeedStock(ctx, db.Pool, stock); err != nil {
		t.Fatal(err)
	}
	return bundle{pool: db.Pool, svc: svc}
}

// call runs one handler in its own transaction, as a participant would.
func (b bundle) call(t *testing.T, name string, o demo.Order) ([]byte, error) {
	t.Helper()
	payload, _ := json.Marshal(o)
	cmd := wire.Command{SagaID: o.ID, SagaType: "order", Step: name, Op: wire.OpForward, Attempt: 1, Name: name, ReplyTo: "r", Payload: payload}
	var res []byte
	err := pgx.BeginFunc(context.Background(), b.pool, func(tx pgx.Tx) error {
		var err error
		res, err = b.svc.Handlers()[name](context.Background(), tx, cmd)
		return err
	})
	return res, err
}

func (b bundle) mustCall(t *testing.T, names ...string) func(demo.Order) {
	return func(o demo.Order) {
		t.Helper()
		for _, n := range names {
			if _, err := b.call(t, n, o); err != nil {
				t.Fatalf("%s: %v", n, err)
			}
		}
	}
}

func newOrder(amount int64, qty int) demo.Order {
	return demo.Order{ID: uuid.New(), Customer: "c", SKU: "widget", Qty: qty, Amount: amount, Address: "1 Main St"}
}

func TestOrderServices(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	stock := map[string]int{"widget": 10}

	t.Run("CompletedAndCompensated", func(t *testing.T) {
		t.Parallel()
		b := setup(t, stock)
		ok := newOrder(500, 3)
		b.mustCall(t, demo.CmdCreateOrder, demo.CmdReserveInventory, demo.CmdChargePayment, demo.CmdScheduleShipping)(ok)
		// Duplicates of every forward command change nothing.
		b.mustCall(t, demo.CmdCreateOrder, demo.CmdReserveInventory, demo.CmdChargePayment, demo.CmdScheduleShipping)(ok)

		declined := newOrder(demo.PaymentLimit+1, 2)
		b.mustCall(t, demo.CmdCreateOrder, demo.CmdReserveInventory)(declined)
		_, err := b.call(t, demo.CmdChargePayment, declined)
		if err == nil || !strings.Contains(err.Error(), "declined") {
			t.Fatalf("charge above the limit: err %v, want a decline", err)
		}
		// Compensate in reverse, twice each, plus compensations of steps that never ran.
		b.mustCall(t, demo.CmdCancelShipping, demo.CmdRefundPayment, demo.CmdReleaseInventory, demo.CmdCancelOrder,
			demo.CmdReleaseInventory, demo.CmdCancelOrder)(declined)

		rep, err := b.svc.CheckOrders(ctx, b.pool, map[uuid.UUID]string{ok.ID: "completed", declined.ID: "compensated"})
		if err != nil {
			t.Fatal(err)
		}
		if err := rep.Err(); err != nil {
			t.Fatal(err)
		}
		var avail int
		if err := b.pool.QueryRow(ctx, `SELECT "available" FROM "demo_inventory"."stock" WHERE "sku" = 'widget'`).Scan(&avail); err != nil {
			t.Fatal(err)
		}
		if avail != 7 {
			t.Fatalf("available %d, want 10 - 3 (the declined order's 2 released)", avail)
		}
	})

	t.Run("OutOfStockAndUnknownSKU", func(t *testing.T) {
		t.Parallel()
		b := setup(t, stock)
		_, err := b.call(t, demo.CmdReserveInventory, newOrder(10, 11))
		if err == nil || !strings.Contains(err.Error(), "out of stock: 11 of widget wanted, 10 available") {
			t.Fatalf("err %v", err)
		}
		o := newOrder(10, 1)
		o.SKU = "gadget"
		if _, err := b.call(t, demo.CmdReserveInventory, o); err == nil || !strings.Contains(err.Error(), `unknown sku "gadget"`) {
			t.Fatalf("err %v", err)
		}
		bad := newOrder(10, 0)
		if _, err := b.call(t, demo.CmdCreateOrder, bad); err == nil || !strings.Contains(err.Error(), "qty is 0") {
			t.Fatalf("err %v", err)
		}
		// Refused by the handler: a write with the commit must not fail on it.
		nul := newOrder(10, 1)
		nul.Address = "1 Saga St\x00"
		if _, err := b.call(t, demo.CmdScheduleShipping, nul); err == nil || !strings.Contains(err.Error(), "address contains a NUL") {
			t.Fatalf("err %v", err)
		}
	})

	t.Run("CheckCatchesBrokenInvariants", func(t *testing.T) {
		t.Parallel()
		b := setup(t, stock)
		ok := newOrder(500, 3)
		b.mustCall(t, demo.CmdCreateOrder, demo.CmdReserveInventory, demo.CmdChargePayment, demo.CmdScheduleShipping)(ok)
		// A compensated order whose refund and shipping cancel were "lost", and stock that leaked.
		lost := newOrder(100, 1)
		b.mustCall(t, demo.CmdCreateOrder, demo.CmdReserveInventory, demo.CmdChargePayment, demo.CmdScheduleShipping, demo.CmdCancelOrder)(lost)
		if _, err := b.pool.Exec(ctx, `UPDATE "demo_inventory"."stock" SET "available" = "available" + 1`); err != nil {
			t.Fatal(err)
		}
		rep, err := b.svc.CheckOrders(ctx, b.pool, map[uuid.UUID]string{ok.ID: "completed", lost.ID: "compensated"})
		if err != nil {
			t.Fatal(err)
		}
		err = rep.Err()
		for _, want := range []string{"stock conserved", "no payment captured for a compensated order", "no shipment for a cancelled order", "compensated orders fully undone"} {
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Fatalf("Check did not report %q: %v", want, err)
			}
		}
		if strings.Contains(err.Error(), "completed orders fully applied") {
			t.Fatalf("the completed order is fine, yet: %v", err)
		}
	})
}

func TestBadSchemas(t *testing.T) {
	t.Parallel()
	_, err := demo.NewServices(demo.Schemas{Orders: "Robert'); DROP", Payments: "1x"})
	if err == nil || !strings.Contains(err.Error(), "Robert") || !strings.Contains(err.Error(), "1x") {
		t.Fatalf("err %v, want both bad names reported", err)
	}
}
