//go:build integration

package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// binDir holds the sagabox binaries the suite runs as processes, built once per run.
var binDir string

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	if err := dockerAvailable(); err != nil {
		fmt.Fprintln(os.Stderr, "integration:", err)
		return 1
	}
	dir, err := os.MkdirTemp("", "sagabox-it-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "integration:", err)
		return 1
	}
	binDir = dir
	defer os.RemoveAll(dir)
	code := m.Run()
	if code == 0 {
		// Processes and containers are stopped by the tests' cleanups; so must be every
		// goroutine the suite started (collectors, producers).
		if err := goleak.Find(
			// kafka-go's default Transport (kafka.Client) keeps its pools after use.
			goleak.IgnoreTopFunction("github.com/segmentio/kafka-go.(*connPool).discover"),
			goleak.IgnoreAnyFunction("github.com/segmentio/kafka-go.(*conn).run"),
		); err != nil {
			fmt.Fprintln(os.Stderr, "integration: goroutines left behind:", err)
			return 1
		}
	}
	return code
}

var (
	buildMu sync.Mutex
	built   = map[string]error{}
)

// binary builds ./cmd/<name> once per run and returns its path.
func binary(t testing.TB, name string) string {
	t.Helper()
	buildMu.Lock()
	defer buildMu.Unlock()
	out := filepath.Join(binDir, name)
	err, ok := built[name]
	if !ok {
		err = goBuild(out, "../cmd/"+name)
		built[name] = err
	}
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func goBuild(out, pkg string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, pkg)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %v\n%s", pkg, err, b)
	}
	return nil
}

func dockerAvailable() error {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if b, err := exec.CommandContext(ctx, "docker", "info", "--format", "{{.ServerVersion}}").CombinedOutput(); err != nil {
		return fmt.Errorf("the suite needs a running Docker engine (docker info: %v: %s); start dockerd, or run it through .ci/run which does", err, b)
	}
	return nil
}
