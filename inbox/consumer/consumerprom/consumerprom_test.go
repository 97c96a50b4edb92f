package consumerprom_test

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sagabox/sagabox/inbox"
	"github.com/sagabox/sagabox/inbox/consumer"
	"github.com/sagabox/sagabox/inbox/consumer/consumerprom"
	"github.com/sagabox/sagabox/internal/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Run(m)) }

func TestHooksUpdateMetrics(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewPedanticRegistry()
	m, err := consumerprom.New(reg)
	if err != nil {
		t.Fatal(err)
	}
	h := m.Hooks("billing")
	msg := consumer.Message{ID: uuid.New(), Topic: "orders", Partition: 3, Offset: 10}
	h.Handled(msg, false)
	h.Handled(msg, true)
	h.Retry(msg, 1, errors.New("refused"))
	h.LocalRetry("orders", 3, errors.New("deadlock"))
	h.DeadLettered(inbox.DeadLetter{Consumer: "billing", Topic: "orders"})
	h.HandlerDone(msg, 20*time.Millisecond, nil)
	h.Lag("orders", 3, 4)

	if err := testutil.GatherAndCompare(reg, metricsText, "sagabox_consumer_handled_total", "sagabox_consumer_duplicates_total",
		"sagabox_consumer_retries_total", "sagabox_consumer_local_retries_total", "sagabox_consumer_dead_lettered_total", "sagabox_consumer_lag_records"); err != nil {
		t.Error(err)
	}
	if n := testutil.CollectAndCount(reg, "sagabox_consumer_handler_duration_seconds"); n != 1 {
		t.Errorf("handler_duration_seconds has %d series, want 1", n)
	}
	if _, err := consumerprom.New(reg); err == nil {
		t.Error("registering twice must fail")
	}
}

func TestDeadLettersCountsStoredRows(t *testing.T) {
	t.Parallel()
	db := testenv.NewDB(t)
	store, err := inbox.NewStore("")
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		name := "billing"
		if i == 2 {
			name = "shipping"
		}
		if _, err := store.AddDeadLetter(context.Background(), db.Pool, inbox.DeadLetter{Consumer: name, Topic: "orders",
			Offset: int64(i), Reason: "bad payload"}); err != nil {
			t.Fatal(err)
		}
	}
	c, err := consumerprom.DeadLetters(db.Pool, "")
	if err != nil {
		t.Fatal(err)
	}
	want := `
# HELP sagabox_inbox_dead_letters Dead letters stored in the inbox, waiting for an operator.
# TYPE sagabox_inbox_dead_letters gauge
sagabox_inbox_dead_letters{consumer="billing"} 2
sagabox_inbox_dead_letters{consumer="shipping"} 1
# HELP sagabox_inbox_scrape_error 1 if the last scrape's database query failed (its gauges are then missing), else 0.
# TYPE sagabox_inbox_scrape_error gauge
sagabox_inbox_scrape_error 0
`
	if err := testutil.CollectAndCompare(c, stringsReader(want)); err != nil {
		t.Error(err)
	}

	db.Pool.Close() // a failed query hides the gauges and raises scrape_error
	want = `
# HELP sagabox_inbox_scrape_error 1 if the last scrape's database query failed (its gauges are then missing), else 0.
# TYPE sagabox_inbox_scrape_error gauge
sagabox_inbox_scrape_error 1
`
	if err := testutil.CollectAndCompare(c, stringsReader(want)); err != nil {
		t.Error(err)
	}
}

func stringsReader(s string) *strings.Reader { return strings.NewReader(s) }

var metricsText = stringsReader(`
# HELP sagabox_consumer_dead_lettered_total Records stored as dead letters.
# TYPE sagabox_consumer_dead_lettered_total counter
sagabox_consumer_dead_lettered_total{consumer="billing",topic="orders"} 1
# HELP sagabox_consumer_duplicates_total Records the inbox skipped because they were handled before.
# TYPE sagabox_consumer_duplicates_total counter
sagabox_consumer_duplicates_total{consumer="billing",topic="orders"} 1
# HELP sagabox_consumer_handled_total Records whose inbox transaction committed (duplicates included).
# TYPE sagabox_consumer_handled_total counter
sagabox_consumer_handled_total{consumer="billing",topic="orders"} 2
# HELP sagabox_consumer_lag_records Records of the partition behind the newest one handled, as of its fetch (high-water mark - offset - 1).
# TYPE sagabox_consumer_lag_records gauge
sagabox_consumer_lag_records{consumer="billing",partition="3",topic="orders"} 4
# HELP sagabox_consumer_local_retries_total Transactions run again after a transient database error (no attempt spent).
# TYPE sagabox_consumer_local_retries_total counter
sagabox_consumer_local_retries_total{consumer="billing",topic="orders"} 1
# HELP sagabox_consumer_retries_total Retries of a record after its handler failed (each spends an attempt).
# TYPE sagabox_consumer_retries_total counter
sagabox_consumer_retries_total{consumer="billing",topic="orders"} 1
`)
