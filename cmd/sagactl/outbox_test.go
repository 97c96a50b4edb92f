package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/sagabox/sagabox/internal/pguuid"
	"github.com/sagabox/sagabox/internal/testenv"
	"github.com/sagabox/sagabox/outbox"
)

// enqueue commits n messages and returns their ids.
func enqueue(t *testing.T, db *testenv.DB, n int) []uuid.UUID {
	t.Helper()
	ctx := context.Background()
	msgs := make([]outbox.Message, n)
	for i := range msgs {
		msgs[i] = outbox.Message{Topic: "orders", Key: "k", Payload: []byte("x")}
	}
	if err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error { return outbox.Enqueue(ctx, tx, msgs...) }); err != nil {
		t.Fatal(err)
	}
	ids := make([]uuid.UUID, n)
	for i, m := range msgs {
		ids[i] = m.ID
	}
	return ids
}

// kill dead-letters ids as the relay does after its last attempt.
func kill(t *testing.T, db *testenv.DB, ids ...uuid.UUID) {
	t.Helper()
	if _, err := db.Pool.Exec(context.Background(), `UPDATE "sagabox"."outbox_messages"
		SET "dead_at" = now(), "attempts" = 5, "last_error" = 'kafka: message too large'
		WHERE "id" = ANY($1)`, pguuid.Array(ids)); err != nil {
		t.Fatal(err)
	}
}

type outboxStatusJSON struct {
	Pending     int64 `json:"pending"`
	Dead        int64 `json:"dead"`
	DeadLetters []struct {
		ID        string `json:"id"`
		Attempts  int    `json:"attempts"`
		LastError string `json:"last_error"`
	} `json:"dead_letters"`
}

func readOutboxStatus(t *testing.T, db *testenv.DB) outboxStatusJSON {
	t.Helper()
	r := mustOK(t, sagactl(t, db.URL, "outbox", "status", "--json"))
	var s outboxStatusJSON
	if err := json.Unmarshal([]byte(r.stdout), &s); err != nil {
		t.Fatalf("%v\n%s", err, r.stdout)
	}
	return s
}

func TestOutbox(t *testing.T) {
	t.Parallel()

	t.Run("StatusAndRetry", func(t *testing.T) {
		t.Parallel()
		db := testenv.NewDB(t)
		ids := enqueue(t, db, 5)
		kill(t, db, ids[0], ids[1], ids[2])

		s := readOutboxStatus(t, db)
		if s.Pending != 2 || s.Dead != 3 || len(s.DeadLetters) != 3 {
			t.Fatalf("status %+v, want 2 pending, 3 dead", s)
		}
		if d := s.DeadLetters[0]; d.Attempts != 5 || d.LastError != "kafka: message too large" {
			t.Fatalf("dead letter %+v", d)
		}
		r := mustOK(t, sagactl(t, db.URL, "outbox", "status"))
		for _, want := range []string{"PENDING", "DEAD LETTERS", ids[0].String(), "message too large", "sagactl outbox retry"} {
			if !strings.Contains(r.stdout, want) {
				t.Fatalf("human status lacks %q:\n%s", want, r.stdout)
			}
		}

		r = mustOK(t, sagactl(t, db.URL, "outbox", "retry", ids[0].String()))
		if !strings.Contains(r.stdout, "1 dead letter(s) made pending again") {
			t.Fatalf("retry printed %q", r.stdout)
		}
		if s := readOutboxStatus(t, db); s.Pending != 3 || s.Dead != 2 {
			t.Fatalf("after retrying one: %+v", s)
		}
		r = mustOK(t, sagactl(t, db.URL, "outbox", "retry", "--all", "--json", "--yes"))
		var out struct{ Retried int64 }
		if err := json.Unmarshal([]byte(r.stdout), &out); err != nil || out.Retried != 2 {
			t.Fatalf("retry --all: %v %s", err, r.stdout)
		}
		if s := readOutboxStatus(t, db); s.Pending != 5 || s.Dead != 0 {
			t.Fatalf("after retry --all: %+v", s)
		}
	})

	t.Run("RetryRefusesWrongIDs", func(t *testing.T) {
		t.Parallel()
		db := testenv.NewDB(t)
		ids := enqueue(t, db, 2)
		kill(t, db, ids[0])
		unknown := uuid.New()
		for _, tc := range []struct {
			args []string
			want string
		}{
			{[]string{ids[0].String(), unknown.String()}, "no outbox message " + unknown.String()},
			{[]string{ids[0].String(), ids[1].String()}, "message " + ids[1].String() + " is not dead-lettered"},
			{[]string{"not-a-uuid"}, `"not-a-uuid" is not a message id`},
			{nil, "or pass --all"},
			{[]string{ids[0].String(), "--all"}, "not both"},
		} {
			r := sagactl(t, db.URL, append([]string{"outbox", "retry"}, tc.args...)...)
			if r.code != 1 || !strings.Contains(r.stderr, tc.want) {
				t.Fatalf("%v: exit %d, stderr %q, want %q", tc.args, r.code, r.stderr, tc.want)
			}
		}
		// All or nothing: the valid id in a refused call stays dead.
		if s := readOutboxStatus(t, db); s.Dead != 1 {
			t.Fatalf("a refused retry changed rows: %+v", s)
		}
	})

	// --limit 0 used to list 100 dead letters (ListDead's default for 0).
	t.Run("StatusLimitZeroListsNone", func(t *testing.T) {
		t.Parallel()
		db := testenv.NewDB(t)
		ids := enqueue(t, db, 2)
		kill(t, db, ids...)
		r := mustOK(t, sagactl(t, db.URL, "outbox", "status", "--limit", "0", "--json"))
		var s outboxStatusJSON
		if err := json.Unmarshal([]byte(r.stdout), &s); err != nil || s.Dead != 2 || len(s.DeadLetters) != 0 {
			t.Fatalf("--limit 0: %v %+v; want 2 dead, none listed", err, s)
		}
		r = mustOK(t, sagactl(t, db.URL, "outbox", "status", "--limit", "0"))
		if strings.Contains(r.stdout, ids[0].String()) || !strings.Contains(r.stdout, "none listed with --limit 0") {
			t.Fatalf("--limit 0 printed:\n%s", r.stdout)
		}
		if r := sagactl(t, db.URL, "outbox", "status", "--limit", "-1"); r.code != 1 || !strings.Contains(r.stderr, "--limit is -1") {
			t.Fatalf("--limit -1: exit %d, stderr %q", r.code, r.stderr)
		}
	})

	// retry --all used to act at once; it now needs --yes (or a yes on a terminal) and
	// offers --dry-run.
	t.Run("RetryAllNeedsConfirmation", func(t *testing.T) {
		t.Parallel()
		db := testenv.NewDB(t)
		ids := enqueue(t, db, 3)
		kill(t, db, ids...)
		r := sagactl(t, db.URL, "outbox", "retry", "--all")
		if r.code != 1 || !strings.Contains(r.stderr, "pass --yes") || !strings.Contains(r.stderr, "all 3 dead letter(s)") {
			t.Fatalf("unconfirmed retry --all: exit %d, stderr %q", r.code, r.stderr)
		}
		r = mustOK(t, sagactl(t, db.URL, "outbox", "retry", "--all", "--dry-run"))
		if !strings.Contains(r.stdout, "would make 3 dead letter(s) pending again") {
			t.Fatalf("--dry-run printed %q", r.stdout)
		}
		if s := readOutboxStatus(t, db); s.Dead != 3 {
			t.Fatalf("refused and dry-run retries changed rows: %+v", s)
		}
		// On a terminal the question is asked; anything but "yes" does nothing.
		for _, tc := range []struct {
			answer   string
			wantDead int64
		}{{"no\n", 3}, {"yes\n", 0}} {
			answer, wantDead := tc.answer, tc.wantDead
			var out, errOut bytes.Buffer
			a := &app{stdout: &out, stderr: &errOut, getenv: func(k string) string { return map[string]string{"DATABASE_URL": db.URL}[k] },
				stdin: strings.NewReader(answer), interactive: true}
			a.run(context.Background(), []string{"outbox", "retry", "--all"})
			if !strings.Contains(errOut.String(), "Type yes to go on") {
				t.Fatalf("answer %q: no question asked; stderr %q", answer, errOut.String())
			}
			if s := readOutboxStatus(t, db); s.Dead != wantDead {
				t.Fatalf("answer %q: %d dead letters left, want %d", answer, s.Dead, wantDead)
			}
		}
	})

	t.Run("UnmigratedSchema", func(t *testing.T) {
		t.Parallel()
		db := testenv.NewDB(t)
		r := sagactl(t, db.URL, "outbox", "status", "--schema", "nothing_here")
		if r.code != 1 || !strings.Contains(r.stderr, "run 'sagactl migrate up --schema nothing_here' first") {
			t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
		}
	})
}
