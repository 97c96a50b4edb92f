package sqlfile

import "strings"

// Parse splits file at its "-- name: <name>" lines and returns each statement by
// name, without its comment lines and trailing semicolon.
func Parse(file string) map[string]string {
	out := map[string]string{}
	name := ""
	var b strings.Builder
	flush := func() {
		if name != "" {
			out[name] = strings.TrimSuffix(strings.TrimSpace(b.String()), ";")
		}
		b.Reset()
	}
	for line := range strings.Lines(file) {
		if n, ok := strings.CutPrefix(strings.TrimSpace(line), "-- name: "); ok {
			flush()
			name = strings.TrimSpace(n)
			continue
		}
		if name != "" && !strings.HasPrefix(strings.TrimSpace(line), "--") {
			b.WriteString(line)
		}
	}
	flush()
	return out
}
