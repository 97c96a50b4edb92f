package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

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
		WHERE "id" = ANY($1)`, ids); err != nil {
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
		r = mustOK(t, sagactl(t, db.URL, "outbox", "retry", "--all", "--json"))
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

	t.Run("UnmigratedSchema", func(t *testing.T) {
		t.Parallel()
		db := testenv.NewDB(t)
		r := sagactl(t, db.URL, "outbox", "status", "--schema", "nothing_here")
		if r.code != 1 || !strings.Contains(r.stderr, "run 'sagactl migrate up --schema nothing_here' first") {
			t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
		}
	})
}
