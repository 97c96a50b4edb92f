package cpuprio

import (
	"errors"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// maxPasses bounds Background's passes over the threads. A pass that changed a
// thread is followed by another, for a thread started meanwhile by one not yet
// changed; the Go runtime starts few threads, so the second pass finds none.
const maxPasses = 10

// Background puts every thread of the process at SCHED_BATCH and at least Nice.
func Background() error {
	for range maxPasses {
		changed, err := pass()
		if err != nil || changed == 0 {
			return err
		}
	}
	return fmt.Errorf("cpuprio: threads kept starting through %d passes over /proc/self/task", maxPasses)
}

// pass sets every thread in /proc/self/task not yet at SCHED_BATCH and Nice, and
// returns how many it set.
func pass() (int, error) {
	entries, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return 0, fmt.Errorf("cpuprio: list the process's threads: %w", err)
	}
	changed := 0
	for _, e := range entries {
		tid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		attr, err := unix.SchedGetAttr(tid, 0)
		if errors.Is(err, unix.ESRCH) { // the thread has ended
			continue
		}
		if err != nil {
			return changed, fmt.Errorf("cpuprio: read thread %d's scheduling: %w", tid, err)
		}
		if attr.Policy == unix.SCHED_IDLE || attr.Policy == unix.SCHED_BATCH && attr.Nice >= Nice {
			continue // already as low or lower: SCHED_IDLE runs only when nothing else would
		}
		nice := max(attr.Nice, Nice)
		// SCHED_RESET_ON_FORK is kept: an unprivileged thread may not clear it.
		err = unix.SchedSetAttr(tid, &unix.SchedAttr{Policy: unix.SCHED_BATCH, Nice: nice, Flags: attr.Flags & unix.SCHED_FLAG_RESET_ON_FORK}, 0)
		if errors.Is(err, unix.ESRCH) {
			continue
		}
		if err != nil {
			return changed, fmt.Errorf("cpuprio: set thread %d to SCHED_BATCH at nice %d (%d threads lowered before it): %w", tid, nice, changed, err)
		}
		changed++
	}
	return changed, nil
}
