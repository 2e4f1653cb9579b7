package replication

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"ganglion/internal/streams"
	"ganglion/internal/tracing"
)

// heardPositions keeps, per stream and writer, the highest position heard
// on Redis that passed the database check (believe): the replication lag
// is how far the applied position is behind it. The zero value is ready.
type heardPositions struct {
	mu sync.Mutex
	m  map[streams.Name]map[string]int64
}

func (h *heardPositions) note(name streams.Name, writer string, pos int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.m == nil {
		h.m = map[streams.Name]map[string]int64{}
	}
	if h.m[name] == nil {
		h.m[name] = map[string]int64{}
	}
	if pos > h.m[name][writer] {
		h.m[name][writer] = pos
	}
}

// Lag is, per stream and writer, how far this process's applied position
// is behind the highest believed position heard on Redis (never negative).
// It stays above zero while a catch-up fails.
func (r *Replicator) Lag() map[streams.Name]map[string]int64 {
	r.heard.mu.Lock()
	defer r.heard.mu.Unlock()
	out := map[streams.Name]map[string]int64{}
	for name, ws := range r.heard.m {
		out[name] = map[string]int64{}
		for w, pos := range ws {
			out[name][w] = max(0, pos-r.reg.WriterPosition(name, w))
		}
	}
	return out
}

// replicatorCollector reads the replicator's state at scrape time.
type replicatorCollector struct {
	r                                               *Replicator
	connected, reconnects, published, received, lag *prometheus.Desc
}

// RegisterMetrics registers the Redis link's and the replicator's series:
// whether Redis is connected, reconnects, commands published and received
// (by command: RDATA, POSITION, …) and the replication lag per stream and
// writer. The series names are read by `ganglion status` users' dashboards
// and the test harness: keep them.
func (r *Replicator) RegisterMetrics(reg prometheus.Registerer) {
	reg.MustRegister(&replicatorCollector{r: r,
		connected:  prometheus.NewDesc("ganglion_redis_connected", "Whether the replication link to Redis is up.", nil, nil),
		reconnects: prometheus.NewDesc("ganglion_redis_reconnects_total", "Times the Redis link was re-established.", nil, nil),
		published:  prometheus.NewDesc("ganglion_replication_published_total", "Replication commands published on Redis.", nil, nil),
		received: prometheus.NewDesc("ganglion_replication_received_total", "Replication commands received from Redis, per command.",
			[]string{"command"}, nil),
		lag: prometheus.NewDesc("ganglion_replication_lag", "How far this instance's applied position of a stream writer is "+
			"behind the highest (checked) position heard from it.", []string{"stream", "writer"}, nil),
	})
}

func (c *replicatorCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.connected
	ch <- c.reconnects
	ch <- c.published
	ch <- c.received
	ch <- c.lag
}

func (c *replicatorCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.r.bus.Status()
	up := 0.0
	if st.Connected {
		up = 1
	}
	ch <- prometheus.MustNewConstMetric(c.connected, prometheus.GaugeValue, up)
	ch <- prometheus.MustNewConstMetric(c.reconnects, prometheus.CounterValue, float64(st.Reconnects))
	ch <- prometheus.MustNewConstMetric(c.published, prometheus.CounterValue, float64(st.Published))
	for cmd, n := range st.ByCommand {
		ch <- prometheus.MustNewConstMetric(c.received, prometheus.CounterValue, float64(n), cmd)
	}
	for name, ws := range c.r.Lag() {
		for w, lag := range ws {
			ch <- prometheus.MustNewConstMetric(c.lag, prometheus.GaugeValue, float64(lag), string(name), w)
		}
	}
}

// callKey is one series of the call histogram.
type callKey struct {
	endpoint, target string
	ok               bool
}

// callMetrics times HTTP replication calls per endpoint and target
// instance. Children are cached per key: a call costs one map read.
type callMetrics struct {
	duration *prometheus.HistogramVec
	children sync.Map // callKey → prometheus.Observer
}

// RegisterMetrics registers the client's call latency histogram. Call it
// before the client is used.
func (c *Client) RegisterMetrics(reg prometheus.Registerer) {
	m := &callMetrics{duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "ganglion_replication_call_duration_seconds",
		Help: "Time an HTTP replication call took (retries and the wait for its stream positions included), " +
			"per endpoint, target instance and outcome.",
		Buckets: []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30},
	}, []string{"endpoint", "target", "outcome"})}
	reg.MustRegister(m.duration)
	c.calls = m
}

func (m *callMetrics) observe(endpoint, target string, took time.Duration, err error) {
	if m == nil {
		return
	}
	k := callKey{endpoint, canonicalInstance(target), err == nil}
	o, ok := m.children.Load(k)
	if !ok {
		outcome := "ok"
		if err != nil {
			outcome = "error"
		}
		o, _ = m.children.LoadOrStore(k, m.duration.WithLabelValues(k.endpoint, k.target, outcome))
	}
	o.(prometheus.Observer).Observe(took.Seconds())
}

// SetTracer makes the client trace its calls and propagate the trace to
// the target (W3C traceparent). Call it before the client is used.
func (c *Client) SetTracer(t *tracing.Tracer) { c.tracer = t }
