package buildinfo

import (
	"strings"
	"testing"
)

func TestReadInTestBinary(t *testing.T) {
	t.Parallel()
	i := Read()
	// A test binary carries build information for its main module, but no VCS stamp.
	if i.Version == "" || i.GoVersion == "" {
		t.Fatalf("Read() = %+v; want a version and a Go version", i)
	}
	if l := Line("sagactl"); !strings.HasPrefix(l, "sagactl "+i.Version+" (") || !strings.Contains(l, i.GoVersion) {
		t.Fatalf("Line = %q", l)
	}
}

func TestStringShowsRevisionAndModified(t *testing.T) {
	t.Parallel()
	got := Info{Version: "v0.4.0", Revision: "0123456789abcdef0123", Time: "2026-12-01T09:00:00Z", Modified: true, GoVersion: "go1.26.8"}.String()
	want := "v0.4.0 (revision 0123456789ab+modified, 2026-12-01T09:00:00Z, go1.26.8)"
	if got != want {
		t.Fatalf("String() = %q, want %q", got, want)
	}
	if got := (Info{Version: "(devel)", GoVersion: "go1.26.8"}).String(); got != "(devel) (go1.26.8)" {
		t.Fatalf("unstamped String() = %q", got)
	}
}
