package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"net"
	"net/url"
	"os"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/sagabox/sagabox/internal/testenv"
	"github.com/sagabox/sagabox/migrations"
)

func TestMain(m *testing.M) {
	code := testenv.Run(m)
	if code == 0 {
		// Every command closes its pool: nothing may outlive run.
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			code = 1
		}
	}
	os.Exit(code)
}

type result struct {
	code           int
	stdout, stderr string
}

// sagactl runs the command in-process with DATABASE_URL set to dbURL ("" unsets it).
func sagactl(t *testing.T, dbURL string, args ...string) result {
	t.Helper()
	return sagactlEnv(t, map[string]string{"DATABASE_URL": dbURL}, args...)
}

// sagactlEnv runs the command in-process with exactly the environment env.
func sagactlEnv(t *testing.T, env map[string]string, args ...string) result {
	t.Helper()
	var out, errOut bytes.Buffer
	code := run(context.Background(), args, &out, &errOut, func(k string) string { return env[k] })
	return result{code: code, stdout: out.String(), stderr: errOut.String()}
}

func mustOK(t *testing.T, r result) result {
	t.Helper()
	if r.code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	return r
}

func migrationCount(t *testing.T) int {
	t.Helper()
	files, err := fs.Glob(migrations.FS(), "*.sql")
	if err != nil || len(files) == 0 {
		t.Fatalf("no embedded migrations: %v", err)
	}
	return len(files)
}

// closedPort returns an address nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func TestMigrate(t *testing.T) {
	t.Parallel()
	db := testenv.NewEmptyDB(t)
	n := migrationCount(t)

	type statusJSON struct {
		Schema     string `json:"schema"`
		Migrations []struct {
			Version int64  `json:"version"`
			State   string `json:"state"`
		} `json:"migrations"`
	}
	status := func(t *testing.T, schema string) (applied, pending int) {
		t.Helper()
		r := mustOK(t, sagactl(t, db.URL, "migrate", "status", "--schema", schema, "--json"))
		var s statusJSON
		if err := json.Unmarshal([]byte(r.stdout), &s); err != nil {
			t.Fatalf("status --json is not JSON: %v\n%s", err, r.stdout)
		}
		if s.Schema != schema || len(s.Migrations) != n {
			t.Fatalf("status: schema %q with %d migrations, want %q with %d", s.Schema, len(s.Migrations), schema, n)
		}
		for _, m := range s.Migrations {
			if m.State == "applied" {
				applied++
			} else {
				pending++
			}
		}
		return applied, pending
	}

	t.Run("UpDownUp", func(t *testing.T) {
		if a, p := status(t, "ops"); a != 0 || p != n {
			t.Fatalf("fresh schema: %d applied, %d pending; want 0, %d", a, p, n)
		}
		r := mustOK(t, sagactl(t, db.URL, "migrate", "up", "--schema", "ops"))
		if !strings.Contains(r.stdout, "applied") {
			t.Fatalf("up printed %q", r.stdout)
		}
		if a, p := status(t, "ops"); a != n || p != 0 {
			t.Fatalf("after up: %d applied, %d pending; want %d, 0", a, p, n)
		}
		r = mustOK(t, sagactl(t, db.URL, "migrate", "up", "--schema", "ops"))
		if !strings.Contains(r.stdout, "up to date") {
			t.Fatalf("second up printed %q, want 'up to date'", r.stdout)
		}
		r = mustOK(t, sagactl(t, db.URL, "migrate", "down", "--schema", "ops", "--json", "--yes"))
		var down struct {
			RolledBack []struct{ Version int64 } `json:"rolled_back"`
		}
		if err := json.Unmarshal([]byte(r.stdout), &down); err != nil || len(down.RolledBack) != 1 {
			t.Fatalf("down --json: %v\n%s", err, r.stdout)
		}
		if a, p := status(t, "ops"); a != n-1 || p != 1 {
			t.Fatalf("after down: %d applied, %d pending; want %d, 1", a, p, n-1)
		}
		mustOK(t, sagactl(t, db.URL, "migrate", "up", "--schema", "ops"))
		if a, _ := status(t, "ops"); a != n {
			t.Fatalf("after up again: %d applied, want %d", a, n)
		}
		r = mustOK(t, sagactl(t, "", "migrate", "status", "--schema", "ops", "--database-url", db.URL))
		if !strings.Contains(r.stdout, "VERSION") || !strings.Contains(r.stdout, "applied, 0 pending") {
			t.Fatalf("human status:\n%s", r.stdout)
		}
	})

	// migrate down used to drop a migration's tables without asking.
	t.Run("DownNeedsConfirmation", func(t *testing.T) {
		mustOK(t, sagactl(t, db.URL, "migrate", "up", "--schema", "careful"))
		r := sagactl(t, db.URL, "migrate", "down", "--schema", "careful")
		if r.code != 1 || !strings.Contains(r.stderr, "pass --yes") || !strings.Contains(r.stderr, "roll back migration") {
			t.Fatalf("unconfirmed down: exit %d, stderr %q", r.code, r.stderr)
		}
		r = mustOK(t, sagactl(t, db.URL, "migrate", "down", "--schema", "careful", "--dry-run"))
		if !strings.Contains(r.stdout, "dry run: would roll back migration") {
			t.Fatalf("--dry-run printed %q", r.stdout)
		}
		if a, p := status(t, "careful"); a != n || p != 0 {
			t.Fatalf("refused and dry-run downs changed the schema: %d applied, %d pending", a, p)
		}
	})

	t.Run("PasswordInFlagWarns", func(t *testing.T) {
		r := mustOK(t, sagactl(t, "", "migrate", "status", "--schema", "ops", "--database-url", withPassword(t, db.URL)))
		if !strings.Contains(r.stderr, "warning: --database-url carries a password") || !strings.Contains(r.stderr, "set DATABASE_URL instead") {
			t.Fatalf("no warning for a password in --database-url; stderr %q", r.stderr)
		}
		r = mustOK(t, sagactl(t, withPassword(t, db.URL), "migrate", "status", "--schema", "ops"))
		if strings.Contains(r.stderr, "warning") {
			t.Fatalf("warned about DATABASE_URL, the recommended way; stderr %q", r.stderr)
		}
	})

	t.Run("DownOnEmptySchemaSaysSo", func(t *testing.T) {
		r := sagactl(t, db.URL, "migrate", "down", "--schema", "never_migrated")
		if r.code != 1 || !strings.Contains(r.stderr, "nothing to roll back") {
			t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
		}
	})
}

func TestErrors(t *testing.T) {
	t.Parallel()
	unreachable := "postgres://u:secret@" + closedPort(t) + "/db?sslmode=disable"
	for _, tc := range []struct {
		name string
		url  string
		args []string
		code int
		want string // in stderr
	}{
		{"NoDatabase", "", []string{"migrate", "status"}, 1, "pass --database-url or set DATABASE_URL"},
		{"Unreachable", unreachable, []string{"migrate", "up", "--timeout", "2s"}, 1, "cannot connect"},
		{"UnreachableHidesPassword", unreachable, []string{"migrate", "status", "--timeout", "2s"}, 1, "u:xxxxx@"},
		{"UnreachableOutbox", unreachable, []string{"outbox", "status"}, 1, "cannot connect"},
		{"UnreachableSagaList", unreachable, []string{"saga", "list"}, 1, "cannot connect"},
		{"UnreachableSagaRetry", unreachable, []string{"saga", "retry", "01a21589-d4e1-7cc2-b239-d429966a6e87"}, 1, "cannot connect"},
		{"UnreachableStats", unreachable, []string{"stats", "--json"}, 1, "cannot connect"},
		{"SagaGroup", "", []string{"saga"}, 2, "choose one of: saga abort, saga list, saga retry, saga show"},
		{"BadURL", "mysql://nope", []string{"migrate", "status"}, 1, "database URL is not valid"},
		{"BadSchema", "postgres://localhost/x", []string{"migrate", "up", "--schema", "Drop Table"}, 1, "invalid schema name"},
		{"UnknownCommand", "", []string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{"GroupWithoutSubcommand", "", []string{"migrate"}, 2, "choose one of: migrate down, migrate status, migrate up"},
		{"UnknownFlag", "", []string{"migrate", "up", "--nope"}, 2, "flag provided but not defined"},
		{"ExtraArgument", "", []string{"migrate", "up", "extra"}, 2, "unexpected argument"},
		{"NoArgs", "", nil, 2, "Usage: sagactl"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := sagactl(t, tc.url, tc.args...)
			if r.code != tc.code || !strings.Contains(r.stderr, tc.want) {
				t.Fatalf("exit %d (want %d), stderr %q (want it to contain %q)", r.code, tc.code, r.stderr, tc.want)
			}
			if strings.Contains(r.stderr, "secret") {
				t.Fatalf("stderr leaks the password: %q", r.stderr)
			}
		})
	}
}

func TestHelp(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"--help"}, {"migrate", "up", "--help"}, {"migrate", "status", "-h"}} {
		r := sagactl(t, "", args...)
		if r.code != 0 || !strings.Contains(r.stderr, "Usage: sagactl") {
			t.Fatalf("%v: exit %d, stderr %q", args, r.code, r.stderr)
		}
	}
}

func TestVersionPrintsTheBuild(t *testing.T) {
	t.Parallel()
	for _, arg := range []string{"--version", "version"} {
		r := mustOK(t, sagactl(t, "", arg))
		if !strings.HasPrefix(r.stdout, "sagactl ") || !strings.Contains(r.stdout, "go1.") {
			t.Fatalf("sagactl %s printed %q", arg, r.stdout)
		}
	}
}

// sagactl used to ignore SAGABOX_SCHEMA, which outbox-relay honours: pointed at the same
// environment, the two looked at different schemas.
func TestSchemaComesFromSagaboxSchemaVariable(t *testing.T) {
	t.Parallel()
	db := testenv.NewEmptyDB(t)
	env := map[string]string{"DATABASE_URL": db.URL, "SAGABOX_SCHEMA": "from_env"}
	mustOK(t, sagactlEnv(t, env, "migrate", "up"))
	r := mustOK(t, sagactlEnv(t, env, "migrate", "status", "--json"))
	if !strings.Contains(r.stdout, `"schema": "from_env"`) {
		t.Fatalf("migrate status with SAGABOX_SCHEMA=from_env printed:\n%s", r.stdout)
	}
	// The flag wins over the variable.
	r = mustOK(t, sagactlEnv(t, env, "migrate", "status", "--json", "--schema", "other"))
	if !strings.Contains(r.stdout, `"schema": "other"`) {
		t.Fatalf("--schema other printed:\n%s", r.stdout)
	}
}

// A wrong role or database used to read "did not answer within 10s" although PostgreSQL
// had answered, and refused, within milliseconds: say what it said.
func TestRefusedLoginSaysWhatHappened(t *testing.T) {
	t.Parallel()
	db := testenv.NewEmptyDB(t)
	u, err := url.Parse(db.URL)
	if err != nil {
		t.Fatal(err)
	}
	noRole, noDB := *u, *u
	noRole.User = url.UserPassword("nobody_here", "secret")
	noDB.Path = "/no_such_database"
	for name, tc := range map[string]struct {
		url  string
		want string
	}{
		"UnknownRole":     {noRole.String(), "refused the login (SQLSTATE 28000"},
		"UnknownDatabase": {noDB.String(), "(SQLSTATE 3D000); check the database name"},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			r := sagactl(t, tc.url, "migrate", "status")
			if r.code != 1 || !strings.Contains(r.stderr, tc.want) || strings.Contains(r.stderr, "did not answer") {
				t.Fatalf("exit %d, stderr %q; want exit 1 and %q", r.code, r.stderr, tc.want)
			}
			if strings.Contains(r.stderr, "secret") {
				t.Fatalf("stderr leaks the password: %q", r.stderr)
			}
		})
	}
}

// withPassword adds a password to a database URL (the test cluster trusts every login).
func withPassword(t *testing.T, raw string) string {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword(u.User.Username(), "pw")
	return u.String()
}
