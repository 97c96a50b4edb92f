package demo

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/sagabox/sagabox/inbox/consumer"
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
	if o.Qty <= 0 {
		errs = append(errs, fmt.Errorf("qty is %d; it must be positive", o.Qty))
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
// stock row: it decides on the committed count less what the transaction's earlier
// commands took (stockMoves), records the reservation, and the stock row is updated
// once per SKU with the commit (consumer.QueueAtCommit), its lock held only for that
// round trip. A concurrent transaction that took the same items first makes that
// update break the stock's CHECK: the transaction then runs again (Transient) and
// decides anew on the new count. Within a commit the rows are updated in the order the
// handlers first named them, which is SKU order (LockKey in Participant), so two
// transactions cannot deadlock on them.
func (s *Services) ReserveInventory(ctx context.Context, tx pgx.Tx, cmd wire.Command) ([]byte, error) {
	o, err := order(cmd)
	if err != nil {
		return nil, err
	}
	moves := stockMovesOf(ctx)
	var free *int // nil: no such sku
	var held, took bool
	err = tx.QueryRow(ctx, s.q["reserve"], o.SKU, o.Qty, o.ID, moves.net(o.SKU)).Scan(&free, &held, &took)
	switch {
	case err != nil:
		return nil, fmt.Errorf("reserve for order %s: %w", o.ID, err)
	case took:
		if err := s.moveStock(ctx, tx, moves, o.SKU, -o.Qty); err != nil {
			return nil, fmt.Errorf("reserve for order %s: %w", o.ID, err)
		}
		return result(map[string]any{"sku": o.SKU, "reserved": o.Qty, "left": *free - o.Qty}), nil
	case held:
		return result(map[string]any{"sku": o.SKU, "reserved": o.Qty}), nil
	case free == nil:
		return nil, refuse(fmt.Sprintf("unknown sku %q", o.SKU))
	}
	return nil, refuse(fmt.Sprintf("out of stock: %d of %s wanted, %d available", o.Qty, o.SKU, *free))
}

// ReleaseInventory returns a reservation's items to stock (with the commit, as
// ReserveInventory takes them). Releasing twice, or releasing what was never reserved,
// changes nothing.
func (s *Services) ReleaseInventory(ctx context.Context, tx pgx.Tx, cmd wire.Command) ([]byte, error) {
	o, err := order(cmd)
	if err != nil {
		return nil, err
	}
	var qty int
	switch err := tx.QueryRow(ctx, s.q["release"], o.ID, o.SKU).Scan(&qty); {
	case errors.Is(err, pgx.ErrNoRows):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("release for order %s: %w", o.ID, err)
	}
	if err := s.moveStock(ctx, tx, stockMovesOf(ctx), o.SKU, qty); err != nil {
		return nil, fmt.Errorf("release for order %s: %w", o.ID, err)
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

// stockMoves are the stock changes of one consumer transaction's handlers, by SKU,
// not yet applied: each is applied by one statement queued with the commit when the
// SKU is first moved. The statement's argument is the pointer, read when the commit
// is sent, after every handler of the transaction ran.
type stockMoves map[string]*int

type stockMovesKey struct{}

// stockMovesOf returns the stock moves of ctx's consumer transaction, or nil outside
// a consumer (HandleCommand in a transaction of the caller's): moves then apply at once.
func stockMovesOf(ctx context.Context) stockMoves {
	v, ok := consumer.TxValue(ctx, stockMovesKey{}, func() any { return stockMoves{} })
	if !ok {
		return nil
	}
	return v.(stockMoves)
}

// net is the change to sku's stock not yet applied.
func (m stockMoves) net(sku string) int {
	if d, ok := m[sku]; ok {
		return *d
	}
	return 0
}

// moveStock adds delta to sku's available stock: with the commit of the consumer
// transaction when moves is not nil, else now.
func (s *Services) moveStock(ctx context.Context, tx pgx.Tx, moves stockMoves, sku string, delta int) error {
	if moves == nil {
		_, err := tx.Exec(ctx, s.q["moveStock"], sku, delta)
		return stockTaken(err)
	}
	d, ok := moves[sku]
	if !ok {
		d = new(int)
		moves[sku] = d
		b := &pgx.Batch{}
		b.Queue(s.q["moveStock"], sku, d)
		if !consumer.QueueLastAtCommit(ctx, b, stockTaken) {
			return errors.New("demo: stock moves outside a consumer transaction")
		}
	}
	*d += delta
	return nil
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
	// Records the reservation when the stock, less what this transaction's earlier
	// commands moved ($4, applied with the commit), is enough; reads the stock row
	// without locking it. Returns that free count (NULL: no such sku), whether the
	// order held a reservation already, and whether this one took it.
	"reserve": `WITH "stock" AS (SELECT "available" + $4::int AS "free" FROM {stock} WHERE "sku" = $1),
		"before" AS (SELECT EXISTS (SELECT 1 FROM {reservations} WHERE "order_id" = $3) AS "held"),
		"taken" AS (INSERT INTO {reservations} ("order_id", "sku", "qty", "status")
			SELECT $3, $1, $2, 'reserved' FROM "stock", "before" WHERE "free" >= $2::int AND NOT "held" RETURNING 1)
		SELECT (SELECT "free" FROM "stock"), (SELECT "held" FROM "before"), EXISTS (SELECT 1 FROM "taken")`,
	"release": `UPDATE {reservations} SET "status" = 'released', "updated_at" = now()
		WHERE "order_id" = $1 AND "sku" = $2 AND "status" = 'reserved' RETURNING "qty"`,
	// A net change of zero leaves the row alone, unlocked. The CHECK refuses stock
	// taken below zero (see stockTaken).
	"moveStock": `UPDATE {stock} SET "available" = "available" + $2::int WHERE "sku" = $1 AND $2::int <> 0`,
	"capturePayment": `INSERT INTO {payments} ("order_id", "amount", "status") VALUES ($1, $2, 'captured')
		ON CONFLICT ("order_id") DO NOTHING`,
	"refundPayment": `UPDATE {payments} SET "status" = 'refunded', "updated_at" = now()
		WHERE "order_id" = $1 AND "status" = 'captured'`,
	"scheduleShipment": `INSERT INTO {shipments} ("order_id", "address", "status") VALUES ($1, $2, 'scheduled')
		ON CONFLICT ("order_id") DO NOTHING`,
	"cancelShipment": `UPDATE {shipments} SET "status" = 'cancelled', "updated_at" = now()
		WHERE "order_id" = $1 AND "status" = 'scheduled'`,
}
