// Command sagactl operates a sagabox installation: it migrates the schema, shows
// the outbox backlog and dead letters, lists and inspects sagas, retries or aborts
// sagas stuck in failed, and draws a saga's timeline.
//
// Every subcommand reads the database from DATABASE_URL (or --database-url, which warns
// when it carries a password: other users see flags in ps; use the variable, PGPASSWORD
// or ~/.pgpass), the schema from --schema or SAGABOX_SCHEMA (default "sagabox"), prints
// human tables by default and JSON with --json, and accepts --help. sagactl --version
// prints the build.
//
// Guarantee: read commands (status, list, show, stats) never change anything;
// retry and abort change one saga (or the named dead letters) in one transaction,
// or nothing when the saga is not in a state that allows it (the error says which).
// Commands that lose or replay state in bulk (migrate down, outbox retry --all) ask
// first on a terminal, need --yes otherwise, and take --dry-run to show what they would
// do. A database that refuses the login (password, role, database name) is reported as
// such at once; one that does not answer, within --timeout (default 10s).
package main
