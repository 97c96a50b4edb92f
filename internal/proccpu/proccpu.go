package proccpu

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// clockTick is USER_HZ, the unit of /proc/<pid>/stat's times (100 on Linux).
const clockTick = 10 * time.Millisecond

// Times returns the user+system time of pid's threads, that of its children it has
// waited for, and its parent's pid; ok is false when pid is gone or /proc cannot tell.
func Times(pid int) (self, reaped time.Duration, ppid int, ok bool) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, 0, false
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')') // the command name may hold spaces and parentheses
	if i < 0 || i+2 > len(s) {
		return 0, 0, 0, false
	}
	f := strings.Fields(s[i+2:]) // field 3 on
	if len(f) < 15 {
		return 0, 0, 0, false
	}
	var v [15]int64
	for _, j := range []int{1, 11, 12, 13, 14} { // ppid, utime, stime, cutime, cstime
		if v[j], err = strconv.ParseInt(f[j], 10, 64); err != nil {
			return 0, 0, 0, false
		}
	}
	return time.Duration(v[11]+v[12]) * clockTick, time.Duration(v[13]+v[14]) * clockTick, int(v[1]), true
}

// Tree returns the CPU time of pid, of the children it has waited for and of its
// live children: for a PostgreSQL postmaster, the whole server's, backends that
// ended included. ok is false when pid is gone.
func Tree(pid int) (total time.Duration, ok bool) {
	self, reaped, _, ok := Times(pid)
	if !ok {
		return 0, false
	}
	total = self + reaped
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		child, err := strconv.Atoi(filepath.Base(d))
		if err != nil || child == pid {
			continue
		}
		if s, _, ppid, ok := Times(child); ok && ppid == pid {
			total += s
		}
	}
	return total, true
}
