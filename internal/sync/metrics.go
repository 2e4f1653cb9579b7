package sync

import "github.com/prometheus/client_golang/prometheus"

// syncMetrics are the long-poll's series (response sizes are the HTTP
// middleware's, class sync).
type syncMetrics struct {
	waiting  prometheus.Gauge
	wakeups  prometheus.Counter
	timeouts prometheus.Counter
}

// RegisterMetrics registers the long-poll series. Call it before serving.
func (s *Service) RegisterMetrics(r prometheus.Registerer) {
	m := &syncMetrics{
		waiting: prometheus.NewGauge(prometheus.GaugeOpts{Name: "ganglion_sync_long_polls_waiting",
			Help: "/sync requests waiting for something to happen."}),
		wakeups: prometheus.NewCounter(prometheus.CounterOpts{Name: "ganglion_sync_wakeups_total",
			Help: "Times a waiting /sync was woken by a stream advancing for its user or rooms."}),
		timeouts: prometheus.NewCounter(prometheus.CounterOpts{Name: "ganglion_sync_timeouts_total",
			Help: "Long-polls that ended with their timeout and nothing new."}),
	}
	r.MustRegister(m.waiting, m.wakeups, m.timeouts)
	s.metrics = m
}

// wait brackets a long-poll's wait (nil-safe, for a service without
// metrics).
func (m *syncMetrics) wait() {
	if m != nil {
		m.waiting.Inc()
	}
}

// woke ends a wait; timedOut says it ended by its deadline.
func (m *syncMetrics) woke(byNotifier, timedOut bool) {
	if m == nil {
		return
	}
	m.waiting.Dec()
	switch {
	case byNotifier:
		m.wakeups.Inc()
	case timedOut:
		m.timeouts.Inc()
	}
}
