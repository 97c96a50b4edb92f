package main

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"testing"

	"github.com/google/uuid"

	"github.com/sagabox/sagabox/inbox"
	"github.com/sagabox/sagabox/internal/testenv"
)

func addInboxDead(t *testing.T, db *testenv.DB, consumer string, offset int64) (int64, uuid.UUID) {
	t.Helper()
	store, err := inbox.NewStore("")
	if err != nil {
		t.Fatal(err)
	}
	id := uuid.New()
	ctx := context.Background()
	if _, err := store.AddDeadLetter(ctx, db.Pool, inbox.DeadLetter{Consumer: consumer, MessageID: id, Topic: "payments", Partition: 2, Offset: offset,
		Key: []byte("o-1"), Value: []byte(`{"amount":5}`), Headers: map[string]string{"saga-step": "charge"}, Attempts: 3, Reason: "no such account"}); err != nil {
		t.Fatal(err)
	}
	dead, err := store.ListDeadLetters(ctx, db.Pool, consumer, 100)
	if err != nil {
		t.Fatal(err)
	}
	return dead[len(dead)-1].ID, id
}

type inboxListJSON struct {
	DeadLetters []inboxDeadJSON `json:"dead_letters"`
}

func listInbox(t *testing.T, db *testenv.DB, args ...string) inboxListJSON {
	t.Helper()
	r := mustOK(t, sagactl(t, db.URL, append([]string{"inbox", "list", "--json"}, args...)...))
	var out inboxListJSON
	if err := json.Unmarshal([]byte(r.stdout), &out); err != nil {
		t.Fatalf("%v\n%s", err, r.stdout)
	}
	return out
}

func TestInboxListAndReplay(t *testing.T) {
	t.Parallel()
	db := testenv.NewDB(t)
	id1, msg1 := addInboxDead(t, db, "payments", 10)
	id2, _ := addInboxDead(t, db, "shipping", 11)

	all := listInbox(t, db)
	if len(all.DeadLetters) != 2 || all.DeadLetters[0].Reason != "no such account" || all.DeadLetters[0].Headers["saga-step"] != "charge" {
		t.Fatalf("inbox list: %+v", all)
	}
	if got := listInbox(t, db, "--consumer", "shipping"); len(got.DeadLetters) != 1 || got.DeadLetters[0].ID != id2 {
		t.Fatalf("inbox list --consumer shipping: %+v", got)
	}
	r := sagactl(t, db.URL, "inbox", "list")
	if r.code != 0 || !strings.Contains(r.stdout, "no such account") || !strings.Contains(r.stdout, "saga-step=charge") {
		t.Fatalf("inbox list table:\n%s\n%s", r.stdout, r.stderr)
	}

	// An unknown id replays nothing, not even the good one next to it.
	r = sagactl(t, db.URL, "inbox", "replay", strconv.FormatInt(id1, 10), "999999")
	if r.code != 1 || !strings.Contains(r.stderr, "no dead letter 999999") {
		t.Fatalf("replay with an unknown id: exit %d\n%s", r.code, r.stderr)
	}
	if got := listInbox(t, db); len(got.DeadLetters) != 2 {
		t.Fatalf("a failed replay removed dead letters: %+v", got)
	}
	for _, bad := range [][]string{{}, {"x"}, {"1", "--all"}, {"1", "--consumer", "c"}} {
		if r := sagactl(t, db.URL, append([]string{"inbox", "replay"}, bad...)...); r.code == 0 {
			t.Errorf("inbox replay %v succeeded", bad)
		}
	}

	mustOK(t, sagactl(t, db.URL, "inbox", "replay", strconv.FormatInt(id1, 10)))
	if got := listInbox(t, db); len(got.DeadLetters) != 1 || got.DeadLetters[0].ID != id2 {
		t.Fatalf("after replaying %d: %+v", id1, got)
	}
	var n int
	if err := db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM sagabox.outbox_messages WHERE id = $1 AND topic = 'payments'`, msg1).Scan(&n); err != nil || n != 1 {
		t.Fatalf("replayed message in the outbox: %d (%v)", n, err)
	}
	mustOK(t, sagactl(t, db.URL, "inbox", "replay", "--all", "--consumer", "shipping"))
	if got := listInbox(t, db); len(got.DeadLetters) != 0 {
		t.Fatalf("after --all: %+v", got)
	}
}
