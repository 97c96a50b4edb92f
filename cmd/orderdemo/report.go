package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"sort"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/sagabox/sagabox/internal/demo"
	"github.com/sagabox/sagabox/internal/timeline"
	"github.com/sagabox/sagabox/sagastate"
)

// summary is the --json output and the source of the human one.
type summary struct {
	Flow              string         `json:"flow"`
	Count             int            `json:"count"`
	DeclineEvery      int            `json:"decline_every"`
	Concurrency       int            `json:"concurrency"`
	DuplicateDelivery bool           `json:"duplicate_delivery"`
	Sagas             []sagaResult   `json:"sagas,omitempty"`
	Transfers         []transferRow  `json:"transfers,omitempty"`
	Totals            map[string]int `json:"totals"`
	DurationMS        float64        `json:"duration_ms"`
	ThroughputPerS    float64        `json:"throughput_per_s"`
	TimeToConsistency latency        `json:"time_to_consistency_ms"`
	SagaRetries       demo.Retries   `json:"saga_retries"`
	Invariants        demo.Report    `json:"invariants"`
	OK                bool           `json:"ok"`
}

type latency struct {
	P50 float64 `json:"p50"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

// percentiles uses the nearest-rank method on milliseconds.
func percentiles(ms []float64) latency {
	if len(ms) == 0 {
		return latency{}
	}
	s := append([]float64(nil), ms...)
	sort.Float64s(s)
	rank := func(p float64) float64 {
		i := int(p*float64(len(s))+0.999999) - 1
		return s[min(max(i, 0), len(s)-1)]
	}
	return latency{P50: rank(0.50), P99: rank(0.99), Max: s[len(s)-1]}
}

func report(ctx context.Context, c *config, in *infra, orch *sagastate.Orchestrator, results []sagaResult, elapsed time.Duration) error {
	sum := summary{Flow: "order", Count: c.orders, DeclineEvery: c.declineEvery, Concurrency: c.concurrency,
		DuplicateDelivery: c.duplicate, Totals: map[string]int{}}
	outcomes := map[uuid.UUID]string{}
	var ttc []float64
	var unexpected []string
	var firstCompleted, firstCompensated uuid.UUID
	for i := range results {
		r := &results[i]
		if r.ID == uuid.Nil { // never started (interrupted)
			continue
		}
		s, err := orch.Get(ctx, r.ID)
		if err != nil {
			return err
		}
		r.Status, r.LastError = string(s.Status), s.LastError
		if !s.Status.Final() {
			r.Status = "unfinished (" + string(s.Status) + ")"
		}
		sum.Totals[string(s.Status)]++
		outcomes[r.ID] = string(s.Status)
		if !s.FinishedAt.IsZero() {
			r.TTCMillis = float64(s.FinishedAt.Sub(s.CreatedAt).Microseconds()) / 1000
			ttc = append(ttc, r.TTCMillis)
		}
		if r.Status != r.Expected {
			unexpected = append(unexpected, fmt.Sprintf("order %d (amount %d) %s, expected %s", r.Order, r.Amount, r.Status, r.Expected))
		}
		switch {
		case s.Status == sagastate.SagaCompleted && firstCompleted == uuid.Nil:
			firstCompleted = r.ID
		case s.Status == sagastate.SagaCompensated && firstCompensated == uuid.Nil:
			firstCompensated = r.ID
		}
	}
	sum.Sagas = results
	sum.DurationMS = float64(elapsed.Microseconds()) / 1000
	sum.ThroughputPerS = float64(len(ttc)) / elapsed.Seconds()
	sum.TimeToConsistency = percentiles(ttc)

	ids := make([]uuid.UUID, 0, len(outcomes))
	for id := range outcomes {
		ids = append(ids, id)
	}
	var err error
	if sum.SagaRetries, err = demo.CountRetries(ctx, in.pool, c.schema, ids); err != nil {
		return err
	}
	// Every finished order saga in the database, this run's and earlier ones' (a driver
	// restarted after a crash), is checked; stock conservation covers running ones too.
	all, err := demo.FinishedOrders(ctx, in.pool, c.schema)
	if err != nil {
		return err
	}
	maps.Copy(all, outcomes)
	rep, err := in.svc.CheckOrders(ctx, in.pool, all)
	if err != nil {
		return err
	}
	rep = append(Report{outcomeCheck(len(results), unexpected)}, rep...)
	sum.Invariants = rep
	sum.OK = rep.Err() == nil

	out := c.out()
	fmt.Fprintln(out)
	fmt.Fprintln(out, "Summary")
	fmt.Fprintf(out, "  completed            %d\n", sum.Totals["completed"])
	fmt.Fprintf(out, "  compensated          %d\n", sum.Totals["compensated"])
	fmt.Fprintf(out, "  failed               %d\n", sum.Totals["failed"])
	if n := len(results) - sum.Totals["completed"] - sum.Totals["compensated"] - sum.Totals["failed"]; n > 0 {
		fmt.Fprintf(out, "  unfinished           %d\n", n)
	}
	fmt.Fprintf(out, "  throughput           %.1f sagas/s (%d in %s)\n", sum.ThroughputPerS, len(ttc), elapsed.Round(time.Millisecond))
	fmt.Fprintf(out, "  time to consistency  p50 %s  p99 %s  max %s\n", ms(sum.TimeToConsistency.P50), ms(sum.TimeToConsistency.P99), ms(sum.TimeToConsistency.Max))
	fmt.Fprintf(out, "  saga-level retries   %d (%d after a deadlock or serialization failure)\n", sum.SagaRetries.Attempts, sum.SagaRetries.Deadlocks)

	if c.timelines {
		for _, pick := range []struct {
			label string
			id    uuid.UUID
			file  string
		}{{"a completed saga", firstCompleted, "completed.svg"}, {"a compensated saga", firstCompensated, "compensated.svg"}} {
			if pick.id == uuid.Nil {
				continue
			}
			s, err := orch.Get(ctx, pick.id)
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "\nTimeline of %s (sagactl saga show %s --svg FILE draws it):\n", pick.label, pick.id)
			if err := timeline.FromSaga(s).Text(out, 56); err != nil {
				return err
			}
			if c.svgDir != "" {
				path, err := writeSVG(ctx, orch, pick.id, c.svgDir, pick.file)
				if err != nil {
					return err
				}
				fmt.Fprintf(out, "  (also drawn in %s)\n", path)
			}
		}
	}
	return finish(c, &sum)
}

// Report is demo.Report, named here for brevity.
type Report = demo.Report

func outcomeCheck(n int, unexpected []string) demo.Invariant {
	inv := demo.Invariant{Name: "every saga finished as expected", OK: len(unexpected) == 0,
		Detail: fmt.Sprintf("%d saga(s): orders above 1000 compensated, the others completed", n)}
	if !inv.OK {
		more := ""
		if len(unexpected) > 5 {
			more = fmt.Sprintf(" (and %d more)", len(unexpected)-5)
			unexpected = unexpected[:5]
		}
		inv.Detail = strings.Join(unexpected, "; ") + more
	}
	return inv
}

// finish prints the invariants (or the JSON summary) and decides the exit status.
func finish(c *config, sum *summary) error {
	if c.json {
		enc := json.NewEncoder(c.stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(sum); err != nil {
			return err
		}
	}
	printInvariants(c.out(), sum.Invariants)
	if !sum.OK {
		fmt.Fprintf(c.stderr, "orderdemo: %v\n", sum.Invariants.Err())
		return errBroken
	}
	return nil
}

func printInvariants(out io.Writer, rep demo.Report) {
	fmt.Fprintln(out, "\nInvariants")
	for _, inv := range rep {
		mark := "ok  "
		if !inv.OK {
			mark = "FAIL"
		}
		fmt.Fprintf(out, "  %s %s: %s\n", mark, inv.Name, inv.Detail)
	}
	if rep.Err() == nil {
		fmt.Fprintln(out, "all invariants hold")
	} else {
		fmt.Fprintln(out, "INVARIANTS BROKEN")
	}
}

func ms(v float64) string {
	return (time.Duration(v * float64(time.Millisecond))).Round(100 * time.Microsecond).String()
}
