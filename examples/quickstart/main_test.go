package main

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/sagabox/sagabox/internal/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Run(m)) }

// TestQuickstartCompletesTheSaga runs the quickstart program twice (a reader runs it again)
// on a migrated test database and an in-process broker, and checks that both sagas
// completed and both orders are charged.
func TestQuickstartCompletesTheSaga(t *testing.T) {
	db, k := testenv.NewDB(t), testenv.NewKafka(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for range 2 {
		if err := run(ctx, db.URL, k.Brokers); err != nil {
			t.Fatal(err)
		}
	}
	var orders, sagas string
	err := db.Pool.QueryRow(ctx, `SELECT (SELECT string_agg(status, ',') FROM orders),
		(SELECT string_agg(status, ',') FROM sagabox.saga_instances)`).Scan(&orders, &sagas)
	if err != nil {
		t.Fatal(err)
	}
	if orders != "charged,charged" || sagas != "completed,completed" {
		t.Fatalf("orders %q, sagas %q; want both charged and completed", orders, sagas)
	}
}

// TestReadmeQuickstartIsMainGo keeps the README's quickstart block identical to main.go,
// so the first program a reader copies is the one this package builds and tests.
func TestReadmeQuickstartIsMainGo(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	main, err := os.ReadFile("main.go")
	if err != nil {
		t.Fatal(err)
	}
	const begin, end = "<!-- quickstart:begin -->\n```go\n", "```\n<!-- quickstart:end -->"
	_, rest, ok := bytes.Cut(readme, []byte(begin))
	block, _, ok2 := bytes.Cut(rest, []byte(end))
	if !ok || !ok2 {
		t.Fatalf("README.md has no block between %q and %q", strings.TrimSpace(begin), end)
	}
	if !bytes.Equal(block, main) {
		t.Fatalf("README.md's quickstart block differs from examples/quickstart/main.go: copy main.go between the markers")
	}
}
