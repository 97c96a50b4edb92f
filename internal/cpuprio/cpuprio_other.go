//go:build !linux

package cpuprio

// Background returns ErrUnsupported: only Linux is supported.
func Background() error { return ErrUnsupported }
