package relay_test

// Where a drain's CPU goes: BenchmarkRelayDrain samples the CPU time of the
// PostgreSQL server (postmaster, its live children and those it reaped), the
// broker process, the relay processes and the benchmark process itself, from
// /proc, at the first record and once the backlog is deleted. On two shared cores
// the drain is bound by their sum, so the split says which part to make cheaper.

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagabox/sagabox/internal/proccpu"
)

// serverPID returns the pid of the postmaster serving pool (0 when it is not a
// local process this benchmark can read).
func serverPID(pool *pgxpool.Pool) int {
	var backend int
	if err := pool.QueryRow(context.Background(), `SELECT pg_backend_pid()`).Scan(&backend); err != nil {
		return 0
	}
	_, _, ppid, _ := proccpu.Times(backend)
	return ppid
}

// cpuSplit is CPU time spent by each party of a drain.
type cpuSplit struct {
	pg, broker, relays, bench time.Duration
	wall                      time.Duration
	machine                   cpuSampler // at the sample
	busy                      float64    // of a difference: the machine's busy fraction
}

func sampleSplit(postmaster, broker int, relays []*relayProc) cpuSplit {
	s := cpuSplit{machine: sampleCPU()}
	if postmaster != 0 {
		s.pg, _ = proccpu.Tree(postmaster)
	}
	if broker != 0 {
		s.broker, _, _, _ = proccpu.Times(broker)
	}
	for _, p := range relays {
		t, _, _, _ := proccpu.Times(p.cmd.Process.Pid)
		s.relays += t
	}
	s.bench, _, _, _ = proccpu.Times(os.Getpid())
	s.wall = time.Duration(time.Now().UnixNano())
	return s
}

func (s cpuSplit) since(prev cpuSplit) cpuSplit {
	return cpuSplit{pg: s.pg - prev.pg, broker: s.broker - prev.broker, relays: s.relays - prev.relays,
		bench: s.bench - prev.bench, wall: s.wall - prev.wall, busy: s.machine.since(prev.machine)}
}

// perMsg formats the split as CPU microseconds per message of n, beside the
// machine's capacity over the same wall time.
func (s cpuSplit) perMsg(n int) string {
	us := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(n) }
	sum := s.pg + s.broker + s.relays + s.bench
	return fmt.Sprintf("CPU µs/msg: PostgreSQL %.1f, broker %.1f, relays %.1f, benchmark %.1f; sum %.1f of %.1f the %d cores give (machine %.0f%% busy)",
		us(s.pg), us(s.broker), us(s.relays), us(s.bench), us(sum), us(s.wall)*float64(runtimeCPUs()), runtimeCPUs(), 100*s.busy)
}
