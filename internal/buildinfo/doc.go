// Package buildinfo tells which build of sagabox is running, from the information the Go
// toolchain embeds in every binary (runtime/debug.ReadBuildInfo): the module version
// ("v0.4.0" when installed with go install …@v0.4.0, "(devel)" for a build from a checkout),
// the VCS revision and time when the binary was built with go build inside the repository,
// and the Go version.
//
// Guarantee: it never fails; what the binary does not carry reads "unknown" (or empty for
// the revision), so --version and the build_info metric always answer.
package buildinfo
