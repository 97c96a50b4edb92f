// Command sagactl operates a sagabox installation: it migrates the schema, shows
// the outbox backlog and dead letters, lists and inspects sagas, retries or aborts
// sagas stuck in failed, and draws a saga's timeline.
//
// Every subcommand reads the database from --database-url or DATABASE_URL and the
// schema from --schema (default "sagabox"), prints human tables by default and JSON
// with --json, and accepts --help.
//
// Guarantee: read commands (status, list, show, stats) never change anything;
// retry and abort change one saga (or the named dead letters) in one transaction,
// or nothing when the saga is not in a state that allows it (the error says which).
// An unreachable database is reported within --timeout (default 10s).
package main
