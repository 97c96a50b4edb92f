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
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// clockTick is the unit of /proc/<pid>/stat's times (USER_HZ, 100 on Linux).
const clockTick = 10 * time.Millisecond

// procTimes returns /proc/<pid>/stat's utime+stime (the process's threads) and
// cutime+cstime (its children it has waited for); zero when pid is gone.
func procTimes(pid int) (self, children time.Duration, ppid int) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, 0
	}
	s := string(data)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:]) // the command may hold spaces
	if len(f) < 15 {
		return 0, 0, 0
	}
	v := func(i int) int64 { n, _ := strconv.ParseInt(f[i], 10, 64); return n }
	return time.Duration(v(11)+v(12)) * clockTick, time.Duration(v(13)+v(14)) * clockTick, int(v(1))
}

// serverPID returns the pid of the postmaster serving pool (0 when it is not a
// local process this benchmark can read).
func serverPID(pool *pgxpool.Pool) int {
	var backend int
	if err := pool.QueryRow(context.Background(), `SELECT pg_backend_pid()`).Scan(&backend); err != nil {
		return 0
	}
	_, _, ppid := procTimes(backend)
	return ppid
}

// serverCPU is the CPU time of the postmaster pid and of every process it
// started, running or ended.
func serverCPU(pid int) time.Duration {
	if pid == 0 {
		return 0
	}
	self, reaped, _ := procTimes(pid)
	total := self + reaped
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		child, err := strconv.Atoi(filepath.Base(d))
		if err != nil || child == pid {
			continue
		}
		if s, _, ppid := procTimes(child); ppid == pid {
			total += s
		}
	}
	return total
}

// cpuSplit is CPU time spent by each party of a drain.
type cpuSplit struct {
	pg, broker, relays, bench time.Duration
	wall                      time.Duration
	machine                   cpuSampler // at the sample
	busy                      float64    // of a difference: the machine's busy fraction
}

func sampleSplit(postmaster, broker int, relays []*relayProc) cpuSplit {
	s := cpuSplit{pg: serverCPU(postmaster), machine: sampleCPU()}
	if broker != 0 {
		s.broker, _, _ = procTimes(broker)
	}
	for _, p := range relays {
		t, _, _ := procTimes(p.cmd.Process.Pid)
		s.relays += t
	}
	s.bench, _, _ = procTimes(os.Getpid())
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
