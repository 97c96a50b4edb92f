package outbox_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/sagabox/sagabox/internal/testenv"
	"github.com/sagabox/sagabox/outbox"
)

// TestClaimHoldsBackOnlyRowsBehindAWaitingRowOfTheirKey pins the claim's retry rule
// through both of its paths: with no row waiting for a retry (the per-row lookup is
// skipped), and with one (it runs): a waiting row holds back the later rows of its
// key only; earlier rows of the key, other keys and rows without a key flow; a
// retry that is due holds nothing back. Each case runs for a relay owning every
// shard (claim_all) and one listing its shards (claim).
func TestClaimHoldsBackOnlyRowsBehindAWaitingRowOfTheirKey(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.NewDB(t)
	msgs := []outbox.Message{
		{Topic: "t", Key: "a", Payload: []byte("a1")},
		{Topic: "t", Key: "a", Payload: []byte("a2")}, // waits for a retry in the second case
		{Topic: "t", Key: "a", Payload: []byte("a3")},
		{Topic: "t", Key: "b", Payload: []byte("b1")},
		{Topic: "t", Payload: []byte("u1")}, // no key
		{Topic: "t", Payload: []byte("u2")}, // no key, waits for a retry in the second case
		{Topic: "t", Payload: []byte("u3")},
	}
	if err := outbox.Enqueue(ctx, db.Pool, msgs...); err != nil {
		t.Fatal(err)
	}
	store := outbox.NewStore("")
	every := make([]int16, 256)
	for i := range every {
		every[i] = int16(i)
	}
	// Claim until the rows expected come.
	claim := func(t *testing.T, now time.Time, want ...string) {
		t.Helper()
		for _, shards := range [][]int16{nil, every} {
			var got []string
			for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
				rows, _, err := store.Claim(ctx, db.Pool, shards, now, 100)
				if err != nil {
					t.Fatal(err)
				}
				got = got[:0]
				for _, r := range rows {
					got = append(got, string(r.Payload))
				}
				if slices.Equal(got, want) {
					break
				}
			}
			if !slices.Equal(got, want) {
				t.Fatalf("claim of shards %v... (%d): %v, want %v", shards[:min(len(shards), 3)], len(shards), got, want)
			}
		}
	}
	now := time.Now()
	t.Run("NoRowWaits", func(t *testing.T) {
		claim(t, now, "a1", "a2", "a3", "b1", "u1", "u2", "u3")
	})
	later := now.Add(time.Hour)
	if err := store.Settle(ctx, db.Pool, nil, []outbox.Failure{
		{ID: msgs[1].ID, Err: "refused", NextAttemptAt: &later},
		{ID: msgs[5].ID, Err: "refused", NextAttemptAt: &later},
	}); err != nil {
		t.Fatal(err)
	}
	t.Run("OneShard", func(t *testing.T) {
		var b, unkeyed int16
		if err := db.Pool.QueryRow(ctx, `SELECT (hashtext('b') & 255)::smallint, (hashtext('') & 255)::smallint`).Scan(&b, &unkeyed); err != nil {
			t.Fatal(err)
		}
		if b == unkeyed {
			t.Skip("key b shares the shard of rows without a key")
		}
		for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			rows, _, err := store.Claim(ctx, db.Pool, []int16{b}, now, 100)
			if err != nil {
				t.Fatal(err)
			}
			if len(rows) == 1 && string(rows[0].Payload) == "b1" {
				return
			}
			if len(rows) > 1 || time.Now().After(deadline) {
				t.Fatalf("claim of key b's shard %d: %d rows, want b1 only", b, len(rows))
			}
		}
	})
	t.Run("RowsWait", func(t *testing.T) {
		claim(t, now, "a1", "b1", "u1", "u3")
	})
	t.Run("RetriesDue", func(t *testing.T) {
		claim(t, later.Add(time.Second), "a1", "a2", "a3", "b1", "u1", "u2", "u3")
	})
}

// TestClaimsOfARunLeaveRowsCommittedAfterItsFirstClaim: a claim that follows on
// with a Cursor scans only after the rows the one before scanned, so a row that
// commits behind the cursor (its transaction took its seq early) waits for the
// next run. A later row of its key, committed after it, must wait too, or it
// would be published first: the claims of a run take only rows its first claim's
// snapshot saw.
func TestClaimsOfARunLeaveRowsCommittedAfterItsFirstClaim(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.NewDB(t)
	store := outbox.NewStore("")
	payloads := func(rows []outbox.Claimed) []string {
		var out []string
		for _, r := range rows {
			out = append(out, string(r.Payload))
		}
		return out
	}

	late, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer late.Rollback(ctx)
	if err := outbox.Enqueue(ctx, late, outbox.Message{Topic: "t", Key: "k", Payload: []byte("k1")}); err != nil {
		t.Fatal(err)
	}
	if err := outbox.Enqueue(ctx, db.Pool, outbox.Message{Topic: "t", Key: "x", Payload: []byte("x1")}); err != nil {
		t.Fatal(err)
	}
	cur := &outbox.Cursor{}
	now := time.Now()
	first, _, err := store.ClaimNext(ctx, db.Pool, nil, now, 1, cur)
	if err != nil {
		t.Fatal(err)
	}
	if got := payloads(first); !slices.Equal(got, []string{"x1"}) {
		t.Fatalf("first claim took %q; want [x1] (k1 is not committed)", got)
	}
	if err := late.Commit(ctx); err != nil { // k1 is now behind the cursor
		t.Fatal(err)
	}
	if err := outbox.Enqueue(ctx, db.Pool, outbox.Message{Topic: "t", Key: "k", Payload: []byte("k2")}); err != nil {
		t.Fatal(err)
	}
	next, scanned, err := store.ClaimNext(ctx, db.Pool, nil, now, 10, cur)
	if err != nil {
		t.Fatal(err)
	}
	if len(next) != 0 || scanned != 1 || !cur.Blocked["k"] {
		t.Fatalf("the run's next claim took %q (scanned %d, key k blocked: %v); want nothing: k2 committed after the run's first claim, and k1 before it is behind the cursor",
			payloads(next), scanned, cur.Blocked["k"])
	}
	again, _, err := store.Claim(ctx, db.Pool, nil, time.Now(), 10)
	if err != nil {
		t.Fatal(err)
	}
	if got := payloads(again); !slices.Equal(got, []string{"k1", "x1", "k2"}) {
		t.Fatalf("a new run took %q; want [k1 x1 k2]", got)
	}
}

// TestClaimOfLargeMessagesStopsAtMaxBytes: with a row limit of 2000 and messages of
// 300 KiB, a claim held 600 MiB before MaxBytes; now the server ends it at the row
// that reaches MaxBytes (scanned counts the rows it sent), the claim reports it
// full, and the next claim of the cursor goes on from the row after it, so every
// row comes once, in order.
func TestClaimOfLargeMessagesStopsAtMaxBytes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.NewDB(t)
	var msgs []outbox.Message
	for i := range 7 {
		p := make([]byte, 300<<10)
		p[0] = byte('a' + i)
		msgs = append(msgs, outbox.Message{Topic: "t", Key: "k", Payload: p})
	}
	if err := outbox.Enqueue(ctx, db.Pool, msgs...); err != nil {
		t.Fatal(err)
	}
	store := outbox.NewStore("")
	cur := &outbox.Cursor{MaxBytes: 700 << 10} // reached by the third row
	var got []string
	for i, want := range []int{3, 3, 1, 0} {
		rows, scanned, err := store.ClaimNext(ctx, db.Pool, nil, time.Now(), 2000, cur)
		if err != nil {
			t.Fatal(err)
		}
		if len(rows) != want || scanned != want {
			t.Fatalf("claim %d returned %d rows (%d scanned), want %d", i+1, len(rows), scanned, want)
		}
		if full := want == 3; cur.Full != full {
			t.Fatalf("claim %d: Full is %v, want %v", i+1, cur.Full, full)
		}
		for _, r := range rows {
			got = append(got, string(r.Payload[:1]))
		}
	}
	if want := []string{"a", "b", "c", "d", "e", "f", "g"}; !slices.Equal(got, want) {
		t.Fatalf("claimed %v, want %v", got, want)
	}
}
