package console_test

import (
	"context"
	"os"
	"testing"

	"github.com/chromedp/chromedp"
	"github.com/google/uuid"

	"github.com/sagabox/sagabox/console"
	"github.com/sagabox/sagabox/inbox"
	"github.com/sagabox/sagabox/sagastate"
)

// TestScreenshots draws the main pages into $CONSOLE_SCREENSHOTS (skipped when unset),
// with a day of finished sagas for the charts, two relays sharing the shards and
// dead letters on both sides.
func TestScreenshots(t *testing.T) {
	if os.Getenv("CONSOLE_SCREENSHOTS") == "" {
		t.Skip("set CONSOLE_SCREENSHOTS to a directory to draw the pages")
	}
	f := newFixture(t)
	ctx0 := context.Background()
	deadOutbox(t, f, 2)
	store, _ := inbox.NewStore("")
	for i, c := range []string{"payments", "payments", "shipping"} {
		if _, err := store.AddDeadLetter(ctx0, f.db.Pool, inbox.DeadLetter{Consumer: c, MessageID: uuid.New(), Topic: "payment.commands", Partition: i, Offset: 40 + int64(i),
			Key: []byte("o-1"), Value: []byte(`{"amount":1200}`), Headers: map[string]string{"saga-step": "charge", "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
			Attempts: 3, Reason: "handler: account 42 is closed"}); err != nil {
			t.Fatal(err)
		}
	}
	for _, sql := range []string{
		`INSERT INTO sagabox.outbox_relays (id, started_at, expires_at) VALUES ('relay-a-7f3c', now() - interval '2 hours', now() + interval '9 seconds'),
 ('relay-b-19d2', now() - interval '5 minutes', now() + interval '9 seconds'), ('relay-c-old', now() - interval '1 day', now() - interval '10 minutes')`,
		`UPDATE sagabox.outbox_leases SET owner = CASE WHEN shard < 128 THEN 'relay-a-7f3c' ELSE 'relay-b-19d2' END, expires_at = now() + interval '9 seconds', epoch = 3 WHERE shard < 250`,
		// A message waiting for its retry holds back the next one of its key.
		`INSERT INTO sagabox.outbox_messages (id, topic, key, payload, attempts, next_attempt_at, last_error)
VALUES (gen_random_uuid(), 'payment.commands', 'o-9', '{}', 2, now() + interval '20 seconds', 'kafka: [5] Leader Not Available'),
       (gen_random_uuid(), 'payment.commands', 'o-9', '{}', 0, NULL, NULL)`,
		// A day of finished sagas: most complete in ~120ms, some compensate, a few fail.
		`INSERT INTO sagabox.saga_instances (id, type, status, payload, created_at, updated_at, finished_at)
SELECT gen_random_uuid(), CASE WHEN g % 3 = 0 THEN 'transfer' ELSE 'shop' END,
       CASE WHEN g % 23 = 0 THEN 'failed' WHEN g % 7 = 0 THEN 'compensated' ELSE 'completed' END, '{}',
       t, t + d, CASE WHEN g % 23 = 0 THEN NULL ELSE t + d END
FROM generate_series(1, 3000) g,
     LATERAL (SELECT now() - (g * interval '28 seconds') AS t,
                     (80 + 60 * random() + CASE WHEN g % 50 = 0 THEN 900 ELSE 0 END + 40 * sin(g / 300.0)) * interval '1 millisecond' AS d) x`,
	} {
		if _, err := f.db.Pool.Exec(ctx0, sql); err != nil {
			t.Fatal(err)
		}
	}
	srv := f.serve(t, console.Config{})
	ctx := browser(t)
	for _, p := range []struct{ name, path, wait string }{
		{"relays", "/relays", "#leases"},
		{"list", "/sagas", "#sagas"},
		{"list-failed", "/sagas?status=failed&status=timeout", "#sagas"},
		{"detail", "/sagas/" + f.ids[sagastate.SagaCompensated].String(), "#timeline svg"},
		{"detail-failed", "/sagas/" + f.ids[sagastate.SagaFailed].String(), "#timeline svg"},
		{"confirm", "/sagas/" + f.ids[sagastate.SagaFailed].String() + "/abort", "#confirm"},
		{"outbox", "/outbox", "#dead"},
		{"inbox", "/inbox", "#dead"},
		{"stats", "/stats?window=24h", "svg.chart"},
	} {
		run(t, ctx, chromedp.Navigate(srv.URL+p.path), chromedp.WaitVisible(chromedp.CSS(p.wait)))
		screenshot(t, ctx, p.name)
	}
}
