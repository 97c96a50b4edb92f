// Package console is sagabox's web console: an http.Handler that shows sagas, the outbox,
// inbox dead letters, relays and saga statistics, and lets an operator act on them.
//
//	h, err := console.New(pool, console.Config{Prefix: "/console"})
//	mux.Handle("/console/", h)
//
// Pages are rendered on the server from the database on every request; nothing is cached,
// so what a page shows is what the tables held when it was drawn. Its templates, style and a
// few lines of script are embedded in the binary (no CDN, no build step). The saga list
// pages by keyset on ("created_at", "id"), so any page costs a few index reads whatever the
// table size.
//
// Actions (retry or abort a saga, retry outbox dead letters, replay inbox dead letters) go
// through the same functions the orchestrator, outbox and inbox packages export, each after
// a confirmation page that asks for a reason. A saga action's reason, with the operator's
// name, is recorded in the saga's event log; every action is logged. Actions are POSTs
// checked against cross-site requests (Sec-Fetch-Site/Origin, and a double-submit token).
// With ReadOnly no action is shown and the server refuses them.
//
// Access control is the embedder's: the console listens where it is mounted. Config offers
// basic auth or a header set by a trusted authenticating proxy (see README, "Web console").
package console
