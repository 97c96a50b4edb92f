package timeline

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/sagabox/sagabox/wire"
)

// Text writes the timeline for a terminal, cols characters of time axis wide:
// '=' a forward attempt that succeeded, '~' a compensation, 'X' where one failed,
// '.' an attempt with no logged outcome; saga markers are listed under the chart.
func (tl Timeline) Text(w io.Writer, cols int) error {
	if cols < 10 {
		cols = 10
	}
	nameW := 4
	for _, l := range tl.Lanes {
		nameW = max(nameW, len(l.Step))
	}
	col := func(t time.Time) int {
		c := int(float64(t.Sub(tl.Start)) / float64(tl.Duration()) * float64(cols-1))
		return min(max(c, 0), cols-1)
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "%s — %s in %s\n", tl.Title, tl.Status, roundDur(tl.Duration()))
	for _, l := range tl.Lanes {
		row := []rune(strings.Repeat(" ", cols))
		var notes []string
		for _, b := range l.Bars {
			ch := '='
			switch {
			case b.Op == wire.OpCompensate:
				ch = '~'
			case b.Outcome == Open || b.Outcome == Replaced:
				ch = '.'
			}
			from, to := col(b.Start), col(b.End)
			for i := from; i <= to; i++ {
				row[i] = ch
			}
			if b.Outcome == Failed {
				row[to] = 'X'
				notes = append(notes, fmt.Sprintf("%s #%d failed: %s", b.Op, b.Attempt, shorten(b.Detail, 60)))
			}
		}
		fmt.Fprintf(&sb, "  %-*s |%s| %s\n", nameW, l.Step, string(row), strings.Join(notes, "; "))
	}
	step := tick(tl.Duration(), 4)
	axis := []rune(strings.Repeat(" ", cols+12))
	for off := time.Duration(0); off <= tl.Duration(); off += step {
		label := fmtOffset(off, step)
		c := col(tl.Start.Add(off))
		if c+len(label) <= len(axis) {
			copy(axis[c:], []rune(label))
		}
	}
	fmt.Fprintf(&sb, "  %-*s  %s\n", nameW, "", strings.TrimRight(string(axis), " "))
	for _, m := range tl.Marks {
		fmt.Fprintf(&sb, "  +%-9s saga %s%s\n", roundDur(m.At.Sub(tl.Start)), m.Label, detailSuffix(shorten(m.Detail, 70)))
	}
	fmt.Fprintf(&sb, "  legend: = step  ~ compensation  X failed  . no outcome\n")
	_, err := io.WriteString(w, sb.String())
	return err
}
