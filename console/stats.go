package console

import (
	"fmt"
	"html"
	"html/template"
	"math"
	"net/http"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/sagabox/sagabox/internal/textfmt"
)

// statsBuckets is the number of points of every chart.
const statsBuckets = 30

var statsWindows = []string{"1h", "6h", "24h", "7d", "30d"}

// typeStats are the four indicators of one saga type over the window.
type typeStats struct {
	Type                           string
	Completed, Compensated, Failed int64
	DurP50, DurP99, TTCP50, TTCP99 string
	Throughput, CompRate           string
	DurChart, ThroughputChart      template.HTML
	CompChart, TTCChart            template.HTML
}

type statsData struct {
	Window, Type string
	Windows      []string
	Types        []string
	PerType      []typeStats
}

type bucketRow struct {
	completed, compensated, failed int64
	durP50, durP99, ttcP50, ttcP99 float64 // seconds; NaN when none
}

func (c *console) statsPage(w http.ResponseWriter, r *http.Request) {
	v := r.URL.Query()
	d := statsData{Window: v.Get("window"), Type: v.Get("type"), Windows: statsWindows}
	if d.Window == "" {
		d.Window = "24h"
	}
	window, err := parseAge(d.Window)
	if err != nil || window < time.Minute {
		c.fail(w, r, http.StatusBadRequest, fmt.Errorf("window %q: use a duration of at least 1m, e.g. 1h or 7d", d.Window))
		return
	}
	if d.Types, err = c.sagaTypes(r); err != nil {
		c.fail(w, r, http.StatusInternalServerError, err)
		return
	}
	bucket := window / statsBuckets
	start := time.Now().Add(-window)
	rows, err := c.pool.Query(r.Context(), c.q.statsBuckets, pgx.QueryExecModeExec, start, bucket.Seconds(), d.Type)
	if err != nil {
		c.fail(w, r, http.StatusInternalServerError, fmt.Errorf("saga stats: %w", err))
		return
	}
	type acc struct {
		total   bucketRow
		buckets [statsBuckets]bucketRow
	}
	byType := map[string]*acc{}
	var order []string
	var typ string
	var b pgtype.Int4
	var br bucketRow
	var p [4]pgtype.Float8
	if _, err := pgx.ForEachRow(rows, []any{&typ, &b, &br.completed, &br.compensated, &br.failed, &p[0], &p[1], &p[2], &p[3]}, func() error {
		a := byType[typ]
		if a == nil {
			a = &acc{}
			for i := range a.buckets {
				a.buckets[i] = bucketRow{durP50: math.NaN(), durP99: math.NaN(), ttcP50: math.NaN(), ttcP99: math.NaN()}
			}
			byType[typ] = a
			order = append(order, typ)
		}
		f := func(x pgtype.Float8) float64 {
			if !x.Valid {
				return math.NaN()
			}
			return x.Float64
		}
		br.durP50, br.durP99, br.ttcP50, br.ttcP99 = f(p[0]), f(p[1]), f(p[2]), f(p[3])
		switch {
		case !b.Valid:
			a.total = br
		case b.Int32 >= 0 && b.Int32 < statsBuckets:
			a.buckets[b.Int32] = br
		case b.Int32 == statsBuckets: // ended this very instant
			a.buckets[statsBuckets-1] = br
		}
		return nil
	}); err != nil {
		c.fail(w, r, http.StatusInternalServerError, fmt.Errorf("saga stats: %w", err))
		return
	}
	ax := axis{start: start, bucket: bucket, window: d.Window}
	for _, t := range order {
		a := byType[t]
		ts := typeStats{Type: t, Completed: a.total.completed, Compensated: a.total.compensated, Failed: a.total.failed,
			DurP50: fmtSec(a.total.durP50), DurP99: fmtSec(a.total.durP99), TTCP50: fmtSec(a.total.ttcP50), TTCP99: fmtSec(a.total.ttcP99),
			Throughput: fmt.Sprintf("%.2f/min", float64(a.total.completed+a.total.compensated+a.total.failed)/window.Minutes()), CompRate: "–"}
		if n := a.total.compensated + a.total.failed; n > 0 {
			ts.CompRate = fmt.Sprintf("%.1f%%", 100*float64(a.total.compensated)/float64(n))
		}
		col := func(f func(bucketRow) float64) []float64 {
			out := make([]float64, statsBuckets)
			for i, b := range a.buckets {
				out[i] = f(b)
			}
			return out
		}
		perMin := bucket.Minutes()
		ts.DurChart = ax.chart("Duration of completed sagas", "s", false,
			series{"p50", "#1565c0", col(func(b bucketRow) float64 { return b.durP50 })},
			series{"p99", "#ef6c00", col(func(b bucketRow) float64 { return b.durP99 })})
		ts.ThroughputChart = ax.chart("Throughput (finished per minute)", "/min", true,
			series{"completed", "#2e7d32", col(func(b bucketRow) float64 { return float64(b.completed) / perMin })},
			series{"compensated", "#f9a825", col(func(b bucketRow) float64 { return float64(b.compensated) / perMin })},
			series{"failed", "#c62828", col(func(b bucketRow) float64 { return float64(b.failed) / perMin })})
		ts.CompChart = ax.chart("Compensation success rate", "%", false,
			series{"compensated / (compensated + failed)", "#6a1b9a", col(func(b bucketRow) float64 {
				if n := b.compensated + b.failed; n > 0 {
					return 100 * float64(b.compensated) / float64(n)
				}
				return math.NaN()
			})})
		ts.TTCChart = ax.chart("Time to consistency (completed or compensated)", "s", false,
			series{"p50", "#1565c0", col(func(b bucketRow) float64 { return b.ttcP50 })},
			series{"p99", "#ef6c00", col(func(b bucketRow) float64 { return b.ttcP99 })})
		d.PerType = append(d.PerType, ts)
	}
	c.render(w, r, "stats", "Stats", d)
}

func fmtSec(s float64) string {
	if math.IsNaN(s) {
		return "–"
	}
	return textfmt.Duration(time.Duration(s * float64(time.Second)))
}

type series struct {
	name, color string
	values      []float64 // NaN: no data in that bucket
}

type axis struct {
	start  time.Time
	bucket time.Duration
	window string
}

// chart draws series over the window as an inline SVG: lines, or stacked bars when stacked.
func (ax axis) chart(title, unit string, stacked bool, ss ...series) template.HTML {
	const w, h, left, right, top, bottom = 520, 190, 52, 12, 28, 40
	pw, ph := float64(w-left-right), float64(h-top-bottom)
	n := statsBuckets
	top1 := 0.0
	for i := 0; i < n; i++ {
		sum := 0.0
		for _, s := range ss {
			if v := s.values[i]; !math.IsNaN(v) {
				if stacked {
					sum += v
				} else {
					sum = max(sum, v)
				}
			}
		}
		top1 = max(top1, sum)
	}
	ymax := niceCeil(top1)
	if unit == "%" {
		ymax = 100
	}
	x := func(i float64) float64 { return float64(left) + i*pw/float64(n) }
	y := func(v float64) float64 { return float64(top) + ph - v/ymax*ph }
	var b strings.Builder
	fmt.Fprintf(&b, `<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="Helvetica, Arial, sans-serif" font-size="11" role="img" aria-label="%s">`,
		w, h, w, h, html.EscapeString(title))
	fmt.Fprintf(&b, `<text x="%d" y="16" font-size="13" font-weight="bold" fill="#212121">%s</text>`, left, html.EscapeString(title))
	for k := 0; k <= 4; k++ {
		v := ymax * float64(k) / 4
		fmt.Fprintf(&b, `<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#e0e0e0"/>`, left, w-right, y(v), y(v))
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end" fill="#757575">%s</text>`, left-4, y(v)+4, html.EscapeString(fmtTick(v, unit)))
	}
	fmt.Fprintf(&b, `<text x="%d" y="%d" fill="#757575">−%s</text><text x="%d" y="%d" text-anchor="end" fill="#757575">now</text>`,
		left, h-bottom+14, html.EscapeString(ax.window), w-right, h-bottom+14)
	if stacked {
		bw := pw / float64(n)
		for i := 0; i < n; i++ {
			base := 0.0
			for _, s := range ss {
				v := s.values[i]
				if math.IsNaN(v) || v <= 0 {
					continue
				}
				fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"><title>%s %s</title></rect>`,
					x(float64(i))+1, y(base+v), bw-2, y(base)-y(base+v), s.color, html.EscapeString(s.name), fmtTick(v, unit))
				base += v
			}
		}
	} else {
		for _, s := range ss {
			var pts []string
			flush := func() {
				if len(pts) == 1 {
					var cx, cy float64
					fmt.Sscanf(pts[0], "%f,%f", &cx, &cy)
					fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="2.5" fill="%s"/>`, cx, cy, s.color)
				} else if len(pts) > 1 {
					fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>`, s.color, strings.Join(pts, " "))
				}
				pts = pts[:0]
			}
			for i, v := range s.values {
				if math.IsNaN(v) {
					flush()
					continue
				}
				pts = append(pts, fmt.Sprintf("%.1f,%.1f", x(float64(i)+0.5), y(v)))
			}
			flush()
		}
	}
	lx := float64(left)
	for _, s := range ss {
		fmt.Fprintf(&b, `<rect x="%.1f" y="%d" width="10" height="10" fill="%s"/><text x="%.1f" y="%d" fill="#424242">%s</text>`,
			lx, h-18, s.color, lx+14, h-9, html.EscapeString(s.name))
		lx += 24 + 6.5*float64(len(s.name))
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String()) // every text above is escaped
}

// niceCeil rounds v up to 1, 2 or 5 times a power of ten (at least a tiny positive value).
func niceCeil(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if v <= m*p {
			return m * p
		}
	}
	return 10 * p
}

func fmtTick(v float64, unit string) string {
	switch unit {
	case "s":
		return textfmt.Duration(time.Duration(v * float64(time.Second)))
	case "%":
		return fmt.Sprintf("%.0f%%", v)
	}
	if v >= 10 || v == 0 {
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.2g", v)
}
