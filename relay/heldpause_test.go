package relay_test

import (
	"slices"
	"testing"
	"time"

	"github.com/sagabox/sagabox/relay"
)

// TestHeldPause checks the re-check schedule of rows a cycle left (committed after
// its run's first claim, or of a key under way): it doubles while the loop's own pause keeps finding them held, up to
// PollInterval, and starts again at its minimum after a cycle a NOTIFY started, so
// that steady load (every notified cycle sees some held rows) cannot push it to
// PollInterval.
func TestHeldPause(t *testing.T) {
	t.Parallel()
	const lo, poll = 4 * time.Millisecond, time.Second
	var pause time.Duration
	var timerOnly []time.Duration
	for range 10 {
		pause = relay.NextHeldPause(pause, 3, true, lo, poll)
		timerOnly = append(timerOnly, pause)
	}
	want := []time.Duration{lo, 2 * lo, 4 * lo, 8 * lo, 16 * lo, 32 * lo, 64 * lo, 128 * lo, poll, poll}
	if !slices.Equal(timerOnly, want) {
		t.Fatalf("held pauses after pauses = %v, want %v", timerOnly, want)
	}
	for range 20 { // notified cycles that each find rows held
		pause = relay.NextHeldPause(pause, 5, false, lo, poll)
	}
	if pause != lo {
		t.Fatalf("held pause after notified cycles = %v, want %v", pause, lo)
	}
	if got := relay.NextHeldPause(pause, 0, true, lo, poll); got != 0 {
		t.Fatalf("held pause with nothing held = %v, want 0 (wait for a wake-up or the poll)", got)
	}
	if got := relay.NextHeldPause(0, 1, false, lo, 3*time.Millisecond); got != 3*time.Millisecond {
		t.Fatalf("held pause with PollInterval 3ms = %v, want 3ms", got)
	}
}
