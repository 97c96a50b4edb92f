package proccpu

import (
	"os"
	"runtime"
	"testing"
)

func TestTimesOfThisProcess(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("reads /proc")
	}
	self, _, ppid, ok := Times(os.Getpid())
	if !ok || ppid != os.Getppid() {
		t.Fatalf("Times(self) = ok %v, ppid %d; want ok and ppid %d", ok, ppid, os.Getppid())
	}
	tree, ok := Tree(os.Getppid())
	if !ok || tree < self {
		t.Fatalf("Tree(parent) = %v, ok %v; want at least this child's %v", tree, ok, self)
	}
	if _, _, _, ok := Times(-1); ok {
		t.Fatal("Times(-1) is ok")
	}
}
