package migrations_test

import (
	"context"
	"os"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/sagabox/sagabox/internal/testenv"
	"github.com/sagabox/sagabox/migrations"
)

func TestMain(m *testing.M) { os.Exit(testenv.Run(m)) }

func tableCount(t *testing.T, url, schema string) int {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var n int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM information_schema.tables WHERE table_schema = $1 AND table_name <> 'goose_db_version'`, schema).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestUpDownUp(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.NewEmptyDB(t)
	for _, schema := range []string{"", "tenant_a"} {
		m, err := migrations.Open(db.URL, schema)
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		if schema == "" {
			schema = migrations.DefaultSchema
		}
		if _, err := m.Up(ctx); err != nil {
			t.Fatal(err)
		}
		applied := tableCount(t, db.URL, schema)
		if applied == 0 {
			t.Fatalf("schema %s: no tables after up", schema)
		}
		if _, err := m.Up(ctx); err != nil {
			t.Fatalf("second up must be a no-op: %v", err)
		}
		if _, err := m.Reset(ctx); err != nil {
			t.Fatal(err)
		}
		if n := tableCount(t, db.URL, schema); n != 0 {
			t.Fatalf("schema %s: %d tables left after down", schema, n)
		}
		if _, err := m.Up(ctx); err != nil {
			t.Fatal(err)
		}
		if n := tableCount(t, db.URL, schema); n != applied {
			t.Fatalf("schema %s: %d tables after up again, want %d", schema, n, applied)
		}
		st, err := m.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range st {
			if s.State != "applied" {
				t.Fatalf("migration %d is %s after up", s.Source.Version, s.State)
			}
		}
	}
}

func TestInvalidSchemaIsRejected(t *testing.T) {
	t.Parallel()
	for _, s := range []string{"Upper", "1abc", `x"; DROP TABLE y; --`, "a-b"} {
		if _, err := migrations.Open("postgres://localhost/x", s); err == nil {
			t.Errorf("schema %q accepted", s)
		}
	}
}
