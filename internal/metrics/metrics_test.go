package metrics_test

import (
	"context"
	"database/sql"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"ganglion/internal/metrics"
	"ganglion/internal/routes"
	"ganglion/internal/storage"
)

func TestClassify(t *testing.T) {
	for _, c := range []struct{ method, path, want string }{
		{"PUT", "/_matrix/client/v3/rooms/!r:x/send/m.room.message/txn1", "event_send"},
		{"GET", "/_matrix/client/v3/sync", "sync"},
		{"GET", "/_matrix/client/versions", "versions"},
		// A class that does not take the method is still that class.
		{"POST", "/_matrix/client/versions", "versions"},
		{"POST", "/_synapse/replication/send_events/abc", metrics.ClassReplication},
		{"GET", "/metrics", metrics.ClassMetrics},
		{"GET", "/_synapse/metrics", metrics.ClassMetrics},
		{"GET", "/health", metrics.ClassHealth},
		{"GET", "/debug/pprof/heap", metrics.ClassPprof},
		{"GET", "/index.php", metrics.ClassUnknown},
		{"GET", "/", metrics.ClassUnknown},
	} {
		cls, name := metrics.Classify(c.method, c.path)
		if name != c.want {
			t.Errorf("Classify(%s %s) = %q, want %q", c.method, c.path, name, c.want)
		}
		if tc, _ := routes.Classify(c.method, c.path); tc != cls {
			t.Errorf("Classify(%s %s) returned class %v, the table says %v", c.method, c.path, cls, tc)
		}
	}
}

// scrape serves the registry's exposition and parses it back.
func scrape(t *testing.T, reg *metrics.Registry) map[string]*dto.MetricFamily {
	t.Helper()
	rec := httptest.NewRecorder()
	reg.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != 200 {
		t.Fatalf("metrics: %d %s", rec.Code, rec.Body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(rec.Body.String()))
	if err != nil {
		t.Fatalf("parse exposition: %v\n%s", err, rec.Body)
	}
	return fams
}

// sample finds the series of fam whose labels include want.
func sample(fams map[string]*dto.MetricFamily, fam string, want map[string]string) *dto.Metric {
	f := fams[fam]
	if f == nil {
		return nil
	}
next:
	for _, m := range f.Metric {
		have := map[string]string{}
		for _, l := range m.Label {
			have[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if have[k] != v {
				continue next
			}
		}
		return m
	}
	return nil
}

func TestHTTPMiddleware(t *testing.T) {
	reg := metrics.New("worker1")
	m := metrics.NewHTTP(reg.Registerer())
	inside := make(chan struct{})
	release := make(chan struct{})
	h := m.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/_matrix/client/v3/sync":
			inside <- struct{}{}
			<-release
			_, _ = io.WriteString(w, `{"next_batch":"s1"}`)
		case "/_matrix/client/versions":
			w.WriteHeader(http.StatusTeapot) // not a pre-resolved code
		default:
			http.NotFound(w, r)
		}
	}))
	srv := httptest.NewServer(h)
	defer srv.Close()
	get := func(path string) {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Error(err)
			return
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}

	done := make(chan struct{})
	go func() { get("/_matrix/client/v3/sync"); close(done) }()
	<-inside
	fams := scrape(t, reg)
	if s := sample(fams, "ganglion_http_requests_in_flight", map[string]string{"instance": "worker1"}); s == nil || s.GetGauge().GetValue() != 1 {
		t.Fatalf("in flight during a request: %v", s)
	}
	close(release)
	<-done
	for range 3 {
		get("/_matrix/client/versions")
	}
	get("/nothing/here")

	fams = scrape(t, reg)
	for _, c := range []struct {
		labels map[string]string
		want   float64
	}{
		{map[string]string{"class": "sync", "method": "GET", "code": "200", "instance": "worker1"}, 1},
		{map[string]string{"class": "versions", "method": "GET", "code": "418"}, 3},
		{map[string]string{"class": "unknown", "method": "GET", "code": "404"}, 1},
	} {
		s := sample(fams, "ganglion_http_requests_total", c.labels)
		if s == nil || s.GetCounter().GetValue() != c.want {
			t.Errorf("requests %v = %v, want %v", c.labels, s, c.want)
		}
		h := sample(fams, "ganglion_http_request_duration_seconds", c.labels)
		if h == nil || float64(h.GetHistogram().GetSampleCount()) != c.want {
			t.Errorf("duration %v = %v, want %v observations", c.labels, h, c.want)
		}
	}
	if s := sample(fams, "ganglion_http_requests_in_flight", nil); s.GetGauge().GetValue() != 0 {
		t.Errorf("in flight after the requests: %v", s.GetGauge().GetValue())
	}
	if s := sample(fams, "ganglion_http_response_size_bytes", map[string]string{"class": "sync"}); s == nil ||
		s.GetHistogram().GetSampleSum() != float64(len(`{"next_batch":"s1"}`)) {
		t.Errorf("sync response size: %v", s)
	}
	// The status summary leaves the long-poll out: 3 versions + 1 unknown.
	if sum := m.Summary(); sum.Requests != 4 || len(sum.Buckets) != len(metrics.LatencyBuckets()) ||
		sum.Buckets[len(sum.Buckets)-1].Count != 4 || !slices.Contains(sum.Excluded, "sync") {
		t.Errorf("summary: %+v", sum)
	}
	// Raw paths never become labels.
	for _, m := range fams["ganglion_http_requests_total"].Metric {
		for _, l := range m.Label {
			if strings.Contains(l.GetValue(), "/") {
				t.Errorf("a label holds a path: %v", m)
			}
		}
	}
}

func TestRegistryHasRuntimeCollectors(t *testing.T) {
	fams := scrape(t, metrics.New("main"))
	for _, n := range []string{"go_goroutines", "go_memstats_alloc_bytes", "process_cpu_seconds_total"} {
		if sample(fams, n, map[string]string{"instance": "main"}) == nil {
			t.Errorf("no %s{instance=\"main\"}", n)
		}
	}
}

func TestInstrumentDB(t *testing.T) {
	ctx := context.Background()
	db, err := storage.Open(ctx, storage.Options{Engine: storage.SQLite, DSN: filepath.Join(t.TempDir(), "db.sqlite")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	reg := metrics.New("main")
	metrics.InstrumentDB(reg.Registerer(), db, true)
	ok := func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS t (x INTEGER)`)
		return err
	}
	if err := db.Tx(storage.WithTxName(ctx, "create_t"), ok); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	for range 2 {
		if err := db.Tx(ctx, func(*sql.Tx) error { return boom }); !errors.Is(err, boom) {
			t.Fatalf("Tx = %v", err)
		}
	}
	fams := scrape(t, reg)
	if s := sample(fams, "ganglion_db_transaction_duration_seconds", map[string]string{"name": "create_t"}); s == nil ||
		s.GetHistogram().GetSampleCount() != 1 {
		t.Errorf("create_t: %v", s)
	}
	// Unnamed transactions are named after the function calling Tx.
	caller := "metrics_test.TestInstrumentDB"
	if s := sample(fams, "ganglion_db_transaction_duration_seconds", map[string]string{"name": caller}); s == nil ||
		s.GetHistogram().GetSampleCount() != 2 {
		t.Errorf("%s: %v (have %v)", caller, s, fams["ganglion_db_transaction_duration_seconds"])
	}
	if s := sample(fams, "ganglion_db_transaction_errors_total", map[string]string{"name": caller}); s == nil ||
		s.GetCounter().GetValue() != 2 {
		t.Errorf("errors of %s: %v", caller, s)
	}
	if s := sample(fams, "ganglion_db_transaction_errors_total", map[string]string{"name": "create_t"}); s.GetCounter().GetValue() != 0 {
		t.Errorf("a committed transaction counted as an error: %v", s)
	}
	for _, pool := range []string{"writer", "reader"} {
		if s := sample(fams, "go_sql_max_open_connections", map[string]string{"db_name": pool}); s == nil {
			t.Errorf("no pool stats for %s", pool)
		}
	}
	if sample(fams, "go_sql_wait_count_total", nil) == nil {
		t.Error("no pool wait count")
	}
}

// Hot path: a request costs no label lookup (nor its allocations) once its
// class, method and code were seen.
func TestHTTPObserveDoesNotAllocate(t *testing.T) {
	m := metrics.NewHTTP(prometheus.NewRegistry())
	c, name := metrics.Classify("GET", "/_matrix/client/v3/sync")
	m.Begin(c, name, "GET").End(200, 10)
	if n := testing.AllocsPerRun(100, func() { m.Begin(c, name, "GET").End(200, 10) }); n != 0 {
		t.Errorf("%v allocations per request", n)
	}
}
