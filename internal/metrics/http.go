package metrics

import (
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"ganglion/internal/routes"
)

// Classes of requests outside the routing table (which covers only the
// client, federation, key and media APIs).
const (
	ClassReplication = "replication"
	ClassMetrics     = "metrics"
	ClassHealth      = "health"
	ClassPprof       = "pprof"
	// ClassUnknown is a path nothing serves.
	ClassUnknown = "unknown"
)

// methods are the label values of the method label; anything else is
// "other", so a client inventing methods cannot grow the label set.
var methods = [...]string{"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "other"}

func methodIndex(m string) int {
	switch m {
	case "GET":
		return 0
	case "HEAD":
		return 1
	case "POST":
		return 2
	case "PUT":
		return 3
	case "DELETE":
		return 4
	case "OPTIONS":
		return 5
	case "PATCH":
		return 6
	}
	return 7
}

// commonCodes get a pre-resolved slot per class and method; other codes
// take the (rarer) label lookup.
var commonCodes = [...]int{200, 201, 204, 301, 302, 304, 400, 401, 403, 404, 405, 408, 409, 413, 429, 500, 502, 503, 504}

func codeIndex(code int) int {
	for i, c := range commonCodes {
		if c == code {
			return i
		}
	}
	return -1
}

// observers are the series of one class, method and status code.
type observers struct {
	requests prometheus.Counter
	duration prometheus.Observer
}

// cell holds one class and method's series, resolved on first use so the
// exposition lists only what happened.
type cell struct {
	codes [len(commonCodes)]atomic.Pointer[observers]
}

// HTTP counts and times the requests a listener answers, by endpoint class
// (the routing table's names, never raw paths), method and status code.
type HTTP struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	size     *prometheus.HistogramVec
	inFlight prometheus.Gauge

	names   []string              // class index → name
	index   map[*routes.Class]int // table class → index
	extra   map[string]int        // non-table class → index
	cells   [][len(methods)]cell  // by class index
	sizes   []prometheus.Observer // by class index
	unknown int
}

// NewHTTP registers the HTTP series on r.
func NewHTTP(r prometheus.Registerer) *HTTP {
	m := &HTTP{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Subsystem: "http", Name: "requests_total",
			Help: "Requests answered, per endpoint class, method and status code."}, []string{"class", "method", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: Namespace, Subsystem: "http", Name: "request_duration_seconds",
			Help:    "Time from the request to the end of its response, per endpoint class, method and status code.",
			Buckets: LatencyBuckets()}, []string{"class", "method", "code"}),
		size: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: Namespace, Subsystem: "http", Name: "response_size_bytes",
			Help:    "Size of response bodies, per endpoint class (/sync's is the class sync).",
			Buckets: prometheus.ExponentialBuckets(256, 4, 9)}, []string{"class"}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: Namespace, Subsystem: "http", Name: "requests_in_flight",
			Help: "Requests being answered now (long-polls included)."}),
		index: map[*routes.Class]int{},
		extra: map[string]int{},
	}
	r.MustRegister(m.requests, m.duration, m.size, m.inFlight)
	for _, c := range routes.Classes() {
		m.index[c] = len(m.names)
		m.names = append(m.names, c.Name)
	}
	for _, n := range []string{ClassReplication, ClassMetrics, ClassHealth, ClassPprof, ClassUnknown} {
		m.extra[n] = len(m.names)
		m.names = append(m.names, n)
	}
	m.unknown = m.extra[ClassUnknown]
	m.cells = make([][len(methods)]cell, len(m.names))
	m.sizes = make([]prometheus.Observer, len(m.names))
	for i, n := range m.names {
		m.sizes[i] = m.size.WithLabelValues(n)
	}
	return m
}

// ClassNames lists every value of the class label, table classes first.
func (m *HTTP) ClassNames() []string { return append([]string(nil), m.names...) }

// Classify names the class of a request: its routing-table class (also when
// the class does not take the method), or one of the Class* constants.
func Classify(method, path string) (*routes.Class, string) {
	if c, _ := routes.Classify(method, path); c != nil {
		return c, c.Name
	}
	switch {
	case strings.HasPrefix(path, "/_synapse/replication/"):
		return nil, ClassReplication
	case path == "/metrics" || strings.HasPrefix(path, "/_synapse/metrics"):
		return nil, ClassMetrics
	case path == "/health":
		return nil, ClassHealth
	case strings.HasPrefix(path, "/debug/pprof/"):
		return nil, ClassPprof
	}
	return nil, ClassUnknown
}

// classIndex is the index of a Classify result.
func (m *HTTP) classIndex(c *routes.Class, name string) int {
	if c != nil {
		if i, ok := m.index[c]; ok {
			return i
		}
	}
	if i, ok := m.extra[name]; ok {
		return i
	}
	return m.unknown
}

// Request is one request being measured; End records it.
type Request struct {
	m     *HTTP
	class int
	meth  int
	start time.Time
}

// Begin starts measuring a request of the class Classify returned. On a
// nil HTTP (enable_metrics: false) it measures nothing.
func (m *HTTP) Begin(c *routes.Class, name, method string) Request {
	if m == nil {
		return Request{}
	}
	m.inFlight.Inc()
	return Request{m: m, class: m.classIndex(c, name), meth: methodIndex(method), start: time.Now()}
}

// End records the request's status code and response size.
func (q Request) End(code int, size int64) {
	m := q.m
	if m == nil {
		return
	}
	m.inFlight.Dec()
	took := time.Since(q.start).Seconds()
	m.sizes[q.class].Observe(float64(size))
	ci := codeIndex(code)
	if ci < 0 {
		m.requests.WithLabelValues(m.names[q.class], methods[q.meth], codeLabel(code)).Inc()
		m.duration.WithLabelValues(m.names[q.class], methods[q.meth], codeLabel(code)).Observe(took)
		return
	}
	slot := &m.cells[q.class][q.meth].codes[ci]
	o := slot.Load()
	if o == nil {
		labels := []string{m.names[q.class], methods[q.meth], strconv.Itoa(code)}
		o = &observers{requests: m.requests.WithLabelValues(labels...), duration: m.duration.WithLabelValues(labels...)}
		slot.Store(o) // a racing store holds the same children
	}
	o.requests.Inc()
	o.duration.Observe(took)
}

// codeLabel bounds the code label to real status codes.
func codeLabel(code int) string {
	if code < 100 || code > 599 {
		return "other"
	}
	return strconv.Itoa(code)
}

// Wrap measures every request next answers, classifying its path once.
func (m *HTTP) Wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, name := Classify(r.Method, r.URL.Path)
		q := m.Begin(c, name, r.Method)
		rec := &Recorder{ResponseWriter: w}
		defer func() { q.End(rec.Code(), rec.Size) }()
		next.ServeHTTP(rec, r)
	})
}

// Recorder keeps the status code and body size of a response. Unwrap lets
// http.ResponseController reach the connection (flushes, deadlines).
type Recorder struct {
	http.ResponseWriter
	status int
	Size   int64
}

func (r *Recorder) WriteHeader(code int) {
	if r.status == 0 && code >= 200 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *Recorder) Write(p []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	n, err := r.ResponseWriter.Write(p)
	r.Size += int64(n)
	return n, err
}

// Flush is for handlers that test for http.Flusher.
func (r *Recorder) Flush() { _ = http.NewResponseController(r.ResponseWriter).Flush() }

func (r *Recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// Code is the status sent; 200 when the handler wrote nothing (net/http
// sends 200 then).
func (r *Recorder) Code() int {
	if r.status == 0 {
		return http.StatusOK
	}
	return r.status
}
