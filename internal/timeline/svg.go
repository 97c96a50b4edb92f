package timeline

import (
	"bytes"
	"fmt"
	"html"
	"io"
	"strings"
	"time"

	"github.com/sagabox/sagabox/wire"
)

// Layout of the SVG, in pixels.
const (
	width     = 1000
	labelW    = 180 // step names
	rightPad  = 40
	titleH    = 74 // title, status and marker labels
	laneH     = 44
	barH      = 14
	axisH     = 40
	legendH   = 36
	minBarW   = 3
	plotWidth = width - labelW - rightPad
)

var colors = map[string]string{
	"forward":    "#2e7d32",
	"compensate": "#ef6c00",
	"failed":     "#c62828",
	"open":       "#9e9e9e",
	"ignored":    "#78909c",
	"grid":       "#e0e0e0",
	"text":       "#212121",
	"muted":      "#616161",
}

func barColor(b Bar) string {
	switch b.Outcome {
	case Failed:
		return colors["failed"]
	case Open, Replaced:
		return colors["open"]
	case Ignored:
		return colors["ignored"]
	}
	if b.Op == wire.OpCompensate {
		return colors["compensate"]
	}
	return colors["forward"]
}

func statusColor(status string) string {
	switch status {
	case "completed":
		return colors["forward"]
	case "compensated":
		return colors["compensate"]
	case "failed", "timeout":
		return colors["failed"]
	}
	return colors["muted"]
}

// SVG writes the timeline as a standalone SVG image.
func (tl Timeline) SVG(w io.Writer) error {
	var b bytes.Buffer
	tl.writeSVG(&b)
	_, err := w.Write(b.Bytes())
	return err
}

func (tl Timeline) x(t time.Time) float64 {
	return labelW + float64(t.Sub(tl.Start))/float64(tl.Duration())*plotWidth
}

func (tl Timeline) writeSVG(b *bytes.Buffer) {
	lanes := max(len(tl.Lanes), 1)
	plotTop := titleH
	plotBottom := plotTop + lanes*laneH
	height := plotBottom + axisH + legendH
	esc := html.EscapeString
	fmt.Fprintf(b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="Helvetica, Arial, sans-serif" font-size="12">`+"\n",
		width, height, width, height)
	fmt.Fprintf(b, `<rect width="%d" height="%d" fill="#ffffff"/>`+"\n", width, height)

	// Title and status.
	fmt.Fprintf(b, `<text x="12" y="24" font-size="16" font-weight="bold" fill="%s">%s</text>`+"\n", colors["text"], esc(tl.Title))
	fmt.Fprintf(b, `<text x="12" y="44" fill="%s">status <tspan font-weight="bold" fill="%s">%s</tspan> · %s · started %s UTC</text>`+"\n",
		colors["muted"], statusColor(tl.Status), esc(tl.Status), roundDur(tl.Duration()), tl.Start.UTC().Format("2006-01-02 15:04:05.000"))

	// Lanes: alternating background, step name, forward row above compensation row.
	for i, l := range tl.Lanes {
		y := plotTop + i*laneH
		if i%2 == 0 {
			fmt.Fprintf(b, `<rect x="0" y="%d" width="%d" height="%d" fill="#f7f7f7"/>`+"\n", y, width, laneH)
		}
		fmt.Fprintf(b, `<text x="12" y="%d" fill="%s">%s</text>`+"\n", y+laneH/2+4, colors["text"], esc(l.Step))
	}

	// Axis ticks and grid.
	step := tick(tl.Duration(), 8)
	for off := time.Duration(0); off <= tl.Duration(); off += step {
		x := labelW + float64(off)/float64(tl.Duration())*plotWidth
		fmt.Fprintf(b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="%s"/>`+"\n", x, plotTop, x, plotBottom, colors["grid"])
		fmt.Fprintf(b, `<text x="%.1f" y="%d" text-anchor="middle" fill="%s">%s</text>`+"\n", x, plotBottom+16, colors["muted"], fmtOffset(off, step))
	}
	fmt.Fprintf(b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s"/>`+"\n", labelW, plotBottom, width-rightPad, plotBottom, colors["muted"])
	fmt.Fprintf(b, `<text x="%d" y="%d" text-anchor="end" fill="%s">time since the saga started</text>`+"\n", width-rightPad, plotBottom+32, colors["muted"])

	// Saga-level markers: a dashed line across the lanes, the label above them,
	// staggered so that markers close in time do not print over each other.
	lastX := -1000.0
	row := 0
	for _, m := range tl.Marks {
		x := tl.x(m.At)
		c := colors["muted"]
		if m.Bad {
			c = colors["failed"]
		}
		if x-lastX < 90 {
			row = (row + 1) % 2
		} else {
			row = 0
		}
		lastX = x
		fmt.Fprintf(b, `<g><title>%s</title><line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="%s" stroke-dasharray="4 3"/>`,
			esc(m.Label+" at +"+fmtOffset(m.At.Sub(tl.Start), step)+detailSuffix(m.Detail)), x, plotTop-4-row*12, x, plotBottom, c)
		fmt.Fprintf(b, `<text x="%.1f" y="%d" text-anchor="middle" font-size="11" fill="%s">%s</text></g>`+"\n", x, plotTop-8-row*12, c, esc(m.Label))
	}

	// Bars.
	for i, l := range tl.Lanes {
		y := plotTop + i*laneH
		for bi, bar := range l.Bars {
			by := y + 6
			if bar.Op == wire.OpCompensate {
				by = y + laneH - 6 - barH
			}
			x1, x2 := tl.x(bar.Start), tl.x(bar.End)
			w := max(x2-x1, minBarW)
			tip := fmt.Sprintf("%s %s attempt %d: %s, +%s → +%s (%s)%s", l.Step, bar.Op, bar.Attempt, bar.Outcome,
				fmtOffset(bar.Start.Sub(tl.Start), step), fmtOffset(bar.End.Sub(tl.Start), step), bar.End.Sub(bar.Start).Round(time.Microsecond), detailSuffix(bar.Detail))
			fmt.Fprintf(b, `<g><title>%s</title><rect x="%.1f" y="%d" width="%.1f" height="%d" rx="2" fill="%s"`, esc(tip), x1, by, w, barH, barColor(bar))
			if bar.Outcome == Open || bar.Outcome == Replaced {
				fmt.Fprintf(b, ` fill-opacity="0.5" stroke="%s" stroke-dasharray="3 2"`, colors["open"])
			}
			b.WriteString("/>")
			if bar.Outcome == Failed {
				// A cross at the end of the bar, and the reason beside it when there is room.
				cx, cy := x1+w, float64(by+barH/2)
				fmt.Fprintf(b, `<path d="M%.1f %.1fl8 8m0 -8l-8 8" stroke="%s" stroke-width="2.5"/>`, cx-1, cy-4, colors["failed"])
				// The reason goes right of the cross if it fits there, else inside the bar,
				// else left of it, else wherever is widest, cut to fit (the tooltip keeps it all).
				if bar.Detail != "" {
					label := shorten(bar.Detail, 60)
					n := float64(len([]rune(label)))
					right := nextBarX(tl, l.Bars, bi) - (cx + 11)
					left := x1 - 6 - prevBarX(tl, l.Bars, bi)
					inside := w - 8
					textAt := func(x float64, anchor, color string, size, charW, room float64) {
						fmt.Fprintf(b, `<text x="%.1f" y="%.1f" font-size="%g" text-anchor="%s" fill="%s">%s</text>`,
							x, cy+size/3, size, anchor, color, esc(shorten(bar.Detail, min(60, int(room/charW)))))
					}
					switch {
					case right >= 6.3*n:
						textAt(cx+11, "start", colors["failed"], 11, 6.3, right)
					case inside >= 5.8*n:
						textAt(x1+4, "start", "#ffffff", 10, 5.8, inside)
					case left >= 6.3*n:
						textAt(x1-6, "end", colors["failed"], 11, 6.3, left)
					case right >= left && right >= inside && right >= 40:
						textAt(cx+11, "start", colors["failed"], 11, 6.3, right)
					case left >= inside && left >= 40:
						textAt(x1-6, "end", colors["failed"], 11, 6.3, left)
					case inside >= 40:
						textAt(x1+4, "start", "#ffffff", 10, 5.8, inside)
					}
				}
			}
			b.WriteString("</g>\n")
		}
	}

	// Legend.
	ly := plotBottom + axisH + 14
	lx := 12
	for _, item := range []struct{ label, color string }{
		{"step (forward)", colors["forward"]}, {"compensation", colors["compensate"]},
		{"failed", colors["failed"]}, {"no outcome logged", colors["open"]},
	} {
		fmt.Fprintf(b, `<rect x="%d" y="%d" width="14" height="10" rx="2" fill="%s"/><text x="%d" y="%d" fill="%s">%s</text>`+"\n",
			lx, ly, item.color, lx+19, ly+9, colors["text"], item.label)
		lx += 40 + 7*len(item.label)
	}
	fmt.Fprintf(b, `<text x="%d" y="%d" fill="%s">upper row: forward command · lower row: compensation · hover for details</text>`+"\n", lx+10, ly+9, colors["muted"])
	b.WriteString("</svg>\n")
}

// nextBarX is where the next bar of bars[i]'s row starts, or the right edge.
func nextBarX(tl Timeline, bars []Bar, i int) float64 {
	end := tl.x(bars[i].End)
	for _, b := range bars[i+1:] {
		if x := tl.x(b.Start); b.Op == bars[i].Op && x >= end {
			return x - 4
		}
	}
	return width - 8
}

// prevBarX is where the previous bar of bars[i]'s row ends, or the plot's left edge.
func prevBarX(tl Timeline, bars []Bar, i int) float64 {
	for j := i - 1; j >= 0; j-- {
		if bars[j].Op == bars[i].Op {
			return tl.x(bars[j].End) + 4
		}
	}
	return labelW + 4
}

func detailSuffix(d string) string {
	if d == "" {
		return ""
	}
	return ": " + d
}

func shorten(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if r := []rune(s); len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}

// HTML writes a standalone page: the SVG timeline and the event log as a table.
func (tl Timeline) HTML(w io.Writer, events []EventRow) error {
	var b bytes.Buffer
	esc := html.EscapeString
	fmt.Fprintf(&b, "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>%s</title>\n", esc(tl.Title))
	b.WriteString(`<style>body{font-family:Helvetica,Arial,sans-serif;margin:24px;color:#212121}
table{border-collapse:collapse;margin-top:16px;font-size:13px}td,th{padding:4px 10px;border-bottom:1px solid #e0e0e0;text-align:left}
th{background:#f5f5f5}td.bad{color:#c62828}</style></head><body>` + "\n")
	tl.writeSVG(&b)
	b.WriteString("<table><tr><th>+time</th><th>event</th><th>step</th><th>op</th><th>attempt</th><th>detail</th></tr>\n")
	step := tick(tl.Duration(), 8)
	for _, e := range events {
		class := ""
		if strings.Contains(e.Type, "failed") || e.Type == "saga_compensating" {
			class = ` class="bad"`
		}
		attempt := ""
		if e.Attempt > 0 {
			attempt = fmt.Sprint(e.Attempt)
		}
		fmt.Fprintf(&b, "<tr%s><td>+%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td></tr>\n", class,
			fmtOffset(e.At.Sub(tl.Start), step), esc(e.Type), esc(e.Step), esc(e.Op), attempt, esc(e.Detail))
	}
	b.WriteString("</table></body></html>\n")
	_, err := w.Write(b.Bytes())
	return err
}

// EventRow is one line of the HTML event table.
type EventRow struct {
	At             time.Time
	Type, Step, Op string
	Attempt        int
	Detail         string
}

// roundDur keeps three significant figures or so: 5.598537s → 5.599s, 12.3456ms → 12.35ms.
func roundDur(d time.Duration) string {
	switch {
	case d >= time.Second:
		return d.Round(time.Millisecond).String()
	case d >= time.Millisecond:
		return d.Round(10 * time.Microsecond).String()
	}
	return d.Round(time.Microsecond).String()
}
