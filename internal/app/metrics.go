package app

import (
	"github.com/prometheus/client_golang/prometheus"

	"ganglion/internal/metrics"
)

// streamCollector exposes the stream positions this process sees, read
// from the registry at scrape time. `ganglion status` users and the test
// harness's settle check read ganglion_stream_position: keep the name and
// labels. Lag between instances is one writer's own series minus another
// instance's view of it; ganglion_replication_lag is the local view.
type streamCollector struct {
	p                         *Process
	position, current, uptime *prometheus.Desc
}

func (c *streamCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.position
	ch <- c.current
	ch <- c.uptime
}

func (c *streamCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.p.status()
	for name, ws := range st.Positions {
		for w, pos := range ws {
			ch <- prometheus.MustNewConstMetric(c.position, prometheus.GaugeValue, float64(pos), name, w)
		}
	}
	for name, cur := range st.Current {
		ch <- prometheus.MustNewConstMetric(c.current, prometheus.GaugeValue, float64(cur), name)
	}
	ch <- prometheus.MustNewConstMetric(c.uptime, prometheus.GaugeValue, float64(st.UptimeSec))
}

// registerProcessMetrics registers the process-level series: stream
// positions, uptime, and requests for endpoints this process does not
// serve.
func (p *Process) registerProcessMetrics(r prometheus.Registerer) {
	r.MustRegister(&streamCollector{p: p,
		position: prometheus.NewDesc("ganglion_stream_position", "Position of a stream writer as seen by this instance.",
			[]string{"stream", "writer"}, nil),
		current: prometheus.NewDesc("ganglion_stream_current", "Readable (minimum) position of a stream on this instance.",
			[]string{"stream"}, nil),
		uptime: prometheus.NewDesc("ganglion_uptime_seconds", "Seconds since this instance started.", nil, nil),
	})
	r.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: metrics.Namespace, Subsystem: "http",
		Name: "unrecognized_requests_total", Help: "Requests for endpoints this instance does not serve."},
		func() float64 { return float64(p.unrecognizedRequests.Load()) }))
}

// Metrics is the process's registry (tests, the dashboard check).
func (p *Process) Metrics() *metrics.Registry { return p.metrics }
