package fleet

import (
	"fmt"
	"io"
	"math"
	"text/tabwriter"
	"time"

	"ganglion/internal/metrics"
)

// Rate is one instance's request rate and 99th-percentile latency over a
// window. Long-polls (/sync, /events) are left out: their duration is the
// client's timeout, not the server's speed.
type Rate struct {
	Instance  string
	Requests  uint64 // in the window
	PerSecond float64
	// P99 is in seconds (+Inf past the largest bucket); HasP99 is false
	// without requests in the window.
	P99    float64
	HasP99 bool
	// Window is the window's length; SinceStart says it is the instance's
	// uptime rather than the time between two samples.
	Window     time.Duration
	SinceStart bool
}

// RequestRates computes each answering instance's rate. With earlier (the
// reports of the same targets sampled elapsed before reports), the window is
// between the two samples; otherwise, or for an instance that restarted in
// between, it is the instance's uptime: counters since start over seconds
// since start.
func RequestRates(earlier, reports []Report, elapsed time.Duration) []Rate {
	before := map[string]*metrics.Summary{}
	for _, r := range earlier {
		if st := r.parsed(); st != nil && st.HTTP != nil {
			before[r.Instance] = st.HTTP
		}
	}
	var out []Rate
	for _, r := range reports {
		st := r.parsed()
		if st == nil || st.HTTP == nil {
			continue
		}
		sum, rate := st.HTTP, Rate{Instance: r.Instance}
		if prev := before[r.Instance]; prev != nil && elapsed > 0 {
			if d := st.HTTP.Sub(*prev); d != nil {
				sum, rate.Window = d, elapsed
			}
		}
		if rate.Window == 0 {
			rate.SinceStart = true
			rate.Window = max(time.Duration(st.UptimeSec)*time.Second, time.Second)
		}
		rate.Requests = sum.Requests
		rate.PerSecond = float64(sum.Requests) / rate.Window.Seconds()
		rate.P99, rate.HasP99 = metrics.Quantile(0.99, sum.Buckets, sum.Requests)
		out = append(out, rate)
	}
	return out
}

// WriteRateTable prints the request rates.
func WriteRateTable(w io.Writer, rates []Rate) error {
	if len(rates) == 0 {
		return nil
	}
	fmt.Fprintln(w, "\nRequests (long-polls excluded):")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "INSTANCE\tREQ/S\tP99\tREQUESTS\tOVER")
	for _, r := range rates {
		p99 := "-"
		switch {
		case !r.HasP99:
		case math.IsInf(r.P99, 1):
			b := metrics.LatencyBuckets()
			p99 = fmt.Sprintf(">%gs", b[len(b)-1])
		default:
			p99 = roundLatency(time.Duration(r.P99 * float64(time.Second))).String()
		}
		over := "last " + r.Window.Round(time.Millisecond).String()
		if r.SinceStart {
			over = "since start"
		}
		fmt.Fprintf(tw, "%s\t%.1f\t%s\t%d\t%s\n", r.Instance, r.PerSecond, p99, r.Requests, over)
	}
	return tw.Flush()
}

// roundLatency keeps two or three significant digits.
func roundLatency(d time.Duration) time.Duration {
	switch {
	case d >= time.Second:
		return d.Round(10 * time.Millisecond)
	case d >= 10*time.Millisecond:
		return d.Round(100 * time.Microsecond)
	default:
		return d.Round(time.Microsecond)
	}
}
