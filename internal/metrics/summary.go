package metrics

import (
	"math"
	"slices"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// Bucket is one cumulative histogram bucket: Count requests took at most LE
// seconds.
type Bucket struct {
	LE    float64 `json:"le"`
	Count uint64  `json:"count"`
}

// Summary is a process's request count and latency histogram since it
// started, summed over classes, for `ganglion status`.
type Summary struct {
	Requests uint64 `json:"requests"`
	// Buckets are the finite buckets, ascending; Requests is the +Inf one
	// (JSON has no infinity).
	Buckets []Bucket `json:"buckets"`
	// Excluded lists the classes left out (long-polls, whose latency is the
	// client's timeout).
	Excluded []string `json:"excluded,omitempty"`
}

// LongPollClasses are the classes whose requests wait for news: their
// duration says nothing about the server's speed.
func LongPollClasses() []string { return []string{"legacy_sync", "sync"} }

// Summary sums the request histogram over every class but the long-polls.
func (m *HTTP) Summary() Summary {
	if m == nil {
		return Summary{}
	}
	ch := make(chan prometheus.Metric, 64)
	go func() { m.duration.Collect(ch); close(ch) }()
	byLE := map[float64]uint64{}
	excluded := LongPollClasses()
	var s Summary
	for pm := range ch {
		var d dto.Metric
		if pm.Write(&d) != nil || d.Histogram == nil {
			continue
		}
		class := ""
		for _, l := range d.Label {
			if l.GetName() == "class" {
				class = l.GetValue()
			}
		}
		if slices.Contains(excluded, class) {
			continue
		}
		s.Requests += d.Histogram.GetSampleCount()
		for _, b := range d.Histogram.Bucket {
			byLE[b.GetUpperBound()] += b.GetCumulativeCount()
		}
	}
	for _, le := range LatencyBuckets() {
		s.Buckets = append(s.Buckets, Bucket{LE: le, Count: byLE[le]})
	}
	s.Excluded = excluded
	return s
}

// Quantile estimates the q-quantile (0 < q < 1) of total requests counted
// in cumulative finite buckets, interpolating linearly inside the bucket it
// falls in, as Prometheus's histogram_quantile does. ok is false without
// requests; +Inf means beyond the largest finite bound.
func Quantile(q float64, buckets []Bucket, total uint64) (seconds float64, ok bool) {
	if total == 0 {
		return 0, false
	}
	rank := q * float64(total)
	prevLE, prevCount := 0.0, 0.0
	for _, b := range buckets {
		c := float64(b.Count)
		if c >= rank {
			if c == prevCount {
				return b.LE, true
			}
			return prevLE + (b.LE-prevLE)*(rank-prevCount)/(c-prevCount), true
		}
		prevLE, prevCount = b.LE, c
	}
	return math.Inf(1), true
}

// Sub is the requests of s that came after earlier (a sample of the same
// process taken before s); nil when s is not later (the process restarted).
func (s Summary) Sub(earlier Summary) *Summary {
	if s.Requests < earlier.Requests || len(s.Buckets) != len(earlier.Buckets) {
		return nil
	}
	out := Summary{Requests: s.Requests - earlier.Requests, Excluded: s.Excluded}
	for i, b := range s.Buckets {
		if b.LE != earlier.Buckets[i].LE || b.Count < earlier.Buckets[i].Count {
			return nil
		}
		out.Buckets = append(out.Buckets, Bucket{LE: b.LE, Count: b.Count - earlier.Buckets[i].Count})
	}
	return &out
}
