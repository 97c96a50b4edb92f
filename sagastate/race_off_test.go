//go:build !race

package sagastate_test

const raceEnabled = false
