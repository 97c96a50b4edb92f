package cpuprio_test

import (
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/sagabox/sagabox/internal/cpuprio"
)

const childEnv = "CPUPRIO_TEST_CHILD"

// TestBackgroundCoversEveryThreadAndTheirNewOnes runs in a child process (the
// priority cannot be raised again): Background must reach every thread there is,
// and threads the runtime starts afterwards must inherit it.
func TestBackgroundCoversEveryThreadAndTheirNewOnes(t *testing.T) {
	if inChild(t) {
		return
	}
	before := lockedThreads(t, 4) // threads that exist before
	if err := cpuprio.Background(); err != nil {
		t.Fatal(err)
	}
	after := lockedThreads(t, 8) // LockOSThread makes the runtime start new ones
	checkAll(t, func(a *unix.SchedAttr) bool { return a.Policy == unix.SCHED_BATCH && a.Nice >= cpuprio.Nice })
	close(before)
	close(after)
}

// TestBackgroundLeavesIdleThreadsIdle: a process started at SCHED_IDLE (chrt -i, or
// CPUSchedulingPolicy=idle) already runs lower than SCHED_BATCH; Background must not
// raise it.
func TestBackgroundLeavesIdleThreadsIdle(t *testing.T) {
	if inChild(t) {
		return
	}
	stop := lockedThreads(t, 4)
	defer close(stop)
	// Passes until every thread is idle: one the runtime starts meanwhile from a thread
	// not yet idle is not (in CI a thread started so was then lowered to SCHED_BATCH).
	for pass := 0; ; pass++ {
		changed := 0
		for _, tid := range threads(t) {
			attr, err := unix.SchedGetAttr(tid, 0)
			if err != nil || attr.Policy == unix.SCHED_IDLE {
				continue // ended, or idle already
			}
			if err := unix.SchedSetAttr(tid, &unix.SchedAttr{Policy: unix.SCHED_IDLE}, 0); err != nil {
				t.Fatalf("thread %d to SCHED_IDLE: %v", tid, err)
			}
			changed++
		}
		if changed == 0 {
			break
		}
		if pass == 10 {
			t.Fatal("threads kept starting through 10 passes")
		}
	}
	if err := cpuprio.Background(); err != nil {
		t.Fatal(err)
	}
	checkAll(t, func(a *unix.SchedAttr) bool { return a.Policy == unix.SCHED_IDLE })
}

// inChild runs the calling test again in a child process, since a priority once
// lowered cannot be raised again, and reports whether it did (the caller returns);
// in the child it returns false.
func inChild(t *testing.T) bool {
	t.Helper()
	if os.Getenv(childEnv) != "" {
		return false
	}
	cmd := exec.Command(os.Args[0], "-test.run=^"+t.Name()+"$", "-test.v")
	cmd.Env = append(os.Environ(), childEnv+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	return true
}

// threads lists the process's thread ids.
func threads(t *testing.T) []int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	var tids []int
	for _, e := range entries {
		tid, _ := strconv.Atoi(e.Name())
		tids = append(tids, tid)
	}
	return tids
}

// lockedThreads starts n goroutines, each locked to an OS thread of its own, which
// stay until the returned channel is closed.
func lockedThreads(t *testing.T, n int) chan struct{} {
	t.Helper()
	stop := make(chan struct{})
	var started sync.WaitGroup
	for range n {
		started.Add(1)
		go func() {
			runtime.LockOSThread()
			started.Done()
			<-stop
		}()
	}
	started.Wait()
	return stop
}

// checkAll fails for any thread of the process whose scheduling is not ok.
func checkAll(t *testing.T, ok func(*unix.SchedAttr) bool) {
	t.Helper()
	tids := threads(t)
	if len(tids) < 4 {
		t.Fatalf("%d threads, want at least the 4 locked ones", len(tids))
	}
	for _, tid := range tids {
		attr, err := unix.SchedGetAttr(tid, 0)
		if err != nil {
			t.Fatalf("thread %d: %v", tid, err)
		}
		if !ok(attr) {
			t.Errorf("thread %d: policy %d nice %d", tid, attr.Policy, attr.Nice)
		}
	}
}
