package main

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/sagabox/sagabox/internal/demo"
	"github.com/sagabox/sagabox/outbox"
)

// transferRow is one transfer's outcome in the summary.
type transferRow struct {
	ID        uuid.UUID `json:"id"`
	Transfer  int       `json:"transfer"`
	Source    string    `json:"source"`
	Target    string    `json:"target"`
	Amount    int64     `json:"amount"`
	Status    string    `json:"status"`
	Expected  string    `json:"expected"`
	Reason    string    `json:"reason,omitempty"`
	TTCMillis float64   `json:"time_to_consistency_ms"`
}

var accounts = []string{"alice", "bob", "carol", "dave"}

// frozenAccount accepts no credit: transfers to it are debited, fail to credit, and
// are reversed by the compensating refund.
const frozenAccount = "erin"

// makeTransfer returns the ith transfer (from 1): every kth goes to the frozen
// account (reversed), every 7th other one asks for more than any balance (rejected).
func makeTransfer(i, k int) (demo.Transfer, string) {
	id, _ := uuid.NewV7()
	t := demo.Transfer{ID: id, Source: accounts[i%len(accounts)], Target: accounts[(i+1)%len(accounts)], Amount: int64(10 + (i*53)%300)}
	switch {
	case k > 0 && i%k == 0:
		t.Target = frozenAccount
		return t, demo.TransferReversed
	case i%7 == 0:
		t.Amount = 1_000_000_000
		return t, demo.TransferRejected
	}
	return t, demo.TransferCompleted
}

func runTransfers(ctx context.Context, c *config) error {
	writer, err := outbox.New(outbox.Config{Schema: c.schema})
	if err != nil {
		return err
	}
	topics := demo.TransferTopics{}
	// Topics default inside Bank; a throwaway Services value tells us their names.
	probe, _ := demo.NewServices(demo.Schemas{})
	topics = probe.Bank(writer, topics).Topics()
	in, err := startInfra(ctx, c, true, []string{topics.Debits, topics.Credits, topics.Audit})
	if err != nil {
		return err
	}
	defer in.close()
	bank := in.svc.Bank(writer, topics)
	out := c.out()
	fmt.Fprintf(out, "sagabox transfer demo (choreography: outbox + inbox, no orchestrator): %d transfers, %s, %d in flight%s\n",
		c.orders, frozenText(c.declineEvery), c.concurrency, dupText(c.duplicate))
	fmt.Fprintf(out, "  on %s\n", in.describe)
	fmt.Fprintf(out, "  flow: debit source → credit target → audit; a failed credit emits credit_failed and the debit is refunded\n")

	initial := map[string]int64{frozenAccount: 0}
	for _, a := range accounts {
		initial[a] = 100_000
	}
	if err := bank.OpenAccounts(ctx, in.pool, initial, frozenAccount); err != nil {
		return err
	}
	consumers, err := bank.Consumers(in.pool, in.consumerConfig(c))
	if err != nil {
		return err
	}
	svcs, runCtx := newServices(ctx)
	if err := svcs.runRelay(runCtx, c, in); err != nil {
		return svcs.stop(ctx, err)
	}
	for i, cons := range consumers {
		svcs.run(runCtx, []string{"debit", "credit", "audit"}[i]+" service", cons.Run)
	}
	start := time.Now()
	rows, driveErr := driveTransfers(runCtx, c, in, bank, start)
	elapsed := time.Since(start)
	if err := svcs.stop(ctx, driveErr); err != nil {
		return err
	}
	return reportTransfers(ctx, c, in, bank, rows, elapsed, initial)
}

func driveTransfers(ctx context.Context, c *config, in *infra, bank *demo.Bank, start time.Time) ([]transferRow, error) {
	rows := make([]transferRow, c.orders)
	var settled atomic.Int64
	deadline := start.Add(c.timeout)
	jobs := make(chan int)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	statusSQL := `SELECT "status" FROM ` + pgx.Identifier{in.svc.Schemas().Bank, "transfers"}.Sanitize() + ` WHERE "id" = $1`
	for w := 0; w < c.concurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				t, expected := makeTransfer(i+1, c.declineEvery)
				rows[i] = transferRow{ID: t.ID, Transfer: i + 1, Source: t.Source, Target: t.Target, Amount: t.Amount, Expected: expected}
				err := pgx.BeginFunc(ctx, in.pool, func(tx pgx.Tx) error { return bank.Request(ctx, tx, t) })
				// Choreography has no saga state to wait on: poll the transfer's status.
				for err == nil {
					var status string
					if err = in.pool.QueryRow(ctx, statusSQL, t.ID).Scan(&status); err != nil {
						break
					}
					if status == demo.TransferCompleted || status == demo.TransferReversed || status == demo.TransferRejected {
						settled.Add(1)
						break
					}
					if time.Now().After(deadline) {
						err = fmt.Errorf("%w: transfer %s still %s at --timeout", errUnfinished, t.ID, status)
						break
					}
					select {
					case <-ctx.Done():
						err = ctx.Err()
					case <-time.After(10 * time.Millisecond):
					}
				}
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
				}
			}
		}()
	}
	progress := time.NewTicker(time.Second)
	defer progress.Stop()
	i := 0
	for i < c.orders {
		select {
		case jobs <- i:
			i++
		case <-progress.C:
			fmt.Fprintf(c.progress(), "  [%4.1fs] %d/%d transfers settled\n", time.Since(start).Seconds(), settled.Load(), c.orders)
		case <-ctx.Done():
			i = c.orders
		}
	}
	close(jobs)
	wg.Wait()
	fmt.Fprintf(c.progress(), "  [%4.1fs] %d/%d transfers settled\n", time.Since(start).Seconds(), settled.Load(), c.orders)
	return rows, firstErr
}

func reportTransfers(ctx context.Context, c *config, in *infra, bank *demo.Bank, rows []transferRow, elapsed time.Duration, initial map[string]int64) error {
	sum := summary{Flow: "transfer", Count: c.orders, DeclineEvery: c.declineEvery, Concurrency: c.concurrency,
		DuplicateDelivery: c.duplicate, Totals: map[string]int{}}
	transfers := pgx.Identifier{in.svc.Schemas().Bank, "transfers"}.Sanitize()
	var ids []uuid.UUID
	var ttc []float64
	var unexpected []string
	var reversed uuid.UUID
	for i := range rows {
		r := &rows[i]
		if r.ID == uuid.Nil {
			continue
		}
		ids = append(ids, r.ID)
		var created, updated time.Time
		if err := in.pool.QueryRow(ctx, `SELECT "status", "reason", "created_at", "updated_at" FROM `+transfers+` WHERE "id" = $1`, r.ID).
			Scan(&r.Status, &r.Reason, &created, &updated); err != nil {
			return err
		}
		sum.Totals[r.Status]++
		if r.Status == demo.TransferCompleted || r.Status == demo.TransferReversed || r.Status == demo.TransferRejected {
			r.TTCMillis = float64(updated.Sub(created).Microseconds()) / 1000
			ttc = append(ttc, r.TTCMillis)
		}
		if r.Status != r.Expected {
			unexpected = append(unexpected, fmt.Sprintf("transfer %d (%s → %s, %d) %s, expected %s", r.Transfer, r.Source, r.Target, r.Amount, r.Status, r.Expected))
		}
		if r.Status == demo.TransferReversed && reversed == uuid.Nil {
			reversed = r.ID
		}
	}
	sum.Transfers = rows
	sum.DurationMS = float64(elapsed.Microseconds()) / 1000
	sum.ThroughputPerS = float64(len(ttc)) / elapsed.Seconds()
	sum.TimeToConsistency = percentiles(ttc)
	rep, err := bank.CheckBank(ctx, in.pool, initial, ids)
	if err != nil {
		return err
	}
	inv := outcomeCheck(len(ids), unexpected)
	inv.Name = "every transfer settled as expected"
	inv.Detail = strings.Replace(inv.Detail, "saga(s): orders above 1000 compensated, the others completed",
		"transfer(s): to the frozen account reversed, above any balance rejected, the others completed", 1)
	sum.Invariants = append(demo.Report{inv}, rep...)
	sum.OK = sum.Invariants.Err() == nil

	out := c.out()
	fmt.Fprintln(out, "\nSummary")
	for _, s := range []string{demo.TransferCompleted, demo.TransferReversed, demo.TransferRejected} {
		fmt.Fprintf(out, "  %-20s %d\n", s, sum.Totals[s])
	}
	fmt.Fprintf(out, "  throughput           %.1f transfers/s (%d in %s)\n", sum.ThroughputPerS, len(ttc), elapsed.Round(time.Millisecond))
	fmt.Fprintf(out, "  time to consistency  p50 %s  p99 %s  max %s\n", ms(sum.TimeToConsistency.P50), ms(sum.TimeToConsistency.P99), ms(sum.TimeToConsistency.Max))
	if c.timelines && reversed != uuid.Nil {
		if err := printTransferFlow(ctx, out, in, reversed); err != nil {
			return err
		}
	}
	return finish(c, &sum)
}

// printTransferFlow shows what happened to one reversed transfer, from the bank's own
// tables: the choreography leaves no saga log, only business records.
func printTransferFlow(ctx context.Context, out interface{ Write([]byte) (int, error) }, in *infra, id uuid.UUID) error {
	bank := in.svc.Schemas().Bank
	var src, dst, reason string
	var amount int64
	var created time.Time
	if err := in.pool.QueryRow(ctx, `SELECT "source", "target", "amount", "reason", "created_at" FROM `+
		pgx.Identifier{bank, "transfers"}.Sanitize()+` WHERE "id" = $1`, id).Scan(&src, &dst, &amount, &reason, &created); err != nil {
		return err
	}
	fmt.Fprintf(out, "\nFlow of a reversed transfer %s:\n", id)
	fmt.Fprintf(out, "  +%-9s requested      %s → %s, %d\n", "0ms", src, dst, amount)
	rows, err := in.pool.Query(ctx, `SELECT "kind", "account", "amount", "at" FROM `+pgx.Identifier{bank, "ledger"}.Sanitize()+`
		WHERE "transfer_id" = $1
		UNION ALL SELECT 'audit: ' || "outcome", '', 0, "at" FROM `+pgx.Identifier{bank, "audit_log"}.Sanitize()+` WHERE "transfer_id" = $1
		ORDER BY 4`, id)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var kind, acct string
		var amt int64
		var at time.Time
		if err := rows.Scan(&kind, &acct, &amt, &at); err != nil {
			return err
		}
		line := kind
		switch kind {
		case "debit":
			line = fmt.Sprintf("debited        %s -%d", acct, amt)
		case "refund":
			line = fmt.Sprintf("refunded       %s +%d  (compensation after: %s)", acct, amt, reason)
		case "credit":
			line = fmt.Sprintf("credited       %s +%d", acct, amt)
		}
		fmt.Fprintf(out, "  +%-9s %s\n", at.Sub(created).Round(100*time.Microsecond), line)
	}
	return rows.Err()
}

func frozenText(k int) string {
	if k == 0 {
		return "none to the frozen account"
	}
	return fmt.Sprintf("every %s to a frozen account (reversed), every 7th other above any balance (rejected)", ordinal(k))
}
