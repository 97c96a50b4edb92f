package sagabench

import (
	"syscall"
	"time"

	"github.com/sagabox/sagabox/internal/proccpu"
)

// CPUMeter returns a function that reports the CPU time (user + system) used so far by
// this process (the flows' services, relays and, with kfake, the broker) and by the
// PostgreSQL server whose backend pid is backend: its postmaster and every process
// it started, running or finished. The two are reported apart (proc, server). A level's CPU per flow does not depend on what else
// the machine runs as much as its throughput does: on a machine the benchmark has to
// itself, where CPU bounds it, the flows/s ratio of two kinds of flow is the inverse of
// their CPU-per-flow ratio. It returns nil when /proc cannot tell (another OS, or a
// server on another host): the CPU columns then show "-".
func CPUMeter(backend int) func() (proc, server time.Duration) {
	_, _, master, ok := proccpu.Times(backend)
	if !ok || master <= 1 {
		return nil
	}
	if _, ok := proccpu.Tree(master); !ok {
		return nil
	}
	return func() (proc, server time.Duration) {
		var ru syscall.Rusage
		_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
		server, _ = proccpu.Tree(master)
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), server
	}
}
