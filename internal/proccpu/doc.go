// Package proccpu reads processes' CPU time from /proc (Linux), for the benchmarks
// that split a run's CPU between the PostgreSQL server, the broker, the relays and
// themselves. On another OS every reading is zero and not ok.
package proccpu
