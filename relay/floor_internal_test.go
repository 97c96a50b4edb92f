package relay

import (
	"testing"
	"time"
)

// TestFloorMovesOnlyPastTransactionsThatEnded drives a loop's floor through the
// outcomes of its runs: a clean run's proposal becomes the floor only once a
// later clean run's snapshot shows every transaction open at the proposal ended;
// any run that may have left rows behind, other shards or a batch still under
// way put it back to 0; and every PollInterval a run starts from the oldest row.
func TestFloorMovesOnlyPastTransactionsThatEnded(t *testing.T) {
	t.Parallel()
	shards := []int16{0, 2, 4}
	poll := time.Minute
	t0 := time.Now()
	var f floor
	if got := f.start(shards, t0, poll, true); got != 0 {
		t.Fatalf("first run starts after %d; want 0", got)
	}
	run := func(clean bool, seq int64, snap string, tl *tail) int64 {
		t.Helper()
		f.ran(runOutcome{clean: clean, seq: seq, snapshot: snap, tail: tl})
		return f.start(shards, t0.Add(time.Second), poll, true)
	}
	if got := run(true, 10, "100:105:100,102", nil); got != 0 {
		t.Fatalf("after one clean run the floor is %d; want 0 (transactions 100 and 102 may still commit rows below 10)", got)
	}
	if got := run(true, 20, "103:110:103", nil); got != 0 {
		t.Fatalf("floor %d while transaction 103, open at the proposal of 10, runs; want 0", got)
	}
	if got := run(true, 25, "105:110:106", nil); got != 10 {
		t.Fatalf("floor %d once every transaction open at the proposal of 10 (below 105) ended; want 10", got)
	}
	// Every transaction open at the proposals of 20 and 25 (below 110) has ended.
	if got := run(true, 30, "110:112:", nil); got != 25 {
		t.Fatalf("floor %d once every transaction open at the proposals of 20 and 25 ended; want 25", got)
	}
	if got := run(true, 35, "112:112:", nil); got != 30 {
		t.Fatalf("floor %d; want 30 (the proposal before, as the run proposing it ended)", got)
	}
	if got := run(true, 40, "", nil); got != 30 {
		t.Fatalf("a run that scanned nothing moved the floor to %d; want it kept at 30", got)
	}
	if got := run(false, 50, "113:113:", nil); got != 0 {
		t.Fatalf("a run that left rows kept the floor at %d; want 0", got)
	}
	f.seq, f.proposals = 30, []proposal{{35, 112}}
	done := &tail{done: make(chan struct{}), clean: false}
	close(done.done)
	if got := run(true, 60, "120:120:", done); got != 0 {
		t.Fatalf("a run whose last batch failed kept the floor at %d; want 0", got)
	}
	f.seq, f.proposals = 30, []proposal{{35, 112}}
	if got := run(true, 60, "120:120:", &tail{done: make(chan struct{})}); got != 0 {
		t.Fatalf("a run whose last batch is still under way kept the floor at %d; want 0", got)
	}
	f.seq, f.proposals = 30, []proposal{{35, 112}}
	if got := f.start([]int16{0, 2, 4, 6}, t0.Add(time.Second), poll, true); got != 0 {
		t.Fatalf("a run of other shards starts after %d; want 0", got)
	}
	f.seq = 30
	if got := f.start(f.shards, t0.Add(2*poll), poll, true); got != 0 || f.seq != 30 {
		t.Fatalf("a run a PollInterval after the last one from the oldest row starts after %d (floor %d); want 0, floor kept", got, f.seq)
	}
	if got := f.start(f.shards, t0.Add(2*poll+time.Second), poll, false); got != 0 || f.seq != 0 {
		t.Fatalf("with the floor off (MaxPublishes > 1) a run starts after %d (floor %d); want 0", got, f.seq)
	}
}
