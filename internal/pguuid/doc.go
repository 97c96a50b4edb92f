// Package pguuid hands uuids to pgx as pgtype.UUID, the form it encodes fastest and in
// every query exec mode.
//
// A uuid.UUID is a driver.Valuer: pgx encodes it through Value, one string each that
// it then parses back, with no plan cached. Measured (pgx v5.12, 2 cores): a 10-element
// uuid[] argument 21.6 µs and 202 allocations as []uuid.UUID, 1.2 µs and 22 as
// [][16]byte, 1.1 µs and 12 as []pgtype.UUID; one uuid argument 2.7 µs as uuid.UUID,
// 0.14 µs as [16]byte, 0.10 µs and no allocation as pgtype.UUID. A saga's flow passes
// about seventy, which was a tenth of the Go side's CPU time per flow. [16]byte,
// [][16]byte and []uuid.UUID are known as uuids only from the statement's parameter
// types: in the exec and simple_protocol modes (default_query_exec_mode, as a pool
// behind PgBouncer in transaction mode may need) pgx encodes by the Go type alone and
// cannot encode them at all.
package pguuid
