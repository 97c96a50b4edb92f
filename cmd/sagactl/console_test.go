package main

import (
	"context"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/sagabox/sagabox/internal/testenv"
)

func TestConsoleServesUntilStopped(t *testing.T) {
	t.Parallel()
	db := testenv.NewDB(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out, errOut testenv.SyncBuffer
	getenv := func(k string) string {
		if k == "DATABASE_URL" {
			return db.URL
		}
		return ""
	}
	code := make(chan int, 1)
	go func() {
		code <- run(ctx, []string{"console", "--addr", "127.0.0.1:0", "--read-only", "--prefix", "/ops"}, &out, &errOut, getenv)
	}()
	re := regexp.MustCompile(`listening on (http://\S+)`)
	var base string
	for deadline := time.Now().Add(30 * time.Second); base == ""; time.Sleep(20 * time.Millisecond) {
		if m := re.FindStringSubmatch(out.String()); m != nil {
			base = m[1]
		}
		select {
		case c := <-code:
			t.Fatalf("console exited %d: %s", c, errOut.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("console did not start: %s", errOut.String())
		}
	}
	resp, err := http.Get(base + "sagas")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), "read-only") || !strings.Contains(string(body), `href="/ops/outbox"`) {
		t.Fatalf("GET %ssagas: %s\n%s", base, resp.Status, body)
	}
	http.DefaultClient.CloseIdleConnections()
	cancel()
	select {
	case c := <-code:
		if c != 0 {
			t.Fatalf("console exited %d after its context ended: %s", c, errOut.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("console did not stop")
	}
}

func TestConsoleNeedsThePassword(t *testing.T) {
	t.Parallel()
	db := testenv.NewDB(t)
	r := sagactl(t, db.URL, "console", "--basic-auth-user", "ops")
	if r.code != 1 || !strings.Contains(r.stderr, consolePasswordEnv) {
		t.Fatalf("exit %d\n%s", r.code, r.stderr)
	}
}
