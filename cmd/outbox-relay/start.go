package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagabox/sagabox/relay"
)

// startError is a start-up fault that waiting does not cure; run prints it as one
// line and exits 1.
type startError struct{ err error }

func (e *startError) Error() string { return e.err.Error() }
func (e *startError) Unwrap() error { return e.err }

// permanent returns what to do about a start-up fault that waiting does not cure,
// or "" for a transient one (refused, timeout, the server starting).
func permanent(err error) string {
	var pgErr *pgconn.PgError
	switch {
	case errors.Is(err, relay.ErrNotMigrated):
		return "run the migrations for this schema first (sagactl migrate up --schema ...)"
	case errors.Is(err, relay.ErrNoAccess):
		return "grant the role USAGE on the schema and SELECT, INSERT, UPDATE, DELETE on its outbox tables"
	case !errors.As(err, &pgErr):
		return ""
	}
	switch pgErr.Code {
	case "28P01":
		return "wrong password for the database user: check DATABASE_URL"
	case "28000":
		return "the database role does not exist or may not log in: check the user in DATABASE_URL"
	case "3D000":
		return "the database does not exist: create it, or fix its name in DATABASE_URL"
	case "42501":
		return "grant the role USAGE on the schema and SELECT, INSERT, UPDATE, DELETE on its outbox tables"
	}
	return ""
}

// startup is what /healthz and /readyz report until the relay runs.
type startup struct {
	mu   sync.Mutex
	err  error // nil once the database passed the preflight
	done bool
}

func (s *startup) set(err error, done bool) {
	s.mu.Lock()
	s.err, s.done = err, done
	s.mu.Unlock()
}

func (s *startup) check() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.done:
		return nil
	case s.err != nil:
		return fmt.Errorf("starting: database not ready: %w", s.err)
	}
	return errors.New("starting: checking the database")
}

// permanentTries bounds the retries of a permanent fault: a database or grant
// being created right now gets a moment, a wrong password does not loop forever.
const permanentTries = 3

// awaitDatabase runs relay.Preflight until it passes. A permanent fault ends it
// after permanentTries with a *startError; a transient one is retried with
// backoff (logged, and shown by st) until ctx ends.
func awaitDatabase(ctx context.Context, pool *pgxpool.Pool, schema string, st *startup, log *slog.Logger) error {
	pause := 200 * time.Millisecond
	for try := 1; ; try++ {
		checkCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := relay.Preflight(checkCtx, pool, schema)
		cancel()
		if err == nil || ctx.Err() != nil {
			st.set(nil, err == nil)
			return ctx.Err()
		}
		st.set(err, false)
		hint := permanent(err)
		if hint != "" && try >= permanentTries {
			return &startError{fmt.Errorf("cannot start: %s (%v)", hint, oneLine(err))}
		}
		if hint == "" {
			log.Warn("outbox-relay: database not reachable yet; retrying", "err", err, "pause", pause)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(pause):
		}
		if hint == "" {
			pause = min(2*pause, 5*time.Second)
		}
	}
}

func oneLine(err error) string { return strings.Join(strings.Fields(err.Error()), " ") }
