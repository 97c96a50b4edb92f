package relay

import (
	"slices"
	"strconv"
	"strings"
	"time"
)

// floor is where a publish loop's runs start to scan, instead of the oldest
// pending row: every row of the loop's shards at or below it has been published
// and settled, or waits for a retry. A run from the oldest row steps over every
// row deleted since the table's last vacuum (their index entries stay until
// then: 75-80 of a claim's 90-100 buffers at 2,000 msgs/s), and a run from the
// floor over those of the last two runs only.
//
// A clean run (it took every row it scanned, all of them were settled with no
// failure, and no pending row of the table had failed before: one waiting for its
// retry, or due, may lie below the floor, and a later row of its key above it
// must not go first) proposes its last scanned seq. A row at or below it can
// still commit later only in a transaction that was open at the run's first
// claim, so the proposal becomes the floor once a later run's first claim sees a
// snapshot xmin at or above that claim's xmax (every such transaction has ended)
// and that run, which scanned from the old floor and so saw those rows too, is
// clean itself. Proposals wait in order (under steady load the xmin trails by
// about a producer transaction's length, several runs), at most maxProposals of
// them. Anything else (a failure, rows left, other shards, a restart) puts the
// floor back to 0. Every PollInterval a run starts from the oldest row anyway:
// the safety net for dead letters revived below the floor (outbox.RetryDead), and
// for a row written other than by outbox.Enqueue (which takes its transaction's
// xid before the row's seq) whose transaction took its seq before the first
// claim's snapshot but its xid after it. With MaxPublishes above 1 runs always
// start from the oldest row: batches of earlier cycles may still be under way
// below the floor.
type floor struct {
	seq      int64
	shards   []int16   // the shards it holds for
	fromZero time.Time // when a run last started from the oldest row
	// proposals are clean runs' last scanned seqs with their first snapshots'
	// xmax, oldest first.
	proposals []proposal
	// last is the run that ended last, applied once its tail has ended.
	last *runOutcome
}

type proposal struct {
	seq  int64
	xmax uint64
}

// maxProposals bounds the proposals a floor keeps; while it has that many, a
// long transaction holds the xmin back and later runs propose nothing.
const maxProposals = 32

// runOutcome is what a run leaves for the floor.
type runOutcome struct {
	clean    bool
	seq      int64  // the last seq it scanned
	snapshot string // its first claim's snapshot ("" when it scanned nothing)
	tail     *tail  // its last batch, published in the background; nil if none
}

func (f *floor) reset() {
	f.seq, f.proposals, f.last = 0, f.proposals[:0], nil
}

// start returns the seq a run of shards starts after.
func (f *floor) start(shards []int16, now time.Time, poll time.Duration, enabled bool) int64 {
	f.apply()
	if !enabled || !slices.Equal(shards, f.shards) {
		f.reset()
		f.shards = slices.Clone(shards)
	}
	if now.Sub(f.fromZero) >= poll {
		f.fromZero = now
		return 0
	}
	return f.seq
}

// ran records how the run that started at start ended.
func (f *floor) ran(o runOutcome) { f.last = &o }

// apply takes the last run's outcome into account once its tail has ended (the
// cycle waits for it before it claims, with MaxPublishes 1).
func (f *floor) apply() {
	o := f.last
	if o == nil {
		return
	}
	f.last = nil
	if o.tail != nil {
		select {
		case <-o.tail.done:
		default:
			f.reset() // still under way: not known to be settled
			return
		}
		if o.tail.err != nil || !o.tail.clean {
			o.clean = false
		}
	}
	if !o.clean {
		f.reset()
		return
	}
	xmin, xmax, ok := snapshotBounds(o.snapshot)
	if !ok {
		return // it scanned nothing: nothing to propose, nothing proven
	}
	n := 0
	for n < len(f.proposals) && f.proposals[n].xmax <= xmin {
		f.seq = max(f.seq, min(f.proposals[n].seq, o.seq))
		n++
	}
	f.proposals = append(f.proposals[:0], f.proposals[n:]...)
	if len(f.proposals) < maxProposals {
		f.proposals = append(f.proposals, proposal{seq: o.seq, xmax: xmax})
	}
}

// snapshotBounds parses the xmin and xmax of a pg_snapshot's text form,
// "xmin:xmax:xip,...".
func snapshotBounds(s string) (xmin, xmax uint64, ok bool) {
	a, rest, ok1 := strings.Cut(s, ":")
	b, _, ok2 := strings.Cut(rest, ":")
	if !ok1 || !ok2 {
		return 0, 0, false
	}
	var err1, err2 error
	xmin, err1 = strconv.ParseUint(a, 10, 64)
	xmax, err2 = strconv.ParseUint(b, 10, 64)
	return xmin, xmax, err1 == nil && err2 == nil
}
