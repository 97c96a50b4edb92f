// Package migrations holds sagabox's PostgreSQL schema as goose SQL migrations
// embedded in the binary, and helpers to apply them.
//
// Guarantee: Up is idempotent and safe to run from several processes at once
// (a session advisory lock serialises them); every migration has a Down, and
// up → down → up round-trips. All tables live in one schema, "sagabox" unless
// told otherwise; the migrations run with search_path set to that schema, so
// the SQL files name no schema and every identifier in them is quoted.
package migrations
