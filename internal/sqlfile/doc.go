// Package sqlfile reads the named-statement files in which each package keeps its
// table's SQL (outbox/outbox_messages.sql, sagastate/sagastate.sql): a statement
// starts at a "-- name: <name>" line and runs to the next; other comment lines are
// dropped, so each file stays runnable as SQL in psql. Parse is deterministic and
// touches no database.
package sqlfile
