package outbox

// StatementOf returns the SQL of the named statement of s (outbox_messages.sql).
func StatementOf(s *Store, name string) string { return s.stmt(name) }

// SamePlace reports whether a and b name the same place in the table (ctid).
func SamePlace(a, b Loc) bool { return a.block == b.block && a.offset == b.offset }
