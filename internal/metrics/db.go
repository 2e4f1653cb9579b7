package metrics

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"ganglion/internal/storage"
)

// txSeries are one named transaction's series.
type txSeries struct {
	duration prometheus.Observer
	errors   prometheus.Counter
}

// InstrumentDB registers the database's series on r: the connection pools
// (database/sql's DBStats: open, in use, idle, waits, as go_sql_* series
// labelled db_name) and a duration histogram and error count per named
// transaction (see storage.WithTxName), measured only when timeTransactions.
func InstrumentDB(r prometheus.Registerer, db *storage.DB, timeTransactions bool) {
	for name, pool := range db.Pools() {
		r.MustRegister(collectors.NewDBStatsCollector(pool, name))
	}
	duration := prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: Namespace, Subsystem: "db", Name: "transaction_duration_seconds",
		Help:    "Time a database transaction took, retries included, per transaction name.",
		Buckets: []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}}, []string{"name"})
	failed := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Subsystem: "db", Name: "transaction_errors_total",
		Help: "Transactions that did not commit, per transaction name (including callers' own errors that roll back)."}, []string{"name"})
	r.MustRegister(duration, failed)
	if !timeTransactions {
		return
	}
	var byName sync.Map // name → *txSeries
	db.SetTxObserver(func(name string, took time.Duration, err error) {
		s, ok := byName.Load(name)
		if !ok {
			s, _ = byName.LoadOrStore(name, &txSeries{duration: duration.WithLabelValues(name), errors: failed.WithLabelValues(name)})
		}
		ts := s.(*txSeries)
		ts.duration.Observe(took.Seconds())
		if err != nil {
			ts.errors.Inc()
		}
	})
}
