package outbox_test

import (
	"context"
	"testing"
	"time"

	"github.com/sagabox/sagabox/internal/testenv"
	"github.com/sagabox/sagabox/outbox"
)

// claimAll claims every pending row, claiming again until want rows came.
func claimAll(t *testing.T, s *outbox.Store, db outbox.Querier, want int) []outbox.Claimed {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		claimed, _, err := s.Claim(context.Background(), db, nil, time.Now(), 100)
		if err != nil {
			t.Fatal(err)
		}
		if len(claimed) >= want {
			return claimed
		}
		if time.Now().After(deadline) {
			t.Fatalf("claimed %d rows in 30 s, want %d", len(claimed), want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// locsOf returns the Locs of claimed, to settle them as published.
func locsOf(claimed []outbox.Claimed) []outbox.Loc {
	locs := make([]outbox.Loc, len(claimed))
	for i, c := range claimed {
		locs[i] = c.Loc
	}
	return locs
}

func pendingIDs(t *testing.T, db *testenv.DB) map[string]bool {
	t.Helper()
	rows, err := db.Pool.Query(context.Background(), `SELECT "id"::text FROM "sagabox"."outbox_messages" WHERE "dead_at" IS NULL`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	ids := map[string]bool{}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		ids[id] = true
	}
	return ids
}

// TestSettleKeepsARowChangedSinceItsClaim: a settle deletes a published row where
// its claim found it, and only while it is that row. One changed since (a relay
// that took its shard over recorded a failed attempt on it) stays, to be published
// again: a duplicate, never a row deleted that was not what the broker acknowledged.
func TestSettleKeepsARowChangedSinceItsClaim(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.NewDB(t)
	if err := outbox.Enqueue(ctx, db.Pool, outbox.Message{Topic: "t", Key: "k", Payload: []byte("1")}, outbox.Message{Topic: "t", Key: "j", Payload: []byte("2")}); err != nil {
		t.Fatal(err)
	}
	s := outbox.NewStore("")
	claimed := claimAll(t, s, db.Pool, 2)
	changed := claimed[0]
	next := time.Now().Add(-time.Second) // due again at once
	if err := s.Settle(ctx, db.Pool, nil, []outbox.Failure{{ID: changed.ID, Err: "refused", NextAttemptAt: &next}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Settle(ctx, db.Pool, locsOf(claimed), nil); err != nil {
		t.Fatal(err)
	}
	if ids := pendingIDs(t, db); len(ids) != 1 || !ids[changed.ID.String()] {
		t.Fatalf("pending after the settle: %v; want only the row changed since its claim, %v", ids, changed.ID)
	}
}

// TestSettleDoesNotDeleteANewRowInAClaimedRowsPlace: once a claimed row is gone
// (deleted by another relay, say) and vacuumed, a new row can take its place in
// the table (its ctid). A settle of the old claim must leave the new row: without
// the check of the id, the new row, never published, was deleted, a message lost.
func TestSettleDoesNotDeleteANewRowInAClaimedRowsPlace(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.NewDB(t)
	if err := outbox.Enqueue(ctx, db.Pool, outbox.Message{Topic: "t", Key: "old", Payload: []byte("1")}); err != nil {
		t.Fatal(err)
	}
	s := outbox.NewStore("")
	old := claimAll(t, s, db.Pool, 1)[0]
	if _, err := db.Pool.Exec(ctx, `DELETE FROM "sagabox"."outbox_messages"`); err != nil {
		t.Fatal(err)
	}
	// VACUUM frees the place once no transaction of this database can see the old
	// row (other tests' databases do not count); the new row then takes it.
	var fresh outbox.Claimed
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if _, err := db.Pool.Exec(ctx, `VACUUM "sagabox"."outbox_messages"`); err != nil {
			t.Fatal(err)
		}
		if err := outbox.Enqueue(ctx, db.Pool, outbox.Message{Topic: "t", Key: "new", Payload: []byte("2")}); err != nil {
			t.Fatal(err)
		}
		fresh = claimAll(t, s, db.Pool, 1)[0]
		if outbox.SamePlace(fresh.Loc, old.Loc) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no new row took the old row's place in 30 s")
		}
		if _, err := db.Pool.Exec(ctx, `DELETE FROM "sagabox"."outbox_messages"`); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Settle(ctx, db.Pool, []outbox.Loc{old.Loc}, nil); err != nil {
		t.Fatal(err)
	}
	if ids := pendingIDs(t, db); !ids[fresh.ID.String()] {
		t.Fatalf("pending after settling the old claim: %v; the new row %v in its place was deleted", ids, fresh.ID)
	}
}

// TestEmptyPayloadIsClaimedEmptyNotNull: a claim copies payloads into chunks it
// allocates on the first non-empty one; an empty payload before that came out
// nil, which the publisher sends as a null record value, a tombstone that deletes
// the key's history on a compacted topic.
func TestEmptyPayloadIsClaimedEmptyNotNull(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.NewDB(t)
	if err := outbox.Enqueue(ctx, db.Pool,
		outbox.Message{Topic: "t", Key: "a", Payload: []byte{}},
		outbox.Message{Topic: "t", Key: "b", Payload: []byte("x")},
		outbox.Message{Topic: "t", Key: "c", Payload: []byte{}}); err != nil {
		t.Fatal(err)
	}
	for _, c := range claimAll(t, outbox.NewStore(""), db.Pool, 3) {
		if c.Payload == nil {
			t.Errorf("row %s (key %q) claimed with a nil payload, want empty", c.ID, c.Key)
		}
	}
}

// TestSettleInACallersTransactionPutsItsPlanSettingsBack: the settle plans without
// sequential scans and with generic plans (outbox_messages.sql, settle_plan); a
// caller's transaction has its own settings again after it.
func TestSettleInACallersTransactionPutsItsPlanSettingsBack(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.NewDB(t)
	s := outbox.NewStore("")
	fillRows(t, db, 3)
	claimed := claimAll(t, s, db.Pool, 3)
	tx, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `SET LOCAL plan_cache_mode = force_custom_plan`); err != nil {
		t.Fatal(err)
	}
	if err := s.Settle(ctx, tx, locsOf(claimed), nil); err != nil {
		t.Fatal(err)
	}
	var seqscan, mode string
	if err := tx.QueryRow(ctx, `SELECT current_setting('enable_seqscan'), current_setting('plan_cache_mode')`).Scan(&seqscan, &mode); err != nil {
		t.Fatal(err)
	}
	if seqscan != "on" || mode != "force_custom_plan" {
		t.Errorf("after the settle the transaction has enable_seqscan %s and plan_cache_mode %s, want on and force_custom_plan", seqscan, mode)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if n := countRows(t, db); n != 0 {
		t.Errorf("%d rows left after the settle committed, want 0", n)
	}
}
