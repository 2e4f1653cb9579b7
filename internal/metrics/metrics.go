// Package metrics holds what every Ganglion process shares for Prometheus:
// the per-process registry, the HTTP middleware that labels requests by the
// routing table's endpoint classes, and the database instrumentation. Each
// domain registers its own series on the Registerer the process hands it;
// nothing here is global, so tests can build many processes in one binary.
package metrics

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Namespace prefixes every series Ganglion defines itself.
const Namespace = "ganglion"

// LatencyBuckets are the request histograms' upper bounds in seconds: fine
// at the low end for ordinary requests, up to a minute for long-polls. A
// fresh slice each call: nothing shared can be changed.
func LatencyBuckets() []float64 {
	return []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}
}

// Registry is one process's metrics: the registry that is scraped and the
// registerer modules add their series to, which labels every series with
// the instance name (so the fleet's series can be told apart when several
// processes are scraped through one target, and `ganglion status` and the
// test harness can read them without knowing the scrape config).
type Registry struct {
	reg *prometheus.Registry
	r   prometheus.Registerer
}

// New builds the registry of the process called instance, with the Go
// runtime and process collectors.
func New(instance string) *Registry {
	reg := prometheus.NewRegistry()
	r := prometheus.WrapRegistererWith(prometheus.Labels{"instance": instance}, reg)
	r.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return &Registry{reg: reg, r: r}
}

// Registerer is what modules register their series on.
func (m *Registry) Registerer() prometheus.Registerer { return m.r }

// Gatherer reads the registered series (status reports, tests).
func (m *Registry) Gatherer() prometheus.Gatherer { return m.reg }

// Describe lists the descriptors of every registered series, including
// vectors that have no child yet (which Gather leaves out).
func (m *Registry) Describe(ch chan<- *prometheus.Desc) { m.reg.Describe(ch) }

// Handler serves the exposition. A collector that fails leaves its series
// out rather than failing the scrape. Responses are not compressed: the
// listener is private and scrapes are frequent (the test harness polls
// every process while it waits for replication to settle), so CPU matters
// more than bytes.
func (m *Registry) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError, DisableCompression: true})
}
