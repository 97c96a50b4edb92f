//go:build race

package sagastate_test

// raceEnabled scales the crash tests down: under the race detector everything runs
// several times slower, the re-executed orchestrator processes too.
const raceEnabled = true
