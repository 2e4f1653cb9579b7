package rooms

import "github.com/prometheus/client_golang/prometheus"

// RegisterMetrics registers the persister's series: how many send requests
// each batch (one transaction) carried, the main lever for throughput. Call
// it before the persister is used.
func (p *Persister) RegisterMetrics(r prometheus.Registerer) {
	h := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "ganglion_persister_batch_size",
		Help:    "Send requests persisted together in one transaction.",
		Buckets: []float64{1, 2, 4, 8, 16, 32, 64, 128}})
	r.MustRegister(h)
	p.batchSizes = h
}
