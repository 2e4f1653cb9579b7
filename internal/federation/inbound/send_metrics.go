package inbound

import "github.com/prometheus/client_golang/prometheus"

// sendMetrics count what inbound transactions carried, by outcome.
type sendMetrics struct {
	pdus *prometheus.CounterVec // outcome: accepted, error, dropped
	edus *prometheus.CounterVec // outcome: handled, failed, ignored, malformed
}

// RegisterMetrics registers the series of PUT /send on r; call before
// Routes. Without it nothing is counted.
func (s *Server) RegisterMetrics(r prometheus.Registerer) *Server {
	m := &sendMetrics{
		pdus: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ganglion_federation_inbound_pdus_total",
			Help: "PDUs received in federation transactions, by outcome (accepted, error, dropped: no id to answer with)."},
			[]string{"outcome"}),
		edus: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ganglion_federation_inbound_edus_total",
			Help: "EDUs received in federation transactions, by outcome (handled, failed, ignored: no handler, malformed)."},
			[]string{"outcome"}),
	}
	r.MustRegister(m.pdus, m.edus)
	s.metrics = m
	return s
}

func (m *sendMetrics) pdu(outcome string) {
	if m != nil {
		m.pdus.WithLabelValues(outcome).Inc()
	}
}

func (m *sendMetrics) edu(outcome string) {
	if m != nil {
		m.edus.WithLabelValues(outcome).Inc()
	}
}
