package router

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// latencyBuckets are the histogram's upper bounds in seconds: fine at the
// low end for ordinary requests, up to a minute for long-polls.
var latencyBuckets = [...]float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}

type pairKey struct{ class, backend string }

type countKey struct {
	class, backend string
	code           int
}

type histogram struct {
	counts [len(latencyBuckets)]uint64 // non-cumulative
	count  uint64
	sum    float64
}

// metrics are per class and backend: request counts by status, latency
// histograms, upstream errors. One mutex is plenty at proxy rates; the
// critical section is a few map lookups.
type metrics struct {
	instance string

	mu        sync.Mutex
	requests  map[countKey]uint64
	latencies map[pairKey]*histogram
	upstream  map[pairKey]uint64
}

func newMetrics(instance string) *metrics {
	return &metrics{
		instance:  instance,
		requests:  map[countKey]uint64{},
		latencies: map[pairKey]*histogram{},
		upstream:  map[pairKey]uint64{},
	}
}

func (m *metrics) observe(class, backend string, code int, took time.Duration) {
	s := took.Seconds()
	m.mu.Lock()
	defer m.mu.Unlock()
	m.requests[countKey{class, backend, code}]++
	h := m.latencies[pairKey{class, backend}]
	if h == nil {
		h = &histogram{}
		m.latencies[pairKey{class, backend}] = h
	}
	h.count++
	h.sum += s
	for i, ub := range latencyBuckets {
		if s <= ub {
			h.counts[i]++
			break
		}
	}
}

func (m *metrics) upstreamError(class, backend string) {
	m.mu.Lock()
	m.upstream[pairKey{class, backend}]++
	m.mu.Unlock()
}

// render writes the Prometheus text exposition format.
func (m *metrics) render(backends []*Backend) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var b strings.Builder
	inst := strconv.Quote(m.instance)

	b.WriteString("# HELP ganglion_router_requests_total Requests answered by the router, per endpoint class, backend and status.\n")
	b.WriteString("# TYPE ganglion_router_requests_total counter\n")
	ck := make([]countKey, 0, len(m.requests))
	for k := range m.requests {
		ck = append(ck, k)
	}
	sort.Slice(ck, func(i, j int) bool {
		a, c := ck[i], ck[j]
		if a.class != c.class {
			return a.class < c.class
		}
		if a.backend != c.backend {
			return a.backend < c.backend
		}
		return a.code < c.code
	})
	for _, k := range ck {
		fmt.Fprintf(&b, "ganglion_router_requests_total{instance=%s,class=%q,backend=%q,code=\"%d\"} %d\n",
			inst, k.class, k.backend, k.code, m.requests[k])
	}

	b.WriteString("# HELP ganglion_router_request_duration_seconds Time from request to the end of the response, per class and backend.\n")
	b.WriteString("# TYPE ganglion_router_request_duration_seconds histogram\n")
	for _, k := range sortedPairs(m.latencies) {
		h := m.latencies[k]
		labels := fmt.Sprintf("instance=%s,class=%q,backend=%q", inst, k.class, k.backend)
		var cum uint64
		for i, ub := range latencyBuckets {
			cum += h.counts[i]
			fmt.Fprintf(&b, "ganglion_router_request_duration_seconds_bucket{%s,le=\"%s\"} %d\n", labels, strconv.FormatFloat(ub, 'g', -1, 64), cum)
		}
		fmt.Fprintf(&b, "ganglion_router_request_duration_seconds_bucket{%s,le=\"+Inf\"} %d\n", labels, h.count)
		fmt.Fprintf(&b, "ganglion_router_request_duration_seconds_sum{%s} %g\n", labels, h.sum)
		fmt.Fprintf(&b, "ganglion_router_request_duration_seconds_count{%s} %d\n", labels, h.count)
	}

	b.WriteString("# HELP ganglion_router_upstream_errors_total Failed attempts to reach a backend (refused, reset, timed out).\n")
	b.WriteString("# TYPE ganglion_router_upstream_errors_total counter\n")
	for _, k := range sortedPairs(m.upstream) {
		fmt.Fprintf(&b, "ganglion_router_upstream_errors_total{instance=%s,class=%q,backend=%q} %d\n", inst, k.class, k.backend, m.upstream[k])
	}

	b.WriteString("# HELP ganglion_router_backend_up Whether the router considers a backend healthy.\n")
	b.WriteString("# TYPE ganglion_router_backend_up gauge\n")
	for _, be := range backends {
		up := 0
		if be.Up() {
			up = 1
		}
		fmt.Fprintf(&b, "ganglion_router_backend_up{instance=%s,backend=%q,url=%q} %d\n", inst, be.Name, be.URL.String(), up)
	}
	return b.String()
}

func sortedPairs[V any](m map[pairKey]V) []pairKey {
	out := make([]pairKey, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].class != out[j].class {
			return out[i].class < out[j].class
		}
		return out[i].backend < out[j].backend
	})
	return out
}
