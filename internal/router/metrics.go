package router

import (
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"ganglion/internal/metrics"
)

type pairKey struct{ class, backend string }

// routerCodes get a pre-resolved counter per class and backend; other
// codes take the label lookup.
var routerCodes = [...]int{200, 201, 204, 304, 400, 401, 403, 404, 405, 413, 429, 500, 502, 503, 504}

// pairSeries are one class and backend's series, resolved once: a request
// costs one map read, not a label lookup per series.
type pairSeries struct {
	duration prometheus.Observer
	codes    [len(routerCodes)]atomic.Pointer[prometheus.Counter]
}

// routerMetrics are per class and backend: request counts by status,
// latency histograms, upstream errors; and whether each backend is up.
// The e2e harness and `ganglion up`'s tests read
// ganglion_router_requests_total: keep its name and labels.
type routerMetrics struct {
	reg      *metrics.Registry
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	upstream *prometheus.CounterVec
	inFlight prometheus.Gauge

	pairs sync.Map // pairKey → *pairSeries
}

func newMetrics(instance string, backends func() []*Backend) *routerMetrics {
	m := &routerMetrics{
		reg: metrics.New(instance),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ganglion_router_requests_total",
			Help: "Requests answered by the router, per endpoint class, backend and status."}, []string{"class", "backend", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "ganglion_router_request_duration_seconds",
			Help:    "Time from request to the end of the response, per class and backend.",
			Buckets: metrics.LatencyBuckets()}, []string{"class", "backend"}),
		upstream: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ganglion_router_upstream_errors_total",
			Help: "Failed attempts to reach a backend (refused, reset, timed out)."}, []string{"class", "backend"}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{Name: "ganglion_router_requests_in_flight",
			Help: "Requests the router is answering now (long-polls included)."}),
	}
	r := m.reg.Registerer()
	r.MustRegister(m.requests, m.duration, m.upstream, m.inFlight, &backendCollector{backends: backends,
		up: prometheus.NewDesc("ganglion_router_backend_up", "Whether the router considers a backend healthy.",
			[]string{"backend", "url"}, nil)})
	return m
}

func (m *routerMetrics) pair(class, backend string) *pairSeries {
	k := pairKey{class, backend}
	if s, ok := m.pairs.Load(k); ok {
		return s.(*pairSeries)
	}
	s, _ := m.pairs.LoadOrStore(k, &pairSeries{duration: m.duration.WithLabelValues(class, backend)})
	return s.(*pairSeries)
}

func (m *routerMetrics) observe(class, backend string, code int, took time.Duration) {
	s := m.pair(class, backend)
	s.duration.Observe(took.Seconds())
	for i, c := range routerCodes {
		if c != code {
			continue
		}
		ctr := s.codes[i].Load()
		if ctr == nil {
			c := m.requests.WithLabelValues(class, backend, strconv.Itoa(code))
			ctr = &c
			s.codes[i].Store(ctr)
		}
		(*ctr).Inc()
		return
	}
	m.requests.WithLabelValues(class, backend, strconv.Itoa(code)).Inc()
}

func (m *routerMetrics) upstreamError(class, backend string) {
	m.upstream.WithLabelValues(class, backend).Inc()
}

// backendCollector reads the backends' health at scrape time.
type backendCollector struct {
	backends func() []*Backend
	up       *prometheus.Desc
}

func (c *backendCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.up }

func (c *backendCollector) Collect(ch chan<- prometheus.Metric) {
	for _, be := range c.backends() {
		up := 0.0
		if be.Up() {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, up, be.Name, be.URL.String())
	}
}
