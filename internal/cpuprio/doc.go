// Package cpuprio lowers a process's CPU priority: Background puts every thread of the
// process at nice 10 under the SCHED_BATCH policy, and the threads they start inherit
// it. cmd/outbox-relay calls it at start (--cpu-priority): a relay that shares cores
// with PostgreSQL then yields them to the producers' backends, where at the default
// priority its frequent wake-ups preempt them, a backend preempted while it holds the
// WAL write lock holding up every commit queued behind it.
//
// Nice ranks a thread against the others of its autogroup (its session) and cgroup
// only. The benchmarks' relay shares its session with PostgreSQL; a relay in a session
// or cgroup of its own (a systemd service, a container) competes with PostgreSQL by its
// group's CPU weight, which the operator sets (deploy/outbox-relay.service:
// CPUWeight). SCHED_BATCH's part, that the relay's wake-ups do not preempt a running
// thread, holds whatever the grouping.
//
// Guarantee: after Background returns nil, every thread of the process runs at
// SCHED_BATCH with a nice value of at least Nice, or at SCHED_IDLE if it was. It only
// ever lowers the priority (an unprivileged process cannot raise it again); on other
// systems than Linux it changes nothing and returns ErrUnsupported.
package cpuprio
