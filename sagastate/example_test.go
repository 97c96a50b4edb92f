package sagastate_test

import (
	"errors"
	"fmt"
	"time"

	"github.com/sagabox/sagabox/sagastate"
)

type Order struct {
	ID     string `json:"id"`
	Amount int    `json:"amount"`
}

// Validate is called by Start: an invalid order starts no saga.
func (o Order) Validate() error {
	if o.Amount <= 0 {
		return errors.New("amount must be positive")
	}
	return nil
}

// The order saga: four steps, each with its compensation, a timeout and retries; payment
// and shipping run in parallel; shipping's command is built from the payload and the
// inventory step's result.
func ExampleDefine() {
	retry := sagastate.RetryPolicy{MaxAttempts: 5, Backoff: 100 * time.Millisecond}
	order := sagastate.Define[Order]("order",
		sagastate.Step("create_order", "orders.commands").Do("order.create").Undo("order.cancel"),
		sagastate.Step("reserve_inventory", "inventory.commands").Do("inventory.reserve").Undo("inventory.release").Timeout(5*time.Second),
		sagastate.Parallel(
			sagastate.Step("charge_payment", "payments.commands").Do("payment.charge").Undo("payment.refund").Retry(retry),
			sagastate.Step("schedule_shipping", "shipping.commands").Do("shipping.schedule").Undo("shipping.cancel"),
		),
	).Input("schedule_shipping", func(o Order, r sagastate.Results) (any, error) {
		var res struct{ Warehouse string }
		if err := r.Decode("reserve_inventory", &res); err != nil {
			return nil, err
		}
		return map[string]string{"order": o.ID, "from": res.Warehouse}, nil
	})
	fmt.Println(order.Name(), order.Err())

	broken := sagastate.Define[Order]("broken", sagastate.Step("pay", "payments.commands"))
	fmt.Println(broken.Err())
	// Output:
	// order <nil>
	// invalid saga definition: saga "broken": step "pay": no Do command; name the command the participant runs
}
