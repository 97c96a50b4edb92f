package textfmt

import (
	"testing"
	"time"
)

func TestDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		0:                                     "0s",
		-time.Second:                          "0s",
		1234 * time.Nanosecond:                "1µs",
		12345678 * time.Nanosecond:            "12.3ms",
		5598537 * time.Microsecond:            "5.599s",
		3*time.Minute + 2500*time.Millisecond: "3m3s",
	} {
		if got := Duration(d); got != want {
			t.Errorf("Duration(%d) = %q, want %q", d, got, want)
		}
	}
}

func TestTime(t *testing.T) {
	if got := Time(time.Time{}, "-"); got != "-" {
		t.Errorf("zero time = %q, want -", got)
	}
	at := time.Date(2026, 12, 1, 15, 4, 5, 678_900_000, time.FixedZone("x", 3600))
	if got, want := Time(at, "-"), "2026-12-01 14:04:05.678"; got != want {
		t.Errorf("Time = %q, want %q", got, want)
	}
}
