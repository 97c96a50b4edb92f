package outbox

// StatementOf returns the SQL of the named statement of s (outbox_messages.sql).
func StatementOf(s *Store, name string) string { return s.stmt(name) }
