package main

import (
	"context"
	"fmt"
	"path"
	"strconv"

	"github.com/pressly/goose/v3"

	"github.com/sagabox/sagabox/migrations"
)

func init() {
	register(&command{name: "migrate up", summary: "Apply every pending migration (creates the schema if needed).", run: migrateUp})
	register(&command{name: "migrate down", summary: "Roll back the most recent migration (asks first; --yes, --dry-run).", run: migrateDown, flags: destructive})
	register(&command{name: "migrate status", summary: "List the migrations and whether each is applied.", run: migrateStatus})
}

type migrationJSON struct {
	Version    int64   `json:"version"`
	Name       string  `json:"name"`
	State      string  `json:"state,omitempty"`
	AppliedAt  string  `json:"applied_at,omitempty"`
	Direction  string  `json:"direction,omitempty"`
	DurationMS float64 `json:"duration_ms,omitempty"`
}

func openMigrator(ctx context.Context, o *opts) (*migrations.Migrator, error) {
	if err := checkReachable(ctx, o); err != nil {
		return nil, err
	}
	return migrations.Open(o.databaseURL, o.schema)
}

// withMigrator runs fn with a migrator on a database known to answer.
func withMigrator(ctx context.Context, o *opts, fn func(*migrations.Migrator) error) error {
	m, err := openMigrator(ctx, o)
	if err != nil {
		return err
	}
	defer m.Close()
	return fn(m)
}

func migrateUp(ctx context.Context, a *app, o *opts, _ []string) error {
	return withMigrator(ctx, o, func(m *migrations.Migrator) error { return up(ctx, a, o, m) })
}

func up(ctx context.Context, a *app, o *opts, m *migrations.Migrator) error {
	res, err := m.Up(ctx)
	out := results(res)
	if err != nil {
		return err
	}
	if o.json {
		return a.printJSON(map[string]any{"schema": o.schema, "applied": out})
	}
	if len(out) == 0 {
		fmt.Fprintf(a.stdout, "schema %s is up to date\n", o.schema)
		return nil
	}
	printResults(a, out)
	fmt.Fprintf(a.stdout, "applied %d migration(s) to schema %s\n", len(out), o.schema)
	return nil
}

func migrateDown(ctx context.Context, a *app, o *opts, _ []string) error {
	return withMigrator(ctx, o, func(m *migrations.Migrator) error { return down(ctx, a, o, m) })
}

func down(ctx context.Context, a *app, o *opts, m *migrations.Migrator) error {
	// goose fails obscurely on a schema it never touched; say what is wrong instead.
	st, err := m.Status(ctx)
	if err != nil {
		return err
	}
	var last *goose.MigrationStatus
	for _, s := range st {
		if s.State == goose.StateApplied && (last == nil || s.Source.Version > last.Source.Version) {
			last = s
		}
	}
	if last == nil {
		return fmt.Errorf("migrate down: nothing to roll back in schema %s (no migration is applied); check --schema", o.schema)
	}
	what := fmt.Sprintf("roll back migration %d (%s) in schema %s, dropping what it created", last.Source.Version, path.Base(last.Source.Path), o.schema)
	if o.dryRun {
		if o.json {
			return a.printJSON(map[string]any{"schema": o.schema, "dry_run": true, "would_roll_back": migrationJSON{Version: last.Source.Version, Name: path.Base(last.Source.Path)}})
		}
		fmt.Fprintf(a.stdout, "dry run: would %s; nothing changed\n", what)
		return nil
	}
	if err := a.confirm(o, what); err != nil {
		return fmt.Errorf("migrate down: %w", err)
	}
	res, err := m.Down(ctx)
	if err != nil {
		return err
	}
	out := results([]*goose.MigrationResult{res})
	if o.json {
		return a.printJSON(map[string]any{"schema": o.schema, "rolled_back": out})
	}
	printResults(a, out)
	fmt.Fprintf(a.stdout, "rolled back migration %d in schema %s\n", out[0].Version, o.schema)
	return nil
}

func migrateStatus(ctx context.Context, a *app, o *opts, _ []string) error {
	return withMigrator(ctx, o, func(m *migrations.Migrator) error { return status(ctx, a, o, m) })
}

func status(ctx context.Context, a *app, o *opts, m *migrations.Migrator) error {
	st, err := m.Status(ctx)
	if err != nil {
		return err
	}
	out := make([]migrationJSON, 0, len(st))
	for _, s := range st {
		j := migrationJSON{Version: s.Source.Version, Name: path.Base(s.Source.Path), State: string(s.State)}
		if !s.AppliedAt.IsZero() {
			j.AppliedAt = s.AppliedAt.UTC().Format("2006-01-02T15:04:05Z")
		}
		out = append(out, j)
	}
	if o.json {
		return a.printJSON(map[string]any{"schema": o.schema, "migrations": out})
	}
	rows := make([][]string, 0, len(out))
	pending := 0
	for _, j := range out {
		if j.State == string(goose.StatePending) {
			pending++
		}
		at := j.AppliedAt
		if at == "" {
			at = "-"
		}
		rows = append(rows, []string{strconv.FormatInt(j.Version, 10), j.Name, j.State, at})
	}
	a.table([]string{"VERSION", "NAME", "STATE", "APPLIED AT"}, rows)
	fmt.Fprintf(a.stdout, "schema %s: %d applied, %d pending\n", o.schema, len(out)-pending, pending)
	return nil
}

func results(res []*goose.MigrationResult) []migrationJSON {
	out := make([]migrationJSON, 0, len(res))
	for _, r := range res {
		if r == nil || r.Source == nil {
			continue
		}
		out = append(out, migrationJSON{
			Version: r.Source.Version, Name: path.Base(r.Source.Path), Direction: r.Direction,
			DurationMS: float64(r.Duration.Microseconds()) / 1000,
		})
	}
	return out
}

func printResults(a *app, out []migrationJSON) {
	rows := make([][]string, 0, len(out))
	for _, j := range out {
		rows = append(rows, []string{strconv.FormatInt(j.Version, 10), j.Name, j.Direction, fmt.Sprintf("%.1fms", j.DurationMS)})
	}
	a.table([]string{"VERSION", "NAME", "DIRECTION", "DURATION"}, rows)
}
