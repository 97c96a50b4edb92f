// Package demo holds the services of sagabox's demo: the order saga's four
// participants (orders, inventory, payments, shipping) and the bank-transfer
// flow in choreography style.
//
// Each service keeps real business tables (orders, stock counts, reservations,
// payments, shipments, accounts) in a PostgreSQL schema of its own, created from
// embedded SQL by Setup — never in sagabox's toolkit schema. The handlers are plain
// functions of (ctx, tx, command): they change their tables in the transaction they
// are given and know nothing of Kafka, the inbox or the barrier, which is why the
// same handler applies its effect exactly once however often a command arrives.
//
// Guarantee: with the toolkit delivering commands at least once and deduplicating
// them in the handler's transaction, the invariants Check verifies hold: stock is
// conserved, no payment stays captured and no shipment stays scheduled for a
// cancelled order, and (for transfers) money is conserved.
package demo
