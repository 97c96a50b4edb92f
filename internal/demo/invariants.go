package demo

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/sagabox/sagabox/internal/pguuid"
)

// Invariant is one business rule and whether it held.
type Invariant struct {
	Name string `json:"name"`
	OK   bool   `json:"ok"`
	// Detail says what broke (or, when OK, what was checked).
	Detail string `json:"detail"`
}

// Report is the result of a Check: every invariant, held or not.
type Report []Invariant

// Err returns nil when every invariant held, else an ErrInvariant naming the broken ones.
func (r Report) Err() error {
	var errs []error
	for _, inv := range r {
		if !inv.OK {
			errs = append(errs, fmt.Errorf("%s: %s", inv.Name, inv.Detail))
		}
	}
	if len(errs) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %w", ErrInvariant, errors.Join(errs...))
}

func (r *Report) add(name string, broken []string, okDetail string) {
	if len(broken) == 0 {
		*r = append(*r, Invariant{Name: name, OK: true, Detail: okDetail})
		return
	}
	sort.Strings(broken)
	more := ""
	if len(broken) > 5 {
		more = fmt.Sprintf(" (and %d more)", len(broken)-5)
		broken = broken[:5]
	}
	*r = append(*r, Invariant{Name: name, Detail: strings.Join(broken, "; ") + more})
}

// CheckOrders verifies the order saga's invariants over the whole database. Stock
// conservation holds at every instant, sagas running or not: for every sku, what is on
// the shelf plus what live reservations hold is what was seeded. The other checks
// cover the sagas in outcomes (saga id → final status: "completed", "compensated",
// ...); pass every finished order saga of the database (FinishedOrders) to check
// them all.
func (s *Services) CheckOrders(ctx context.Context, db Querier, outcomes map[uuid.UUID]string) (Report, error) {
	var rep Report
	rows, err := db.Query(ctx, s.q["stockBalance"])
	if err != nil {
		return nil, fmt.Errorf("demo: check stock: %w", err)
	}
	var broken []string
	skus := 0
	for rows.Next() {
		var sku string
		var available, reserved, seeded int
		if err := rows.Scan(&sku, &available, &reserved, &seeded); err != nil {
			rows.Close()
			return nil, fmt.Errorf("demo: check stock: %w", err)
		}
		skus++
		if available+reserved != seeded {
			broken = append(broken, fmt.Sprintf("%s: %d available + %d reserved = %d, seeded %d", sku, available, reserved, available+reserved, seeded))
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("demo: check stock: %w", err)
	}
	rep.add("stock conserved", broken, fmt.Sprintf("%d sku(s): available + reserved = seeded, over every order in the database", skus))

	var completed, compensated []uuid.UUID
	for id, st := range outcomes {
		switch st {
		case "completed":
			completed = append(completed, id)
		case "compensated":
			compensated = append(compensated, id)
		}
	}

	broken, err = s.ids(ctx, db, "capturedForCancelled", compensated)
	if err != nil {
		return nil, err
	}
	rep.add("no payment captured for a compensated order", broken, fmt.Sprintf("%d compensated order(s), no captured payment", len(compensated)))

	broken, err = s.ids(ctx, db, "shippedCancelled", compensated)
	if err != nil {
		return nil, err
	}
	rep.add("no shipment for a cancelled order", broken, "no scheduled shipment for any cancelled order")

	broken, err = s.ids(ctx, db, "incompleteCompleted", completed)
	if err != nil {
		return nil, err
	}
	rep.add("completed orders fully applied", broken, fmt.Sprintf("%d order(s): created, reserved, paid, shipping scheduled", len(completed)))

	broken, err = s.ids(ctx, db, "leftoverCompensated", compensated)
	if err != nil {
		return nil, err
	}
	rep.add("compensated orders fully undone", broken, fmt.Sprintf("%d order(s): no live reservation, payment or shipment", len(compensated)))
	return rep, nil
}

// ids runs a query returning offending order ids and describes them.
func (s *Services) ids(ctx context.Context, db Querier, query string, arg []uuid.UUID) ([]string, error) {
	if arg == nil {
		arg = []uuid.UUID{}
	}
	rows, err := db.Query(ctx, s.q[query], pguuid.Array(arg))
	if err != nil {
		return nil, fmt.Errorf("demo: check %s: %w", query, err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var id uuid.UUID
		var what string
		if err := rows.Scan(&id, &what); err != nil {
			return nil, err
		}
		out = append(out, fmt.Sprintf("order %s: %s", id, what))
	}
	return out, rows.Err()
}

// CheckBank verifies the transfer flow once every transfer of a run (ids) has
// settled: money is conserved per account and in total, each transfer moved money
// exactly as its outcome says, and each has exactly one audit record. initial holds
// the balances when the run began.
func (b *Bank) CheckBank(ctx context.Context, db Querier, initial map[string]int64, ids []uuid.UUID) (Report, error) {
	if ids == nil {
		ids = []uuid.UUID{}
	}
	var rep Report
	var broken []string
	var total, initialTotal int64
	for acct, start := range initial {
		initialTotal += start
		var balance, delta int64
		if err := db.QueryRow(ctx, b.s.q["accountBalance"], acct, pguuid.Array(ids)).Scan(&balance, &delta); err != nil {
			return nil, fmt.Errorf("demo: check account %s: %w", acct, err)
		}
		total += balance
		if balance != start+delta {
			broken = append(broken, fmt.Sprintf("%s: balance %d, but opening %d + ledger %d = %d", acct, balance, start, delta, start+delta))
		}
	}
	if total != initialTotal {
		broken = append(broken, fmt.Sprintf("total %d, opened with %d", total, initialTotal))
	}
	rep.add("money conserved", broken, fmt.Sprintf("%d account(s), total %d = opening total, every balance matches its ledger", len(initial), total))

	for _, c := range []struct{ name, query, ok string }{
		{"every transfer settled", "unsettledTransfers", "every transfer completed, reversed or rejected"},
		{"ledger matches outcome", "ledgerMismatch", "completed: debit+credit; reversed: debit+refund; rejected: nothing"},
		{"audited exactly once", "auditMismatch", "one audit record per transfer, matching its outcome"},
	} {
		rows, err := db.Query(ctx, b.s.q[c.query], pguuid.Array(ids))
		if err != nil {
			return nil, fmt.Errorf("demo: check %s: %w", c.name, err)
		}
		broken = nil
		for rows.Next() {
			var id uuid.UUID
			var what string
			if err := rows.Scan(&id, &what); err != nil {
				rows.Close()
				return nil, err
			}
			broken = append(broken, fmt.Sprintf("transfer %s: %s", id, what))
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, err
		}
		rep.add(c.name, broken, c.ok)
	}
	return rep, nil
}

func init() {
	for k, v := range map[string]string{
		"stockBalance": `SELECT s."sku", s."available",
			COALESCE((SELECT sum(r."qty") FROM {reservations} r WHERE r."sku" = s."sku" AND r."status" = 'reserved'), 0), s."seeded"
			FROM {stock} s ORDER BY s."sku"`,
		"capturedForCancelled": `SELECT p."order_id", 'payment of ' || p."amount" || ' still captured'
			FROM {payments} p LEFT JOIN {orders} o ON o."id" = p."order_id"
			WHERE p."status" = 'captured' AND (o."status" = 'cancelled' OR p."order_id" = ANY($1))`,
		"shippedCancelled": `SELECT s."order_id", 'shipment still scheduled'
			FROM {shipments} s LEFT JOIN {orders} o ON o."id" = s."order_id"
			WHERE s."status" = 'scheduled' AND (o."status" = 'cancelled' OR s."order_id" = ANY($1))`,
		"incompleteCompleted": `SELECT x."id", concat_ws(', ',
				CASE WHEN o."status" IS DISTINCT FROM 'created' THEN 'order is ' || COALESCE(o."status", 'missing') END,
				CASE WHEN r."status" IS DISTINCT FROM 'reserved' THEN 'reservation is ' || COALESCE(r."status", 'missing') END,
				CASE WHEN p."status" IS DISTINCT FROM 'captured' THEN 'payment is ' || COALESCE(p."status", 'missing') END,
				CASE WHEN s."status" IS DISTINCT FROM 'scheduled' THEN 'shipment is ' || COALESCE(s."status", 'missing') END)
			FROM unnest($1::uuid[]) AS x("id")
			LEFT JOIN {orders} o ON o."id" = x."id"
			LEFT JOIN {reservations} r ON r."order_id" = x."id"
			LEFT JOIN {payments} p ON p."order_id" = x."id"
			LEFT JOIN {shipments} s ON s."order_id" = x."id"
			WHERE o."status" IS DISTINCT FROM 'created' OR r."status" IS DISTINCT FROM 'reserved'
			   OR p."status" IS DISTINCT FROM 'captured' OR s."status" IS DISTINCT FROM 'scheduled'`,
		"leftoverCompensated": `SELECT x."id", concat_ws(', ',
				CASE WHEN o."status" = 'created' THEN 'order still created' END,
				CASE WHEN r."status" = 'reserved' THEN 'stock still reserved' END,
				CASE WHEN p."status" = 'captured' THEN 'payment still captured' END,
				CASE WHEN s."status" = 'scheduled' THEN 'shipment still scheduled' END)
			FROM unnest($1::uuid[]) AS x("id")
			LEFT JOIN {orders} o ON o."id" = x."id"
			LEFT JOIN {reservations} r ON r."order_id" = x."id"
			LEFT JOIN {payments} p ON p."order_id" = x."id"
			LEFT JOIN {shipments} s ON s."order_id" = x."id"
			WHERE o."status" = 'created' OR r."status" = 'reserved' OR p."status" = 'captured' OR s."status" = 'scheduled'`,
		"accountBalance": `SELECT a."balance", COALESCE((SELECT sum(CASE l."kind" WHEN 'debit' THEN -l."amount" ELSE l."amount" END)
			FROM {ledger} l WHERE l."account" = a."id" AND l."transfer_id" = ANY($2)), 0)::bigint
			FROM {accounts} a WHERE a."id" = $1`,
		"unsettledTransfers": `SELECT "id", 'status ' || "status" FROM {transfers}
			WHERE "id" = ANY($1) AND "status" NOT IN ('completed', 'reversed', 'rejected')`,
		"ledgerMismatch": `SELECT t."id", t."status" || ' with ledger [' || COALESCE(string_agg(l."kind", ',' ORDER BY l."kind"), '') || ']'
			FROM {transfers} t LEFT JOIN {ledger} l ON l."transfer_id" = t."id"
			WHERE t."id" = ANY($1)
			GROUP BY t."id", t."status"
			HAVING COALESCE(string_agg(l."kind", ',' ORDER BY l."kind"), '') <> CASE t."status"
				WHEN 'completed' THEN 'credit,debit' WHEN 'reversed' THEN 'debit,refund' ELSE '' END`,
		"auditMismatch": `SELECT t."id", 'status ' || t."status" || ', audit ' || COALESCE(a."outcome", 'missing')
			FROM {transfers} t LEFT JOIN {audit} a ON a."transfer_id" = t."id"
			WHERE t."id" = ANY($1) AND a."outcome" IS DISTINCT FROM t."status"`,
	} {
		queries[k] = v
	}
}

// FinishedOrders returns every order saga of the database that has ended, with its
// status, from the orchestrator's saga_instances in schema (sagabox's).
func FinishedOrders(ctx context.Context, db Querier, schema string) (map[uuid.UUID]string, error) {
	rows, err := db.Query(ctx, `SELECT "id", "status" FROM `+pgx.Identifier{schema, "saga_instances"}.Sanitize()+`
		WHERE "type" = $1 AND "status" IN ('completed', 'compensated', 'failed')`, SagaType)
	if err != nil {
		return nil, fmt.Errorf("demo: finished orders: %w", err)
	}
	out := map[uuid.UUID]string{}
	var id uuid.UUID
	var status string
	if _, err := pgx.ForEachRow(rows, []any{&id, &status}, func() error { out[id] = status; return nil }); err != nil {
		return nil, fmt.Errorf("demo: finished orders: %w", err)
	}
	return out, nil
}
