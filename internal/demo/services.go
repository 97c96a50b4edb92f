package demo

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/sagabox/sagabox/inbox/consumer"
	"github.com/sagabox/sagabox/internal/pguuid"
	"github.com/sagabox/sagabox/migrations"
	"github.com/sagabox/sagabox/wire"
)

// Sentinel errors of the demo services.
var (
	// ErrBadPayload means a command's payload is not a valid order; retrying cannot fix it.
	ErrBadPayload = errors.New("demo: bad order payload")
	// ErrInvariant means Check found a broken business invariant.
	ErrInvariant = errors.New("demo: business invariant broken")
)

// PaymentLimit is the largest amount the payment service accepts; above it a charge is declined.
const PaymentLimit = 1000

// Command names of the order saga's participants.
const (
	CmdCreateOrder      = "order.create"
	CmdCancelOrder      = "order.cancel"
	CmdReserveInventory = "inventory.reserve"
	CmdReleaseInventory = "inventory.release"
	CmdChargePayment    = "payment.charge"
	CmdRefundPayment    = "payment.refund"
	CmdScheduleShipping = "shipping.schedule"
	CmdCancelShipping   = "shipping.cancel"
)

// Order is the order saga's payload; every participant receives it as its command payload.
type Order struct {
	ID       uuid.UUID `json:"id"`
	Customer string    `json:"customer"`
	SKU      string    `json:"sku"`
	Qty      int       `json:"qty"`
	Amount   int64     `json:"amount"`
	Address  string    `json:"address"`
}

// Validate reports what is wrong with o.
func (o Order) Validate() error {
	var errs []error
	if o.ID == uuid.Nil {
		errs = append(errs, errors.New("id is empty"))
	}
	if o.SKU == "" {
		errs = append(errs, errors.New("sku is empty"))
	}
	if o.Qty <= 0 || o.Qty > math.MaxInt32 { // orders.qty and the reservations are integer
		errs = append(errs, fmt.Errorf("qty is %d; it must be from 1 to %d", o.Qty, math.MaxInt32))
	}
	if o.Amount < 0 {
		errs = append(errs, fmt.Errorf("amount is %d; it must not be negative", o.Amount))
	}
	// PostgreSQL's text cannot hold NUL; the writes that go with the commit must not fail.
	for _, f := range []struct{ name, v string }{{"customer", o.Customer}, {"sku", o.SKU}, {"address", o.Address}} {
		if strings.ContainsRune(f.v, 0) {
			errs = append(errs, fmt.Errorf("%s contains a NUL character, which PostgreSQL text cannot store", f.name))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: %w", ErrBadPayload, err)
	}
	return nil
}

// Schemas names the schema of each service. The zero value uses the defaults.
type Schemas struct {
	// Orders holds the orders table. Defaults to "demo_orders".
	Orders string
	// Inventory holds stock and reservations. Defaults to "demo_inventory".
	Inventory string
	// Payments holds payments. Defaults to "demo_payments".
	Payments string
	// Shipping holds shipments. Defaults to "demo_shipping".
	Shipping string
	// Bank holds the transfer flow's accounts, transfers and audit log. Defaults to "demo_bank".
	Bank string
}

func (s Schemas) withDefaults() Schemas {
	def := func(v *string, d string) {
		if *v == "" {
			*v = d
		}
	}
	def(&s.Orders, "demo_orders")
	def(&s.Inventory, "demo_inventory")
	def(&s.Payments, "demo_payments")
	def(&s.Shipping, "demo_shipping")
	def(&s.Bank, "demo_bank")
	return s
}

func (s Schemas) validate() error {
	var errs []error
	for _, n := range []string{s.Orders, s.Inventory, s.Payments, s.Shipping, s.Bank} {
		if err := migrations.ValidateSchema(n); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

//go:embed sql/*.sql
var sqlFS embed.FS

// Beginner starts transactions; *pgxpool.Pool and *pgx.Conn satisfy it.
type Beginner interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}

// Querier is what the invariant checks need; *pgxpool.Pool, *pgx.Conn and pgx.Tx satisfy it.
type Querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Services are the four participants of the order saga (and the bank of the
// transfer flow), bound to their schemas. Safe for concurrent use.
type Services struct {
	schemas Schemas
	q       map[string]string // statement name → SQL with sanitized table names
}

// NewServices returns services using schemas (zero fields take their defaults).
func NewServices(schemas Schemas) (*Services, error) {
	schemas = schemas.withDefaults()
	if err := schemas.validate(); err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}
	s := &Services{schemas: schemas, q: map[string]string{}}
	tables := strings.NewReplacer(
		"{orders}", ident(schemas.Orders, "orders"),
		"{stock}", ident(schemas.Inventory, "stock"),
		"{reservations}", ident(schemas.Inventory, "reservations"),
		"{payments}", ident(schemas.Payments, "payments"),
		"{shipments}", ident(schemas.Shipping, "shipments"),
		"{accounts}", ident(schemas.Bank, "accounts"),
		"{transfers}", ident(schemas.Bank, "transfers"),
		"{audit}", ident(schemas.Bank, "audit_log"),
		"{ledger}", ident(schemas.Bank, "ledger"),
	)
	for name, q := range queries {
		s.q[name] = tables.Replace(q)
	}
	return s, nil
}

// Schemas returns the schemas in use, defaults applied.
func (s *Services) Schemas() Schemas { return s.schemas }

func ident(schema, table string) string { return pgx.Identifier{schema, table}.Sanitize() }

// Setup creates each service's schema and tables if they do not exist.
func (s *Services) Setup(ctx context.Context, db Beginner) error {
	for _, svc := range []struct{ file, schema string }{
		{"orders.sql", s.schemas.Orders},
		{"inventory.sql", s.schemas.Inventory},
		{"payments.sql", s.schemas.Payments},
		{"shipping.sql", s.schemas.Shipping},
		{"bank.sql", s.schemas.Bank},
	} {
		body, err := sqlFS.ReadFile("sql/" + svc.file)
		if err != nil {
			return fmt.Errorf("demo: %w", err)
		}
		if err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
			schema := pgx.Identifier{svc.schema}.Sanitize()
			if _, err := tx.Exec(ctx, "CREATE SCHEMA IF NOT EXISTS "+schema); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, "SET LOCAL search_path TO "+schema); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, string(body))
			return err
		}); err != nil {
			return fmt.Errorf("demo: set up schema %s from %s: %w", svc.schema, svc.file, err)
		}
	}
	return nil
}

// SeedStock puts the given count of each sku on the shelf, once: a sku already in
// stock is left as it is, so a restarted driver does not add stock under the
// reservations of sagas still running.
func (s *Services) SeedStock(ctx context.Context, db Querier, stock map[string]int) error {
	for sku, n := range stock {
		if _, err := db.Exec(ctx, s.q["seedStock"], sku, n); err != nil {
			return fmt.Errorf("demo: seed stock of %s: %w", sku, err)
		}
	}
	return nil
}

// Handler is the shape of every participant handler here: a plain function of
// (ctx, tx, command) that changes business rows in tx and returns the step's result.
type Handler = func(ctx context.Context, tx pgx.Tx, cmd wire.Command) ([]byte, error)

// Handlers maps command names to the service functions handling them.
func (s *Services) Handlers() map[string]Handler {
	return map[string]Handler{
		CmdCreateOrder:      s.CreateOrder,
		CmdCancelOrder:      s.CancelOrder,
		CmdReserveInventory: s.ReserveInventory,
		CmdReleaseInventory: s.ReleaseInventory,
		CmdChargePayment:    s.ChargePayment,
		CmdRefundPayment:    s.RefundPayment,
		CmdScheduleShipping: s.ScheduleShipping,
		CmdCancelShipping:   s.CancelShipping,
	}
}

// order decodes a command's payload. A bad one is refused, not retried: no retry
// can fix it, and the saga must compensate what earlier steps did.
func order(cmd wire.Command) (Order, error) {
	var o Order
	if err := json.Unmarshal(cmd.Payload, &o); err != nil {
		return o, refuse(fmt.Sprintf("%v: %s: %v", ErrBadPayload, cmd.Name, err))
	}
	if err := o.Validate(); err != nil {
		return o, refuse(err.Error())
	}
	return o, nil
}

func result(v map[string]any) []byte {
	b, _ := json.Marshal(v)
	return b
}

// CreateOrder records the order as created. A repeated command changes nothing.
func (s *Services) CreateOrder(ctx context.Context, tx pgx.Tx, cmd wire.Command) ([]byte, error) {
	o, err := order(cmd)
	if err != nil {
		return nil, err
	}
	if err := s.write(ctx, tx, "createOrder", o.ID, o.Customer, o.SKU, o.Qty, o.Amount); err != nil {
		return nil, fmt.Errorf("create order %s: %w", o.ID, err)
	}
	return result(map[string]any{"order_id": o.ID, "status": "created"}), nil
}

// CancelOrder marks the order cancelled (the compensation of CreateOrder).
func (s *Services) CancelOrder(ctx context.Context, tx pgx.Tx, cmd wire.Command) ([]byte, error) {
	o, err := order(cmd)
	if err != nil {
		return nil, err
	}
	if err := s.write(ctx, tx, "cancelOrder", o.ID); err != nil {
		return nil, fmt.Errorf("cancel order %s: %w", o.ID, err)
	}
	return nil, nil
}

// ReserveInventory takes qty items of the sku out of available stock, or refuses
// when there are not enough. A repeated command changes nothing.
//
// Hot rows: a few SKUs are shared by every saga, and a stock row's lock is held until
// the transaction commits. Under a consumer, records of many sagas share one
// transaction (the consumer's batch), so the handler neither locks nor updates the
// stock row: it reads the SKU's stock once per transaction (skuTx), decides each order
// on that count less what the transaction's earlier orders took, and one statement
// with the commit (consumer.QueueLastAtCommit) records the SKU's reservations and
// takes their items, the row locked for that round trip only. A concurrent transaction
// that took the same items first makes that statement break the stock's CHECK: the
// transaction then runs again (Transient) and decides anew on the new count. Within a
// commit the rows are updated in the order the handlers first named them, which is SKU
// order (LockKey in Participant), so two transactions cannot deadlock on them.
func (s *Services) ReserveInventory(ctx context.Context, tx pgx.Tx, cmd wire.Command) ([]byte, error) {
	o, err := order(cmd)
	if err != nil {
		return nil, err
	}
	if skus := skusOf(ctx); skus != nil {
		return s.reserveAtCommit(ctx, tx, skus, o)
	}
	var free *int // nil: no such sku
	var held, took bool
	err = tx.QueryRow(ctx, s.q["reserve"], o.SKU, o.Qty, o.ID).Scan(&free, &held, &took)
	switch {
	case err != nil:
		return nil, fmt.Errorf("reserve for order %s: %w", o.ID, err)
	case took:
		if _, err := tx.Exec(ctx, s.q["moveStock"], o.SKU, -o.Qty); err != nil {
			return nil, fmt.Errorf("reserve for order %s: %w", o.ID, stockTaken(err))
		}
		return result(map[string]any{"sku": o.SKU, "reserved": o.Qty, "left": *free - o.Qty}), nil
	case held:
		return result(map[string]any{"sku": o.SKU, "reserved": o.Qty}), nil
	case free == nil:
		return nil, refuse(fmt.Sprintf("unknown sku %q", o.SKU))
	}
	return nil, refuse(outOfStock(o, *free))
}

func outOfStock(o Order, free int) string {
	return fmt.Sprintf("out of stock: %d of %s wanted, %d available", o.Qty, o.SKU, free)
}

// reserveAtCommit is ReserveInventory under a consumer. An order that holds a
// reservation already (the barrier lets no repeated command through, so only a
// reservation made outside it) is not reserved twice: the commit's insert skips it
// and takes no items for it.
func (s *Services) reserveAtCommit(ctx context.Context, tx pgx.Tx, skus skuTxs, o Order) ([]byte, error) {
	st, err := s.skuTx(ctx, tx, skus, o.SKU, true)
	switch {
	case err != nil:
		return nil, fmt.Errorf("reserve for order %s: %w", o.ID, err)
	case st.free == nil:
		return nil, refuse(fmt.Sprintf("unknown sku %q", o.SKU))
	case slices.Contains(st.orders, pguuid.Arg(o.ID)):
		return result(map[string]any{"sku": o.SKU, "reserved": o.Qty}), nil
	case *st.free < o.Qty:
		return nil, refuse(outOfStock(o, *st.free))
	}
	st.orders, st.qtys = append(st.orders, pguuid.Arg(o.ID)), append(st.qtys, o.Qty)
	*st.free -= o.Qty
	return result(map[string]any{"sku": o.SKU, "reserved": o.Qty, "left": *st.free}), nil
}

// ReleaseInventory returns a reservation's items to stock (with the commit, under a
// consumer). Releasing twice, or releasing what was never reserved, changes nothing.
func (s *Services) ReleaseInventory(ctx context.Context, tx pgx.Tx, cmd wire.Command) ([]byte, error) {
	o, err := order(cmd)
	if err != nil {
		return nil, err
	}
	skus := skusOf(ctx)
	if skus != nil {
		st, err := s.skuTx(ctx, tx, skus, o.SKU, false)
		if err != nil {
			return nil, fmt.Errorf("release for order %s: %w", o.ID, err)
		}
		if i := slices.Index(st.orders, pguuid.Arg(o.ID)); i >= 0 {
			// Reserved by this transaction: not recorded at all, then.
			if st.free != nil {
				*st.free += st.qtys[i]
			}
			st.orders, st.qtys = slices.Delete(st.orders, i, i+1), slices.Delete(st.qtys, i, i+1)
			return nil, nil
		}
	}
	var qty int
	switch err := tx.QueryRow(ctx, s.q["release"], o.ID, o.SKU).Scan(&qty); {
	case errors.Is(err, pgx.ErrNoRows):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("release for order %s: %w", o.ID, err)
	}
	if skus == nil {
		if _, err := tx.Exec(ctx, s.q["moveStock"], o.SKU, qty); err != nil {
			return nil, fmt.Errorf("release for order %s: %w", o.ID, err)
		}
		return nil, nil
	}
	st := skus[o.SKU]
	st.returned += qty
	if st.free != nil {
		*st.free += qty
	}
	return nil, nil
}

// write runs the statement name, whose outcome the handler does not wait for: under a
// consumer with the commit (consumer.QueueLastAtCommit), so the handler runs no
// statement and its step costs no round trip (nor savepoint) of its own; else now.
// Only statements that cannot fail for a reason of the command's (the handler checked
// the payload) go here: one that failed at the commit would fail its whole
// transaction, and then its command, record by record, until it is dead-lettered.
func (s *Services) write(ctx context.Context, tx pgx.Tx, name string, args ...any) error {
	b := &pgx.Batch{}
	b.Queue(s.q[name], args...)
	if consumer.QueueLastAtCommit(ctx, b, nil) {
		return nil
	}
	_, err := tx.Exec(ctx, s.q[name], args...)
	return err
}

// skuTx is one SKU's part of a consumer transaction: its stock, read once (free:
// what is left for this transaction's orders; nil for no such sku), the reservations
// decided and the items released, all written by one statement with the commit. That
// statement's arguments are pointers to these fields, read when the commit is sent,
// after every handler of the transaction ran.
type skuTx struct {
	read     bool
	free     *int
	orders   []pgtype.UUID // pgx encodes []uuid.UUID only with the statement described (package pguuid)
	qtys     []int
	returned int
}

type skuTxs map[string]*skuTx

type skuTxsKey struct{}

// skusOf returns the SKUs of ctx's consumer transaction, or nil outside a consumer
// (HandleCommand in a transaction of the caller's): the stock then changes at once.
func skusOf(ctx context.Context) skuTxs {
	v, ok := consumer.TxValue(ctx, skuTxsKey{}, func() any { return skuTxs{} })
	if !ok {
		return nil
	}
	return v.(skuTxs)
}

// skuTx returns sku's part of the transaction, queuing its statement for the commit
// on first use and, with read, reading its stock (without locking it) if not read yet.
func (s *Services) skuTx(ctx context.Context, tx pgx.Tx, skus skuTxs, sku string, read bool) (*skuTx, error) {
	st, ok := skus[sku]
	if !ok {
		st = &skuTx{}
		skus[sku] = st
		b := &pgx.Batch{}
		b.Queue(s.q["reserveAtCommit"], sku, &st.orders, &st.qtys, &st.returned)
		if !consumer.QueueLastAtCommit(ctx, b, stockTaken) {
			return nil, errors.New("demo: stock moves outside a consumer transaction")
		}
	}
	if read && !st.read {
		var free int
		switch err := tx.QueryRow(ctx, s.q["stock"], sku).Scan(&free); {
		case err == nil:
			free += st.returned
			st.free = &free
		case !errors.Is(err, pgx.ErrNoRows):
			return nil, err
		}
		st.read = true
	}
	return st, nil
}

// stockTaken turns the stock's CHECK failing (a concurrent transaction took the
// items this one counted on) into a transient error: the transaction runs again and
// decides on the new count.
func stockTaken(err error) error {
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == "23514" && pe.TableName == "stock" {
		return consumer.Transient(fmt.Errorf("demo: stock taken meanwhile by a concurrent transaction: %w", err))
	}
	return err
}

// ChargePayment captures the order's amount, or declines an amount above PaymentLimit.
func (s *Services) ChargePayment(ctx context.Context, tx pgx.Tx, cmd wire.Command) ([]byte, error) {
	o, err := order(cmd)
	if err != nil {
		return nil, err
	}
	if o.Amount > PaymentLimit {
		return nil, refuse(fmt.Sprintf("payment declined: %d is above the limit of %d", o.Amount, PaymentLimit))
	}
	if err := s.write(ctx, tx, "capturePayment", o.ID, o.Amount); err != nil {
		return nil, fmt.Errorf("charge order %s: %w", o.ID, err)
	}
	return result(map[string]any{"captured": o.Amount}), nil
}

// RefundPayment refunds a captured payment; without one it changes nothing.
func (s *Services) RefundPayment(ctx context.Context, tx pgx.Tx, cmd wire.Command) ([]byte, error) {
	o, err := order(cmd)
	if err != nil {
		return nil, err
	}
	if err := s.write(ctx, tx, "refundPayment", o.ID); err != nil {
		return nil, fmt.Errorf("refund order %s: %w", o.ID, err)
	}
	return nil, nil
}

// ScheduleShipping schedules the shipment of the order.
func (s *Services) ScheduleShipping(ctx context.Context, tx pgx.Tx, cmd wire.Command) ([]byte, error) {
	o, err := order(cmd)
	if err != nil {
		return nil, err
	}
	if err := s.write(ctx, tx, "scheduleShipment", o.ID, o.Address); err != nil {
		return nil, fmt.Errorf("schedule shipment of order %s: %w", o.ID, err)
	}
	return result(map[string]any{"shipment": "scheduled"}), nil
}

// CancelShipping cancels a scheduled shipment; without one it changes nothing.
func (s *Services) CancelShipping(ctx context.Context, tx pgx.Tx, cmd wire.Command) ([]byte, error) {
	o, err := order(cmd)
	if err != nil {
		return nil, err
	}
	if err := s.write(ctx, tx, "cancelShipment", o.ID); err != nil {
		return nil, fmt.Errorf("cancel shipment of order %s: %w", o.ID, err)
	}
	return nil, nil
}

// queries use {table} placeholders that NewServices replaces with sanitized,
// schema-qualified names; no user input is ever spliced in.
var queries = map[string]string{
	"seedStock": `INSERT INTO {stock} ("sku", "available", "seeded") VALUES ($1, $2, $2)
		ON CONFLICT ("sku") DO NOTHING`,
	// ON CONFLICT DO NOTHING: the barrier already stops duplicates; this is the second belt.
	"createOrder": `INSERT INTO {orders} ("id", "customer", "sku", "qty", "amount", "status")
		VALUES ($1, $2, $3, $4, $5, 'created') ON CONFLICT ("id") DO NOTHING`,
	"cancelOrder": `UPDATE {orders} SET "status" = 'cancelled', "updated_at" = now() WHERE "id" = $1 AND "status" <> 'cancelled'`,
	// Takes the stock and records the reservation in one statement (outside a
	// consumer); no reservation when the order holds one already or the stock is
	// short. Returns the stock before (NULL: no such sku), whether the order held a
	// reservation already, and whether this one took it; moveStock then takes the items.
	"reserve": `WITH "stock" AS (SELECT "available" AS "free" FROM {stock} WHERE "sku" = $1),
		"before" AS (SELECT EXISTS (SELECT 1 FROM {reservations} WHERE "order_id" = $3) AS "held"),
		"taken" AS (INSERT INTO {reservations} ("order_id", "sku", "qty", "status")
			SELECT $3, $1, $2, 'reserved' FROM "stock", "before" WHERE "free" >= $2::int AND NOT "held" RETURNING 1)
		SELECT (SELECT "free" FROM "stock"), (SELECT "held" FROM "before"), EXISTS (SELECT 1 FROM "taken")`,
	"stock": `SELECT "available" FROM {stock} WHERE "sku" = $1`,
	// With the commit: a SKU's reservations of the transaction ($2, $3; one it holds
	// already is skipped) take their items, and the items released ($4) come back. The
	// CHECK refuses stock taken below zero (see stockTaken); nothing to do leaves the
	// row alone, unlocked.
	"reserveAtCommit": `WITH "new" AS (INSERT INTO {reservations} ("order_id", "sku", "qty", "status")
			SELECT "o", $1, "q", 'reserved' FROM unnest($2::uuid[], $3::int[]) AS r("o", "q")
			ON CONFLICT ("order_id") DO NOTHING RETURNING "qty")
		UPDATE {stock} SET "available" = "available" + $4::int - (SELECT coalesce(sum("qty"), 0)::int FROM "new")
		WHERE "sku" = $1 AND ($4::int <> 0 OR cardinality($2::uuid[]) > 0)`,
	"release": `UPDATE {reservations} SET "status" = 'released', "updated_at" = now()
		WHERE "order_id" = $1 AND "sku" = $2 AND "status" = 'reserved' RETURNING "qty"`,
	"moveStock": `UPDATE {stock} SET "available" = "available" + $2::int WHERE "sku" = $1`,
	"capturePayment": `INSERT INTO {payments} ("order_id", "amount", "status") VALUES ($1, $2, 'captured')
		ON CONFLICT ("order_id") DO NOTHING`,
	"refundPayment": `UPDATE {payments} SET "status" = 'refunded', "updated_at" = now()
		WHERE "order_id" = $1 AND "status" = 'captured'`,
	"scheduleShipment": `INSERT INTO {shipments} ("order_id", "address", "status") VALUES ($1, $2, 'scheduled')
		ON CONFLICT ("order_id") DO NOTHING`,
	"cancelShipment": `UPDATE {shipments} SET "status" = 'cancelled', "updated_at" = now()
		WHERE "order_id" = $1 AND "status" = 'scheduled'`,
}
