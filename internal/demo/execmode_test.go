package demo_test

import (
	"fmt"
	"testing"

	"github.com/google/uuid"

	"github.com/sagabox/sagabox/internal/demo"
)

// TestOrderSagasRunInEveryQueryExecMode runs order sagas with every service's pool in
// each of pgx's query exec modes. Behind PgBouncer in transaction mode a pool is often
// set to exec or simple_protocol (default_query_exec_mode in the URL), where pgx
// encodes an argument by its Go type alone: the uuids sagabox passed as [16]byte for
// speed (package pguuid) could not be encoded there ("cannot find encode plan"), and
// no saga could start.
func TestOrderSagasRunInEveryQueryExecMode(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"cache_describe", "describe_exec", "exec", "simple_protocol"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			runOrderSagasIn(t, mode, map[string]int{"widget": 1000}, 20, func(j int, id uuid.UUID) demo.Order {
				amount := int64(100)
				if j%5 == 4 {
					amount = demo.PaymentLimit + 1
				}
				return demo.Order{ID: id, Customer: "c", SKU: "widget", Qty: 1, Amount: amount, Address: fmt.Sprint(j)}
			})
		})
	}
}
