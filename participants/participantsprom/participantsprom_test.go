package participantsprom_test

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sagabox/sagabox/participants/participantsprom"
	"github.com/sagabox/sagabox/wire"
)

func TestHooksUpdateMetrics(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewPedanticRegistry()
	m, err := participantsprom.New(reg)
	if err != nil {
		t.Fatal(err)
	}
	h := m.Hooks("payments")
	h.Command(wire.Command{Name: "payment.charge"}, wire.OutcomeSuccess, 10*time.Millisecond)
	h.Command(wire.Command{Name: "payment.charge"}, wire.OutcomeFailure, 20*time.Millisecond)
	h.Command(wire.Command{Name: "payment.refund"}, wire.OutcomeSuccess, 5*time.Millisecond)
	want := `
# HELP sagabox_participant_commands_total Commands decided, by the outcome replied.
# TYPE sagabox_participant_commands_total counter
sagabox_participant_commands_total{command="payment.charge",outcome="failure",participant="payments"} 1
sagabox_participant_commands_total{command="payment.charge",outcome="success",participant="payments"} 1
sagabox_participant_commands_total{command="payment.refund",outcome="success",participant="payments"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "sagabox_participant_commands_total"); err != nil {
		t.Error(err)
	}
	if n := testutil.CollectAndCount(reg, "sagabox_participant_command_duration_seconds"); n != 2 {
		t.Errorf("command_duration_seconds has %d series, want 2 (one per command)", n)
	}
}
