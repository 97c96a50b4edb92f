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
