package consumer

import (
	"context"
	"errors"
	"net"
	"syscall"

	"github.com/jackc/pgx/v5/pgconn"
)

// transientCodes are the SQLSTATEs of database errors that say nothing about the
// record: running the same transaction again later can succeed.
var transientCodes = map[string]bool{
	"40001": true, // serialization_failure
	"40P01": true, // deadlock_detected
	"55P03": true, // lock_not_available: lock_timeout, NOWAIT
	// query_canceled: statement_timeout (under contention usually a lock wait) or
	// pg_cancel_backend by an operator. A statement that always exceeds the timeout
	// therefore stalls its partition (see the package doc), which is louder and safer
	// than dead-lettering records because the database was slow.
	"57014": true,
	"57P01": true, // admin_shutdown: the server is restarting
	"57P02": true, // crash_shutdown
	"57P03": true, // cannot_connect_now: starting up, or in recovery
	"53300": true, // too_many_connections
	"08000": true, // connection_exception
	"08003": true, // connection_does_not_exist
	"08006": true, // connection_failure
	"08001": true, // sqlclient_unable_to_establish_sqlconnection
	"08004": true, // sqlserver_rejected_establishment_of_sqlconnection
}

// IsTransient reports whether err, or an error it wraps, is a database error that
// retrying the whole transaction can cure and that says nothing about the message:
// a deadlock (40P01), a serialization failure (40001), a lock or statement timeout
// (55P03, 57014), the server shutting down or refusing connections (57P01–57P03,
// 53300, class 08), or a connection that failed or was lost (pgconn.ConnectError,
// network errors, pgx's "conn closed"). Context cancellation and deadlines are not
// transient: they belong to whoever set them.
//
// The consumer retries transient errors itself, in the same transaction shape, with
// backoff and without spending one of the record's MaxAttempts, and never
// dead-letters a record because of one. Code that turns handler errors into
// messages (a participant's "retryable" reply, a saga step failure) should return
// such errors unchanged instead, so the consumer retries the transaction:
//
//	if err := reserve(ctx, tx, cmd); err != nil {
//		if consumer.IsTransient(err) {
//			return err // the consumer runs the transaction again
//		}
//		return replyFailure(err)
//	}
//
// An error wrapped with Permanent is never treated as transient.
func IsTransient(err error) bool {
	if err == nil || IsPermanent(err) {
		return false
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var lost *connLostError
	var marked *transientError
	if errors.As(err, &lost) || errors.As(err, &marked) {
		return true
	}
	if c := sqlState(err); c != "" {
		return transientCodes[c]
	}
	var connect *pgconn.ConnectError
	if errors.As(err, &connect) {
		return true
	}
	// pgconn marks errors that happened before anything reached the server, and
	// those of a connection already closed ("conn closed"), as safe to retry.
	if pgconn.SafeToRetry(err) || pgconn.Timeout(err) {
		return true
	}
	var netErr net.Error
	if errors.As(err, &netErr) {
		return true
	}
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EPIPE)
}

// Transient marks err as transient (IsTransient reports true): for a conflict a
// handler detects itself that running the transaction again cures, such as a row
// written meanwhile by a concurrent transaction. Transient(nil) is nil.
func Transient(err error) error {
	if err == nil {
		return nil
	}
	return &transientError{err}
}

type transientError struct{ err error }

func (e *transientError) Error() string { return e.err.Error() }
func (e *transientError) Unwrap() error { return e.err }

// sqlState returns the SQLSTATE of the first PostgreSQL error err wraps, or "".
func sqlState(err error) string {
	var pg *pgconn.PgError
	if errors.As(err, &pg) {
		return pg.Code
	}
	return ""
}

// connLostError marks an error after which the transaction's connection was found
// closed: whatever the error says, the database (or the network) failed, not the
// record.
type connLostError struct{ err error }

func (e *connLostError) Error() string { return "connection lost: " + e.err.Error() }
func (e *connLostError) Unwrap() error { return e.err }
