// Package textfmt formats times and durations for people, so that sagactl's
// tables and the console's pages show the same value the same way.
package textfmt
