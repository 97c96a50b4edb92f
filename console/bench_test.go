package console_test

import (
	"context"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/sagabox/sagabox/console"
	"github.com/sagabox/sagabox/sagastate"
)

// pageLimit is the answer time the list and detail pages must stay under with 1M sagas.
const pageLimit = 100 * time.Millisecond

// BenchmarkPages1M times the console's list and detail pages (full HTTP round trip:
// queries, template, response) with 1M sagas in saga_instances (SAGABOX_BENCH_SAGAS
// overrides the count), beside the limit of 100 ms. The baseline in the same run is the
// same deep page fetched with OFFSET instead of the keyset, which is what keyset paging
// saves (OFFSET walks the same index, saga_instances_status_created_idx). Each page is fetched 15 times; the median is reported. PostgreSQL runs with
// fsync off (internal/testenv) on the same machine as the benchmark.
func BenchmarkPages1M(b *testing.B) {
	n := 1_000_000
	if s := os.Getenv("SAGABOX_BENCH_SAGAS"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	f := newFixture(b)
	ctx := context.Background()
	t0 := time.Now()
	// 90% completed, 5% compensated, 2% failed, 1.5% running, 1% compensating, 0.5% timeout,
	// three types, created over the last 30 days.
	if _, err := f.db.Pool.Exec(ctx, `INSERT INTO sagabox.saga_instances (id, type, status, payload, last_error, created_at, updated_at, finished_at)
SELECT gen_random_uuid(), (ARRAY['shop', 'transfer', 'refund'])[1 + g % 3], s, '{"amount": 10}',
       CASE WHEN s IN ('failed', 'compensated') THEN 'step charge failed: card declined' ELSE '' END,
       c, c + interval '120 milliseconds', CASE WHEN s IN ('completed', 'compensated') THEN c + interval '120 milliseconds' END
FROM generate_series(1, $1::int) g,
     LATERAL (SELECT CASE WHEN g % 200 < 180 THEN 'completed' WHEN g % 200 < 190 THEN 'compensated' WHEN g % 200 < 194 THEN 'failed'
                          WHEN g % 200 < 197 THEN 'running' WHEN g % 200 < 199 THEN 'compensating' ELSE 'timeout' END AS s,
                     now() - interval '30 days' * (g::float8 / $1) AS c) x`, n); err != nil {
		b.Fatal(err)
	}
	if _, err := f.db.Pool.Exec(ctx, `VACUUM ANALYZE sagabox.saga_instances`); err != nil {
		b.Fatal(err)
	}
	b.Logf("inserted %d sagas and analyzed in %v", n, time.Since(t0).Round(time.Millisecond))
	srv := f.serve(b, console.Config{})
	client := srv.Client()

	get := func(path string) time.Duration {
		start := time.Now()
		resp, err := client.Get(srv.URL + path)
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			b.Fatalf("GET %s: %s", path, resp.Status)
		}
		return time.Since(start)
	}
	median := func(path string) time.Duration {
		get(path) // warm: plan caches, connections
		var ds []time.Duration
		for i := 0; i < 15; i++ {
			ds = append(ds, get(path))
		}
		slices.Sort(ds)
		return ds[len(ds)/2]
	}
	// A cursor in the middle of the table, for a deep page.
	var mid string
	if err := f.db.Pool.QueryRow(ctx, `SELECT (extract(epoch FROM created_at) * 1000000)::bigint || '_' || id FROM sagabox.saga_instances
ORDER BY created_at DESC, id DESC OFFSET $1 LIMIT 1`, n/2).Scan(&mid); err != nil {
		b.Fatal(err)
	}
	var offsetDeep time.Duration
	{
		var ds []time.Duration
		for i := 0; i < 5; i++ {
			start := time.Now()
			rows, err := f.db.Pool.Query(ctx, `SELECT id, type, status, created_at, updated_at, finished_at, aborted_at, last_error
FROM sagabox.saga_instances ORDER BY status, created_at DESC, id DESC OFFSET $1 LIMIT 51`, n/2)
			if err != nil {
				b.Fatal(err)
			}
			rows.Close()
			ds = append(ds, time.Since(start))
		}
		slices.Sort(ds)
		offsetDeep = ds[len(ds)/2]
	}
	pages := []struct{ name, path string }{
		{"list, first page", "/sagas"},
		{"list, deep page (keyset)", "/sagas?before=" + mid},
		{"list, status=failed", "/sagas?status=failed"},
		{"list, failed+timeout, deep", "/sagas?status=failed&status=timeout&before=" + mid},
		{"list, type=refund", "/sagas?type=refund"},
		{"list, stuck for 1h", "/sagas?stuck=1h"},
		{"list, created within 1h", "/sagas?newer=1h"},
		{"list, id prefix", "/sagas?q=" + f.ids[sagastate.SagaFailed].String()[:6]},
		{"detail, compensated saga", "/sagas/" + f.ids[sagastate.SagaCompensated].String()},
		{"detail, failed saga", "/sagas/" + f.ids[sagastate.SagaFailed].String()},
	}
	var worst time.Duration
	out := fmt.Sprintf("\n%d sagas; median of 15 GETs per page; limit %v\n%-30s %9s %7s\n", n, pageLimit, "page", "ms", "limit")
	for i := 0; i < b.N; i++ {
		for _, p := range pages {
			d := median(p.path)
			worst = max(worst, d)
			verdict := "ok"
			if d > pageLimit {
				verdict = "OVER"
			}
			out += fmt.Sprintf("%-30s %9.2f %7s\n", p.name, float64(d.Microseconds())/1000, verdict)
		}
	}
	deep := median("/sagas?before=" + mid)
	out += fmt.Sprintf("baseline: the deep page's query with OFFSET %d: %.2f ms (keyset page, whole HTTP round trip: %.2f ms, %.1fx faster)\n",
		n/2, float64(offsetDeep.Microseconds())/1000, float64(deep.Microseconds())/1000, float64(offsetDeep)/float64(deep))
	fmt.Print(out)
	b.ReportMetric(float64(worst.Microseconds())/1000, "worst-page-ms")
	b.ReportMetric(float64(offsetDeep)/float64(deep), "offset/keyset")
}
