package participants

// Retryable marks a handler error as one the saga's retry policy should handle: the
// reply is OutcomeRetryable even when err is a transient database error
// (consumer.IsTransient), which the consumer loop would otherwise retry locally.
// Retryable(nil) is nil.
func Retryable(err error) error {
	if err == nil {
		return nil
	}
	return &retryableError{err}
}

type retryableError struct{ err error }

func (e *retryableError) Error() string { return e.err.Error() }
func (e *retryableError) Unwrap() error { return e.err }
