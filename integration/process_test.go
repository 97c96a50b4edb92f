//go:build integration

package integration

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sagabox/sagabox/internal/testenv"
)

// Proc is a sagabox binary running as a process of its own, so a fault can SIGKILL it.
type Proc struct {
	name   string
	cmd    *exec.Cmd
	out    *testenv.SyncBuffer // stdout and stderr
	stdout *testenv.SyncBuffer
	done   chan struct{}
	err    error
}

// startProc starts bin with env added to the test's environment. When t ends the process
// gets SIGTERM (SIGKILL after 10 s); its output is logged if t failed.
func startProc(t testing.TB, name, bin string, env []string, args ...string) *Proc {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	p := &Proc{name: name, cmd: cmd, out: &testenv.SyncBuffer{}, stdout: &testenv.SyncBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = io.MultiWriter(p.out, p.stdout), p.out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.Stop(t)
		if t.Failed() {
			t.Logf("output of %s:\n%s", name, tail(p.out.String(), 60))
		}
	})
	return p
}

// Kill sends SIGKILL: no shutdown code runs, whatever batch is in flight stays unsettled.
func (p *Proc) Kill(t testing.TB) {
	t.Helper()
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
	t.Logf("%s killed with SIGKILL", p.name)
}

// Stop asks the process to shut down (SIGTERM) and waits for it.
func (p *Proc) Stop(t testing.TB) {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
		<-p.done
		t.Errorf("%s did not stop within 10 s of SIGTERM", p.name)
	}
}

// Wait waits up to timeout for the process to exit by itself and returns its stdout.
func (p *Proc) Wait(t testing.TB, timeout time.Duration) (stdout string, err error) {
	t.Helper()
	select {
	case <-p.done:
		return p.stdout.String(), p.err
	case <-time.After(timeout):
		t.Fatalf("%s did not finish within %s; its output:\n%s", p.name, timeout, tail(p.out.String(), 40))
		return "", nil
	}
}

// WaitOutput waits until the process printed want (on stdout or stderr).
func (p *Proc) WaitOutput(t testing.TB, want string, timeout time.Duration) {
	t.Helper()
	waitFor(t, timeout, fmt.Sprintf("%s to print %q", p.name, want), func() error {
		if strings.Contains(p.out.String(), want) {
			return nil
		}
		if done, err := p.Exited(); done {
			t.Fatalf("%s exited (%v) before printing %q:\n%s", p.name, err, want, tail(p.out.String(), 40))
		}
		return fmt.Errorf("not yet")
	})
}

// Exited reports whether the process ended, and how.
func (p *Proc) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

func tail(s string, lines int) string {
	ls := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(ls) > lines {
		ls = append([]string{fmt.Sprintf("… %d lines before", len(ls)-lines)}, ls[len(ls)-lines:]...)
	}
	return strings.Join(ls, "\n")
}

// startRelay runs cmd/outbox-relay (built once per run) against pg and b, with shorter
// leases than its defaults: a killed relay's shards move within LeaseTTL plus one
// heartbeat (≈7 s instead of ≈12 s), which keeps the suite short.
func startRelay(t testing.TB, name string, pg *PG, b *Broker) *Proc {
	t.Helper()
	return startProc(t, name, binary(t, "outbox-relay"), []string{
		"DATABASE_URL=" + pg.URL,
		"KAFKA_BROKERS=" + strings.Join(b.Brokers(), ","),
		"RELAY_LEASE_TTL=6s", "RELAY_HEARTBEAT=1s", "RELAY_PUBLISH_TIMEOUT=4s", "RELAY_POLL_INTERVAL=200ms",
	})
}

// pendingOutbox counts outbox rows not yet settled.
func pendingOutbox(ctx context.Context, pg *PG) (int, error) {
	var n int
	err := pg.Pool.QueryRow(ctx, `SELECT count(*) FROM "sagabox"."outbox_messages" WHERE "dead_at" IS NULL`).Scan(&n)
	return n, err
}
