package relay_test

import (
	"slices"
	"testing"
	"time"

	"github.com/sagabox/sagabox/relay"
)

// TestHeldPause checks the re-check schedule of rows held back by an open older
// transaction: it doubles while the loop's own pause keeps finding them held, up to
// PollInterval, and starts again at its minimum after a cycle a NOTIFY started, so
// that steady load (every notified cycle sees some held rows) cannot push it to
// PollInterval.
func TestHeldPause(t *testing.T) {
	t.Parallel()
	const poll = time.Second
	var pause time.Duration
	var timerOnly []time.Duration
	for range 9 {
		pause = relay.NextHeldPause(pause, 3, true, poll)
		timerOnly = append(timerOnly, pause)
	}
	want := []time.Duration{10 * time.Millisecond, 20 * time.Millisecond, 40 * time.Millisecond, 80 * time.Millisecond,
		160 * time.Millisecond, 320 * time.Millisecond, 640 * time.Millisecond, poll, poll}
	if !slices.Equal(timerOnly, want) {
		t.Fatalf("held pauses after pauses = %v, want %v", timerOnly, want)
	}
	for range 20 { // notified cycles that each find rows held
		pause = relay.NextHeldPause(pause, 5, false, poll)
	}
	if pause != 10*time.Millisecond {
		t.Fatalf("held pause after notified cycles = %v, want 10ms", pause)
	}
	if got := relay.NextHeldPause(pause, 0, true, poll); got != 0 {
		t.Fatalf("held pause with nothing held = %v, want 0 (wait for a wake-up or the poll)", got)
	}
	if got := relay.NextHeldPause(0, 1, false, 5*time.Millisecond); got != 5*time.Millisecond {
		t.Fatalf("held pause with PollInterval 5ms = %v, want 5ms", got)
	}
}
