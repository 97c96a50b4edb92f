package demo

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagabox/sagabox/inbox/consumer"
	"github.com/sagabox/sagabox/participants"
	"github.com/sagabox/sagabox/sagastate"
)

// SagaType is the order saga's type name.
const SagaType = "order"

// Step names of the order saga, in order.
const (
	StepCreateOrder      = "create_order"
	StepReserveInventory = "reserve_inventory"
	StepChargePayment    = "charge_payment"
	StepScheduleShipping = "schedule_shipping"
)

// Roles are the participant services of the order saga, each a process of its own
// when run separately.
var Roles = []string{"orders", "inventory", "payments", "shipping"}

// Topics names each participant's command topic. Zero fields take the defaults.
type Topics struct {
	// Orders defaults to "demo.orders.commands".
	Orders string
	// Inventory defaults to "demo.inventory.commands".
	Inventory string
	// Payments defaults to "demo.payments.commands".
	Payments string
	// Shipping defaults to "demo.shipping.commands".
	Shipping string
}

// WithDefaults returns t with empty fields set to their defaults.
func (t Topics) WithDefaults() Topics {
	def := func(v *string, d string) {
		if *v == "" {
			*v = d
		}
	}
	def(&t.Orders, "demo.orders.commands")
	def(&t.Inventory, "demo.inventory.commands")
	def(&t.Payments, "demo.payments.commands")
	def(&t.Shipping, "demo.shipping.commands")
	return t
}

// All returns the command topics.
func (t Topics) All() []string {
	t = t.WithDefaults()
	return []string{t.Orders, t.Inventory, t.Payments, t.Shipping}
}

// OrderSaga declares the order saga: four steps, each undone by its compensation in
// reverse order when a later one fails (a payment above PaymentLimit does).
func OrderSaga(t Topics) *sagastate.Saga[Order] {
	t = t.WithDefaults()
	quick := sagastate.RetryPolicy{MaxAttempts: 3, Backoff: 100 * time.Millisecond}
	return sagastate.Define[Order](SagaType,
		sagastate.Step(StepCreateOrder, t.Orders).Do(CmdCreateOrder).Undo(CmdCancelOrder),
		sagastate.Step(StepReserveInventory, t.Inventory).Do(CmdReserveInventory).Undo(CmdReleaseInventory).
			Timeout(10*time.Second).Retry(quick),
		sagastate.Step(StepChargePayment, t.Payments).Do(CmdChargePayment).Undo(CmdRefundPayment).
			Timeout(10*time.Second).Retry(quick),
		sagastate.Step(StepScheduleShipping, t.Shipping).Do(CmdScheduleShipping).Undo(CmdCancelShipping),
	)
}

// Participant builds the participant of one role ("orders", "inventory", "payments"
// or "shipping"): its own consumer group on its own command topic, with the role's
// forward and compensation handlers registered. base supplies Brokers, Schema,
// Consumer tuning and Logger; GroupID and CommandTopics are set here.
func (s *Services) Participant(pool *pgxpool.Pool, role string, t Topics, base participants.Config) (*participants.Participant, error) {
	t = t.WithDefaults()
	cfg := base
	cfg.GroupID = "demo-" + role
	cfg.Name = ""
	var topic, do, undo string
	var fdo, fundo Handler
	switch role {
	case "orders":
		topic, do, undo, fdo, fundo = t.Orders, CmdCreateOrder, CmdCancelOrder, s.CreateOrder, s.CancelOrder
	case "inventory":
		topic, do, undo, fdo, fundo = t.Inventory, CmdReserveInventory, CmdReleaseInventory, s.ReserveInventory, s.ReleaseInventory
	case "payments":
		topic, do, undo, fdo, fundo = t.Payments, CmdChargePayment, CmdRefundPayment, s.ChargePayment, s.RefundPayment
	case "shipping":
		topic, do, undo, fdo, fundo = t.Shipping, CmdScheduleShipping, CmdCancelShipping, s.ScheduleShipping, s.CancelShipping
	default:
		return nil, fmt.Errorf("demo: unknown role %q; want one of %v", role, Roles)
	}
	cfg.CommandTopics = []string{topic}
	if role == "inventory" {
		cfg.Consumer.LockKey = skuOf // see ReserveInventory: lock order
	}
	p, err := participants.New(pool, cfg)
	if err != nil {
		return nil, fmt.Errorf("demo: %s participant: %w", role, err)
	}
	return p.Step(do, fdo, undo, fundo), nil
}

// skuOf is the inventory participant's lock key: the SKU whose stock row a command
// locks, so a shared transaction locks stock rows in SKU order. A payload that does
// not decode sorts first; its handler refuses it.
func skuOf(m consumer.Message) []byte {
	var o struct {
		SKU string `json:"sku"`
	}
	_ = json.Unmarshal(m.Value, &o)
	return []byte(o.SKU)
}
