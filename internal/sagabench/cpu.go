package sagabench

import (
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// CPUMeter returns a function that reports the CPU time (user + system) used so far by
// this process (the flows' services, relays and, with kfake, the broker) and by the
// PostgreSQL server whose backend pid is backend: its postmaster and every process
// it started, running or finished. A level's CPU per flow does not depend on what else
// the machine runs as much as its throughput does: on a machine the benchmark has to
// itself, where CPU bounds it, the flows/s ratio of two kinds of flow is the inverse of
// their CPU-per-flow ratio. It returns nil when /proc cannot tell (another OS, or a
// server on another host): the CPU columns then show "-".
func CPUMeter(backend int) func() time.Duration {
	master, ok := parentOf(backend)
	if !ok || master <= 1 {
		return nil
	}
	if _, ok := procCPU(master, true); !ok {
		return nil
	}
	return func() time.Duration {
		var ru syscall.Rusage
		_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
		total := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
		t, _ := procCPU(master, true) // with its finished children
		total += t
		entries, _ := os.ReadDir("/proc")
		for _, e := range entries {
			pid, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			if p, ok := parentOf(pid); ok && p == master {
				t, _ := procCPU(pid, false)
				total += t
			}
		}
		return total
	}
}

// stat returns the fields of /proc/pid/stat after the command name (field 3 on).
func stat(pid int) ([]string, bool) {
	raw, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil, false
	}
	s := string(raw)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 > len(s) {
		return nil, false
	}
	return strings.Fields(s[i+2:]), true
}

func parentOf(pid int) (int, bool) {
	f, ok := stat(pid)
	if !ok || len(f) < 2 {
		return 0, false
	}
	p, err := strconv.Atoi(f[1])
	return p, err == nil
}

// clockTick is USER_HZ, the unit of /proc/pid/stat's times (100 on Linux).
const clockTick = 10 * time.Millisecond

// procCPU returns the user and system time of process pid, with that of its finished
// (waited-for) children when children is set.
func procCPU(pid int, children bool) (time.Duration, bool) {
	f, ok := stat(pid)
	if !ok || len(f) < 15 {
		return 0, false
	}
	fields := []int{11, 12} // utime, stime
	if children {
		fields = append(fields, 13, 14) // cutime, cstime
	}
	var ticks int64
	for _, i := range fields {
		n, err := strconv.ParseInt(f[i], 10, 64)
		if err != nil {
			return 0, false
		}
		ticks += n
	}
	return time.Duration(ticks) * clockTick, true
}
