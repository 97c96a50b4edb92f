package migrations

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"regexp"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/database"
	"github.com/pressly/goose/v3/lock"
)

// DefaultSchema is the schema the tables live in unless a caller names another.
const DefaultSchema = "sagabox"

//go:embed sql/*.sql
var embedded embed.FS

// FS returns the migration files.
func FS() fs.FS {
	sub, err := fs.Sub(embedded, "sql")
	if err != nil {
		panic(err) // the embed pattern guarantees the directory exists
	}
	return sub
}

var schemaName = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)

// ValidateSchema reports whether name is usable as a schema name: lowercase
// letters, digits and underscores, at most 63 bytes, not starting with a digit.
func ValidateSchema(name string) error {
	if !schemaName.MatchString(name) {
		return fmt.Errorf("invalid schema name %q: use lowercase letters, digits and underscores, at most 63 bytes, not starting with a digit", name)
	}
	return nil
}

// Migrator applies the embedded migrations to one schema of one database.
type Migrator struct {
	db       *sql.DB
	provider *goose.Provider
	schema   string
}

// Open connects to databaseURL and prepares to migrate schema ("" means DefaultSchema).
// Close releases the connection.
func Open(databaseURL, schema string) (*Migrator, error) {
	if schema == "" {
		schema = DefaultSchema
	}
	if err := ValidateSchema(schema); err != nil {
		return nil, fmt.Errorf("migrations: %w", err)
	}
	cfg, err := pgx.ParseConfig(databaseURL)
	if err != nil {
		return nil, fmt.Errorf("migrations: parse database URL: %w", err)
	}
	cfg.RuntimeParams["search_path"] = pgx.Identifier{schema}.Sanitize()
	db := stdlib.OpenDB(*cfg)
	locker, err := lock.NewPostgresSessionLocker()
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("migrations: %w", err)
	}
	store, err := database.NewStore(goose.DialectPostgres, "goose_db_version")
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("migrations: %w", err)
	}
	provider, err := goose.NewProvider("", db, FS(), goose.WithStore(store), goose.WithSessionLocker(locker))
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("migrations: %w", err)
	}
	return &Migrator{db: db, provider: provider, schema: schema}, nil
}

// Close closes the database connection.
func (m *Migrator) Close() error { return m.db.Close() }

// Up creates the schema if needed and applies every pending migration.
func (m *Migrator) Up(ctx context.Context) ([]*goose.MigrationResult, error) {
	if _, err := m.db.ExecContext(ctx, "CREATE SCHEMA IF NOT EXISTS "+pgx.Identifier{m.schema}.Sanitize()); err != nil {
		return nil, fmt.Errorf("migrations: create schema %q: %w", m.schema, err)
	}
	res, err := m.provider.Up(ctx)
	if err != nil {
		return res, fmt.Errorf("migrations: up: %w", err)
	}
	return res, nil
}

// Down rolls back the most recent migration.
func (m *Migrator) Down(ctx context.Context) (*goose.MigrationResult, error) {
	res, err := m.provider.Down(ctx)
	if errors.Is(err, goose.ErrNoNextVersion) {
		return nil, fmt.Errorf("migrations: down: nothing to roll back in schema %q", m.schema)
	}
	if err != nil {
		return res, fmt.Errorf("migrations: down: %w", err)
	}
	return res, nil
}

// Reset rolls back every applied migration.
func (m *Migrator) Reset(ctx context.Context) ([]*goose.MigrationResult, error) {
	res, err := m.provider.DownTo(ctx, 0)
	if err != nil {
		return res, fmt.Errorf("migrations: reset: %w", err)
	}
	return res, nil
}

// Status reports every known migration and whether it is applied.
func (m *Migrator) Status(ctx context.Context) ([]*goose.MigrationStatus, error) {
	if _, err := m.db.ExecContext(ctx, "CREATE SCHEMA IF NOT EXISTS "+pgx.Identifier{m.schema}.Sanitize()); err != nil {
		return nil, fmt.Errorf("migrations: create schema %q: %w", m.schema, err)
	}
	st, err := m.provider.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("migrations: status: %w", err)
	}
	return st, nil
}

// Up applies every pending migration to schema ("" means DefaultSchema) of the database at databaseURL.
func Up(ctx context.Context, databaseURL, schema string) error {
	m, err := Open(databaseURL, schema)
	if err != nil {
		return err
	}
	defer m.Close()
	_, err = m.Up(ctx)
	return err
}
