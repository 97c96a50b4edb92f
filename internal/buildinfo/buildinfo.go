package buildinfo

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"
)

// Info is what a binary knows about its own build.
type Info struct {
	// Version is the main module's version: a tag such as "v0.4.0", a pseudo-version, or
	// "(devel)" for a build from a checkout. "unknown" without build information.
	Version string
	// Revision is the VCS commit the binary was built from; empty when not stamped
	// (go run, go test, or -buildvcs=false).
	Revision string
	// Time is the commit time of Revision (RFC 3339), empty when not stamped.
	Time string
	// Modified reports uncommitted changes in the work tree at build time.
	Modified bool
	// GoVersion is the toolchain that built the binary, e.g. "go1.26.8".
	GoVersion string
}

// Read returns the running binary's build information.
func Read() Info {
	info := Info{Version: "unknown", GoVersion: runtime.Version()}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return info
	}
	if bi.Main.Version != "" {
		info.Version = bi.Main.Version
	}
	if bi.GoVersion != "" {
		info.GoVersion = bi.GoVersion
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			info.Revision = s.Value
		case "vcs.time":
			info.Time = s.Value
		case "vcs.modified":
			info.Modified = s.Value == "true"
		}
	}
	return info
}

// Line is the one line every binary prints for --version, e.g.
// "sagactl v0.4.0 (revision 1a2b3c4d5e6f, 2026-12-01T09:00:00Z, go1.26.8)".
func Line(program string) string {
	return program + " " + Read().String()
}

// String formats the version and what is known about the build in parentheses.
func (i Info) String() string {
	details := []string{}
	if i.Revision != "" {
		rev := i.Revision
		if len(rev) > 12 {
			rev = rev[:12]
		}
		if i.Modified {
			rev += "+modified"
		}
		details = append(details, "revision "+rev)
	}
	if i.Time != "" {
		details = append(details, i.Time)
	}
	details = append(details, i.GoVersion)
	return fmt.Sprintf("%s (%s)", i.Version, strings.Join(details, ", "))
}
