package demo_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/sagabox/sagabox/internal/demo"
	"github.com/sagabox/sagabox/outbox"
)

// inTx runs one service step in its own transaction, as the consumer would.
func inTx(t *testing.T, b bundle, fn func(tx pgx.Tx) error) error {
	t.Helper()
	return pgx.BeginFunc(context.Background(), b.pool, fn)
}

// emitted returns the events waiting in the outbox for transfer id, oldest first.
func emitted(t *testing.T, b bundle, id uuid.UUID) []demo.TransferEvent {
	t.Helper()
	rows, err := b.pool.Query(context.Background(), `SELECT "payload" FROM "sagabox"."outbox_messages" WHERE "key" = $1 ORDER BY "seq"`, id.String())
	if err != nil {
		t.Fatal(err)
	}
	var out []demo.TransferEvent
	for rows.Next() {
		var p []byte
		if err := rows.Scan(&p); err != nil {
			t.Fatal(err)
		}
		var ev demo.TransferEvent
		if err := json.Unmarshal(p, &ev); err != nil {
			t.Fatal(err)
		}
		out = append(out, ev)
	}
	return out
}

func TestBank(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, nil)
	w, err := outbox.New(outbox.Config{})
	if err != nil {
		t.Fatal(err)
	}
	bank := b.svc.Bank(w, demo.TransferTopics{})
	initial := map[string]int64{"alice": 500, "bob": 0, "frozen": 0}
	if err := bank.OpenAccounts(ctx, b.pool, initial, "frozen"); err != nil {
		t.Fatal(err)
	}
	// follow delivers each emitted event to the service that consumes it until the flow ends.
	follow := func(t *testing.T, tr demo.Transfer) {
		t.Helper()
		if err := inTx(t, b, func(tx pgx.Tx) error { return bank.Request(ctx, tx, tr) }); err != nil {
			t.Fatal(err)
		}
		for i := 0; ; i++ {
			evs := emitted(t, b, tr.ID)
			if i >= len(evs) {
				return
			}
			ev := evs[i]
			var handle func(context.Context, pgx.Tx, demo.TransferEvent) error
			switch ev.Type {
			case demo.EvTransferRequested, demo.EvTransferCreditFailed:
				handle = bank.Debit
			case demo.EvTransferDebited:
				handle = bank.Credit
			default:
				handle = bank.Audit
			}
			if err := inTx(t, b, func(tx pgx.Tx) error { return handle(ctx, tx, ev) }); err != nil {
				t.Fatalf("%s: %v", ev.Type, err)
			}
		}
	}
	ok := demo.Transfer{ID: uuid.New(), Source: "alice", Target: "bob", Amount: 200}
	reversed := demo.Transfer{ID: uuid.New(), Source: "alice", Target: "frozen", Amount: 100}
	rejected := demo.Transfer{ID: uuid.New(), Source: "bob", Target: "alice", Amount: 1000}
	for _, tr := range []demo.Transfer{ok, reversed, rejected} {
		follow(t, tr)
	}
	var types []string
	for _, ev := range emitted(t, b, reversed.ID) {
		types = append(types, ev.Type)
	}
	if got := strings.Join(types, " "); got != "transfer.requested transfer.debited transfer.credit_failed transfer.reversed" {
		t.Fatalf("reversed transfer's events: %s", got)
	}
	rep, err := bank.CheckBank(ctx, b.pool, initial, []uuid.UUID{ok.ID, reversed.ID, rejected.ID})
	if err != nil {
		t.Fatal(err)
	}
	if err := rep.Err(); err != nil {
		t.Fatal(err)
	}
	var alice, bob int64
	if err := b.pool.QueryRow(ctx, `SELECT (SELECT "balance" FROM "demo_bank"."accounts" WHERE "id" = 'alice'), (SELECT "balance" FROM "demo_bank"."accounts" WHERE "id" = 'bob')`).Scan(&alice, &bob); err != nil {
		t.Fatal(err)
	}
	if alice != 300 || bob != 200 {
		t.Fatalf("alice %d, bob %d; want 300, 200", alice, bob)
	}

	t.Run("SecondDebitRefusedByTheLedger", func(t *testing.T) {
		// Were the inbox bypassed, a duplicate debit fails instead of moving money twice.
		err := inTx(t, b, func(tx pgx.Tx) error {
			return bank.Debit(ctx, tx, demo.TransferEvent{Type: demo.EvTransferRequested, Transfer: ok})
		})
		if err == nil || !strings.Contains(err.Error(), "ledger_pkey") {
			t.Fatalf("err %v, want the ledger's primary key to refuse it", err)
		}
	})

	t.Run("CheckCatchesLostMoney", func(t *testing.T) {
		if _, err := b.pool.Exec(ctx, `UPDATE "demo_bank"."accounts" SET "balance" = "balance" - 1 WHERE "id" = 'bob'`); err != nil {
			t.Fatal(err)
		}
		rep, err := bank.CheckBank(ctx, b.pool, initial, []uuid.UUID{ok.ID, reversed.ID, rejected.ID})
		if err != nil {
			t.Fatal(err)
		}
		if err := rep.Err(); err == nil || !strings.Contains(err.Error(), "money conserved") {
			t.Fatalf("err %v", err)
		}
	})

	t.Run("BadRequests", func(t *testing.T) {
		err := inTx(t, b, func(tx pgx.Tx) error {
			return bank.Request(ctx, tx, demo.Transfer{Source: "alice", Target: "alice", Amount: -5})
		})
		for _, want := range []string{"id is empty", `source and target are both "alice"`, "amount is -5"} {
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Fatalf("err %v, want %q", err, want)
			}
		}
	})
}
