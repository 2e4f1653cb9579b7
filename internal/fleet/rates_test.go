package fleet_test

import (
	"math"
	"strings"
	"testing"
	"time"

	"ganglion/internal/app"
	"ganglion/internal/fleet"
	"ganglion/internal/metrics"
)

// buckets spreads counts over the standard latency buckets: counts[i]
// requests in bucket i (not cumulative).
func buckets(counts map[float64]uint64) ([]metrics.Bucket, uint64) {
	var out []metrics.Bucket
	var cum uint64
	for _, le := range metrics.LatencyBuckets() {
		cum += counts[le]
		out = append(out, metrics.Bucket{LE: le, Count: cum})
	}
	return out, cum + counts[math.Inf(1)]
}

func TestQuantile(t *testing.T) {
	// 99 fast requests (≤ 5 ms) and one slow (≤ 1 s): the 99th percentile
	// is at the top of the fast bucket.
	b, total := buckets(map[float64]uint64{0.005: 99, 1: 1})
	if q, ok := metrics.Quantile(0.99, b, total); !ok || math.Abs(q-0.005) > 1e-9 {
		t.Errorf("p99 = %v %v, want 0.005", q, ok)
	}
	// 50 in (2.5 ms, 5 ms], 50 in (5 ms, 10 ms]: p99 interpolates to 9.9 ms.
	b, total = buckets(map[float64]uint64{0.005: 50, 0.01: 50})
	if q, _ := metrics.Quantile(0.99, b, total); math.Abs(q-0.0099) > 1e-9 {
		t.Errorf("p99 = %v, want 0.0099", q)
	}
	b, total = buckets(map[float64]uint64{math.Inf(1): 3})
	if q, _ := metrics.Quantile(0.99, b, total); !math.IsInf(q, 1) {
		t.Errorf("p99 of requests past the last bucket = %v", q)
	}
	if _, ok := metrics.Quantile(0.99, b, 0); ok {
		t.Error("a quantile of no requests")
	}
}

func TestRequestRates(t *testing.T) {
	b1, n1 := buckets(map[float64]uint64{0.005: 100})
	b2, n2 := buckets(map[float64]uint64{0.005: 100, 0.5: 50})
	report := func(name string, uptime int64, b []metrics.Bucket, n uint64) fleet.Report {
		return fleet.Report{Instance: name, Up: true, Status: statusJSON(t, app.Status{Instance: name, UptimeSec: uptime,
			HTTP: &metrics.Summary{Requests: n, Buckets: b}})}
	}
	first := []fleet.Report{report("main", 100, b1, n1), report("worker1", 50, b2, n2)}
	// worker1 restarted between the samples: its counters went down.
	second := []fleet.Report{report("main", 102, b2, n2), report("worker1", 1, b1, n1), {Instance: "gone"}}

	since := fleet.RequestRates(nil, first, 0)
	if len(since) != 2 || !since[0].SinceStart || since[0].PerSecond != 1 || since[1].PerSecond != 3 {
		t.Fatalf("since start: %+v", since)
	}
	rates := fleet.RequestRates(first, second, 2*time.Second)
	if len(rates) != 2 {
		t.Fatalf("rates: %+v", rates)
	}
	// main: 50 requests in 2 s, all in (0.25 s, 0.5 s]: p99 interpolates to 497.5 ms.
	if r := rates[0]; r.SinceStart || r.Requests != 50 || r.PerSecond != 25 || math.Abs(r.P99-0.4975) > 1e-9 {
		t.Errorf("main: %+v", r)
	}
	if r := rates[1]; !r.SinceStart || r.Requests != 100 || r.PerSecond != 100 {
		t.Errorf("restarted worker1: %+v", r)
	}

	var out strings.Builder
	if err := fleet.WriteRateTable(&out, rates); err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, l := range strings.Split(out.String(), "\n") {
		lines = append(lines, strings.Join(strings.Fields(l), " "))
	}
	got := strings.Join(lines, "\n")
	for _, want := range []string{"INSTANCE REQ/S P99 REQUESTS OVER", "main 25.0 497.5ms 50 last 2s", "worker1 100.0 4.975ms 100 since start"} {
		if !strings.Contains(got, want) {
			t.Errorf("rate table lacks %q:\n%s", want, out.String())
		}
	}
}
