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
	if runtime.GOOS != "linux" {
		if err := cpuprio.Background(); err != cpuprio.ErrUnsupported {
			t.Fatalf("Background on %s: %v, want ErrUnsupported", runtime.GOOS, err)
		}
		return
	}
	if os.Getenv(childEnv) == "" {
		cmd := exec.Command(os.Args[0], "-test.run=^TestBackgroundCoversEveryThreadAndTheirNewOnes$", "-test.v")
		cmd.Env = append(os.Environ(), childEnv+"=1")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("child: %v\n%s", err, out)
		}
		return
	}
	before := lockedThreads(t, 4) // threads that exist before
	if err := cpuprio.Background(); err != nil {
		t.Fatal(err)
	}
	after := lockedThreads(t, 8) // LockOSThread makes the runtime start new ones
	checkAll(t)
	close(before)
	close(after)
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

// checkAll fails for any thread of the process not at SCHED_BATCH and nice >= Nice.
func checkAll(t *testing.T) {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) < 12 {
		t.Fatalf("%d threads, want at least the 12 locked ones", len(entries))
	}
	for _, e := range entries {
		tid, _ := strconv.Atoi(e.Name())
		attr, err := unix.SchedGetAttr(tid, 0)
		if err != nil {
			t.Fatalf("thread %d: %v", tid, err)
		}
		if attr.Policy != unix.SCHED_BATCH || attr.Nice < cpuprio.Nice {
			t.Errorf("thread %d: policy %d nice %d, want SCHED_BATCH (%d) at nice >= %d", tid, attr.Policy, attr.Nice, unix.SCHED_BATCH, cpuprio.Nice)
		}
	}
}
