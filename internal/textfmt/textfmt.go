package textfmt

import "time"

// Time formats t in UTC to the millisecond; a zero t is shown as none.
func Time(t time.Time, none string) string {
	if t.IsZero() {
		return none
	}
	return t.UTC().Format("2006-01-02 15:04:05.000")
}

// Duration rounds d to what a reader can compare at a glance: microseconds
// below a millisecond, tenths of a millisecond below a second, milliseconds
// below a minute, seconds above.
func Duration(d time.Duration) string {
	switch {
	case d <= 0:
		return "0s"
	case d < time.Millisecond:
		return d.Round(time.Microsecond).String()
	case d < time.Second:
		return d.Round(100 * time.Microsecond).String()
	case d < time.Minute:
		return d.Round(time.Millisecond).String()
	default:
		return d.Round(time.Second).String()
	}
}
