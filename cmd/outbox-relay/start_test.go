package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/sagabox/sagabox/internal/testenv"
)

// withURL returns db's URL changed by edit.
func withURL(t *testing.T, raw string, edit func(u *url.URL)) string {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	edit(u)
	return u.String()
}

// TestPermanentDatabaseFaultsExitWithOneLine: a missing database, an unknown role
// or a role without rights on the outbox tables is not cured by waiting. The relay
// must end with a non-zero exit and one line saying what to fix, after a short
// bounded retry, instead of retrying forever.
func TestPermanentDatabaseFaultsExitWithOneLine(t *testing.T) {
	t.Parallel()
	db := testenv.NewDB(t)
	noRights := "norights_" + strings.TrimPrefix(db.Name, "sagabox_t_")
	if _, err := db.Pool.Exec(context.Background(), "CREATE ROLE "+pgx.Identifier{noRights}.Sanitize()+" LOGIN"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = db.Pool.Exec(context.Background(), "DROP OWNED BY "+pgx.Identifier{noRights}.Sanitize())
		_, _ = db.Pool.Exec(context.Background(), "DROP ROLE "+pgx.Identifier{noRights}.Sanitize())
	})
	cases := []struct{ name, url, want string }{
		{"MissingDatabase", withURL(t, db.URL, func(u *url.URL) { u.Path = "/no_such_database" }), "database does not exist"},
		{"UnknownRole", withURL(t, db.URL, func(u *url.URL) { u.User = url.User("no_such_role") }), "role does not exist"},
		{"RoleWithoutRights", withURL(t, db.URL, func(u *url.URL) { u.User = url.User(noRights) }), "grant the role"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			var stderr bytes.Buffer
			code := run(ctx, nil, func(k string) string {
				// normal: run in this process must not lower the whole test binary's priority
				return map[string]string{"DATABASE_URL": c.url, "KAFKA_BROKERS": "127.0.0.1:1", "RELAY_CPU_PRIORITY": "normal"}[k]
			}, io.Discard, &stderr)
			if ctx.Err() != nil {
				t.Fatalf("still retrying after a minute; stderr:\n%s", stderr.String())
			}
			out := strings.TrimSpace(stderr.String())
			if code == 0 || strings.Count(out, "\n") != 0 || !strings.Contains(out, "cannot start") || !strings.Contains(out, c.want) {
				t.Fatalf("exit %d, stderr:\n%s\nwant a non-zero exit and one line saying %q", code, out, c.want)
			}
		})
	}
}

func TestWrongPasswordIsPermanentRefusedIsNot(t *testing.T) {
	t.Parallel()
	if permanent(&pgconn.PgError{Code: "28P01"}) == "" {
		t.Error("28P01 (wrong password) is treated as transient")
	}
	if h := permanent(&net.OpError{Op: "dial", Err: io.EOF}); h != "" {
		t.Errorf("a refused connection is treated as permanent: %s", h)
	}
}

// serveAsync runs the relay with a metrics address until the test ends and
// returns a GET of that address and the channel of run's exit code.
func serveAsync(t *testing.T, databaseURL, brokers string) (get func(path string) (int, string), stop func() int) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	ctx, cancel := context.WithCancel(context.Background())
	exit := make(chan int, 1)
	go func() {
		exit <- run(ctx, []string{"--metrics-addr=" + addr, "--log-level=error"}, func(k string) string {
			return map[string]string{"DATABASE_URL": databaseURL, "KAFKA_BROKERS": brokers, "RELAY_CPU_PRIORITY": "normal"}[k]
		}, io.Discard, io.Discard)
	}()
	var stopped *int
	stop = func() int {
		if stopped == nil {
			cancel()
			code := <-exit
			stopped = &code
		}
		return *stopped
	}
	t.Cleanup(func() { stop() })
	get = func(path string) (int, string) {
		select {
		case code := <-exit:
			exit <- code
			t.Fatalf("outbox-relay exited (%d) while it should keep running", code)
		default:
		}
		return httpGet(addr, path)
	}
	return get, stop
}

// TestUnreachableDatabaseRetriedWhileNotReady: a refused connection is transient:
// the relay keeps retrying, says so on /readyz and /healthz, and stops cleanly.
func TestUnreachableDatabaseRetriedWhileNotReady(t *testing.T) {
	t.Parallel()
	get, stop := serveAsync(t, "postgres://postgres@127.0.0.1:1/none?connect_timeout=1", "127.0.0.1:1")
	for _, path := range []string{"/readyz", "/healthz"} {
		waitFor(t, 20*time.Second, path+" to say the database is not ready", func() bool {
			code, body := get(path)
			return code == http.StatusServiceUnavailable && strings.Contains(body, "database not ready")
		})
	}
	if code := stop(); code != 0 {
		t.Fatalf("stopped while waiting for the database: exit %d, want 0", code)
	}
}

// TestHealthzReportsTheBroker: with the database fine and the broker unreachable,
// the relay is not healthy, and says why.
func TestHealthzReportsTheBroker(t *testing.T) {
	t.Parallel()
	db := testenv.NewDB(t)
	get, _ := serveAsync(t, db.URL, "127.0.0.1:1")
	waitFor(t, 20*time.Second, "/healthz to report the broker", func() bool {
		code, body := get("/healthz")
		return code == http.StatusServiceUnavailable && strings.Contains(body, "127.0.0.1:1")
	})
}

// TestTwoRunsAtOnceEachReadTheirOwnSecrets: the secret variables (DATABASE_URL,
// the SASL password) were read through a package variable that every flag set
// reset, so of two runs at once (parallel tests) one could find no database URL
// ("no database: set --database-url"): TestPermanentDatabaseFaultsExitWithOneLine
// failed about half the time.
func TestTwoRunsAtOnceEachReadTheirOwnSecrets(t *testing.T) {
	t.Parallel()
	var first, second options
	_, _, applyFirst := flagSet(&first, func(k string) string { return map[string]string{"DATABASE_URL": "postgres://first"}[k] })
	_, _, applySecond := flagSet(&second, func(k string) string { return map[string]string{"DATABASE_URL": "postgres://second"}[k] })
	applyFirst()
	applySecond()
	if first.databaseURL != "postgres://first" || second.databaseURL != "postgres://second" {
		t.Fatalf("database URLs %q and %q, want postgres://first and postgres://second", first.databaseURL, second.databaseURL)
	}
}
