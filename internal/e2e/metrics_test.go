package e2e_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"maunium.net/go/mautrix"

	"ganglion/internal/testutil"
)

// scrapeFamilies reads one process's exposition.
func scrapeFamilies(ctx context.Context, f *fleet, url string) (map[string]*dto.MetricFamily, error) {
	body, err := f.get(ctx, url)
	if err != nil {
		return nil, err
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", url, err)
	}
	return fams, nil
}

// sumSeries adds up the values (counters, gauges, histogram counts) of the
// series of fam whose labels include want.
func sumSeries(fams map[string]*dto.MetricFamily, fam string, want map[string]string) (float64, bool) {
	f := fams[fam]
	if f == nil {
		return 0, false
	}
	total, found := 0.0, false
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
		found = true
		switch {
		case m.Counter != nil:
			total += m.Counter.GetValue()
		case m.Gauge != nil:
			total += m.Gauge.GetValue()
		case m.Histogram != nil:
			total += float64(m.Histogram.GetSampleCount())
		case m.Untyped != nil:
			total += m.Untyped.GetValue()
		}
	}
	return total, found
}

// TestMetricsAcrossTheFleet scrapes every process of a fleet behind the
// router after a short load: every process exports the runtime, HTTP,
// database and replication series; the request counters of the send class
// equal the sends made, on the router and summed over the workers; a
// long-poll shows as waiting and its wake-up is counted; and once the fleet
// settles, no process lags behind any writer.
func TestMetricsAcrossTheFleet(t *testing.T) {
	srv := startServer(t, engineFleetRouter)
	f := srv.fleet
	ctx := testContext(t)
	alice := srv.register(t, ctx, "metrics-alice")
	bob := srv.register(t, ctx, "metrics-bob")
	roomID := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if _, err := bob.JoinRoom(ctx, roomID.String(), nil); err != nil {
		t.Fatalf("join: %v", err)
	}
	sync0, err := bob.SyncRequest(ctx, 0, "", "", false, "")
	if err != nil {
		t.Fatalf("initial sync: %v", err)
	}

	scrapeAll := func() map[string]map[string]*dto.MetricFamily {
		out := map[string]map[string]*dto.MetricFamily{}
		for _, p := range f.procs {
			fams, err := scrapeFamilies(ctx, f, fmt.Sprintf("http://127.0.0.1:%d/metrics", p.replPort))
			if err != nil {
				t.Fatalf("metrics of %s: %v", p.name, err)
			}
			out[p.name] = fams
		}
		return out
	}
	total := func(all map[string]map[string]*dto.MetricFamily, fam string, want map[string]string) float64 {
		n := 0.0
		for _, fams := range all {
			v, _ := sumSeries(fams, fam, want)
			n += v
		}
		return n
	}
	before := scrapeAll()
	routerURL := f.front.url + "/_ganglion/router/metrics"
	routerBefore, err := scrapeFamilies(ctx, f, routerURL)
	if err != nil {
		t.Fatalf("router metrics: %v", err)
	}

	// A long-poll waits on some worker until the first send wakes it.
	type result struct {
		resp *mautrix.RespSync
		err  error
	}
	polled := make(chan result, 1)
	go func() {
		r, err := bob.SyncRequest(ctx, 30000, sync0.NextBatch, "", false, "")
		polled <- result{r, err}
	}()
	testutil.Eventually(t, 20*time.Second, "the long-poll shows as waiting", func() bool {
		return total(scrapeAll(), "ganglion_sync_long_polls_waiting", nil) >= 1
	})

	const sends = 7
	for i := range sends {
		send(t, ctx, alice, roomID, fmt.Sprintf("measured %d", i), fmt.Sprintf("metrics-txn-%d", i))
	}
	select {
	case r := <-polled:
		if r.err != nil {
			t.Fatalf("long-poll: %v", r.err)
		}
	case <-ctx.Done():
		t.Fatal("the long-poll did not return")
	}

	after := scrapeAll()
	sendLabels := map[string]string{"class": "event_send", "method": "PUT"}
	if got := total(after, "ganglion_http_requests_total", sendLabels) - total(before, "ganglion_http_requests_total", sendLabels); got != sends {
		t.Errorf("workers counted %v event_send PUTs, want %d", got, sends)
	}
	if got := total(after, "ganglion_http_request_duration_seconds", sendLabels) - total(before, "ganglion_http_request_duration_seconds", sendLabels); got != sends {
		t.Errorf("workers timed %v event_send PUTs, want %d", got, sends)
	}
	router, err := scrapeFamilies(ctx, f, routerURL)
	if err != nil {
		t.Fatalf("router metrics: %v", err)
	}
	routerSends := map[string]string{"class": "event_send", "code": "200"}
	was, _ := sumSeries(routerBefore, "ganglion_router_requests_total", routerSends)
	if got, _ := sumSeries(router, "ganglion_router_requests_total", routerSends); got-was != sends {
		t.Errorf("the router counted %v event sends, want %d", got-was, sends)
	}
	for _, fam := range []string{"go_goroutines", "process_cpu_seconds_total", "ganglion_router_request_duration_seconds",
		"ganglion_router_backend_up", "ganglion_router_requests_in_flight"} {
		if _, ok := sumSeries(router, fam, map[string]string{"instance": "router"}); !ok {
			t.Errorf("the router exports no %s", fam)
		}
	}
	if n := total(after, "ganglion_sync_wakeups_total", nil) - total(before, "ganglion_sync_wakeups_total", nil); n < 1 {
		t.Errorf("sync wake-ups moved by %v, want at least 1", n)
	}
	if n := total(after, "ganglion_persister_batch_size", nil) - total(before, "ganglion_persister_batch_size", nil); n < 1 {
		t.Errorf("persister batches moved by %v", n)
	}
	if n := total(after, "ganglion_replication_call_duration_seconds", map[string]string{"endpoint": "send_events", "outcome": "ok"}) -
		total(before, "ganglion_replication_call_duration_seconds", map[string]string{"endpoint": "send_events", "outcome": "ok"}); n < 1 {
		t.Errorf("send_events replication calls moved by %v", n)
	}

	for _, p := range f.procs {
		fams := after[p.name]
		self := map[string]string{"instance": p.name}
		for _, fam := range []string{"go_goroutines", "process_resident_memory_bytes", "ganglion_http_requests_total",
			"ganglion_http_requests_in_flight", "ganglion_db_transaction_duration_seconds", "go_sql_in_use_connections",
			"go_sql_wait_count_total", "ganglion_stream_position", "ganglion_uptime_seconds"} {
			if _, ok := sumSeries(fams, fam, self); !ok {
				t.Errorf("%s exports no %s", p.name, fam)
			}
		}
		if v, _ := sumSeries(fams, "ganglion_redis_connected", self); v != 1 {
			t.Errorf("%s: ganglion_redis_connected = %v", p.name, v)
		}
		if v, _ := sumSeries(fams, "ganglion_replication_received_total", map[string]string{"command": "POSITION"}); v < 1 {
			t.Errorf("%s received no POSITION", p.name)
		}
	}
	if n := total(after, "ganglion_replication_received_total", map[string]string{"command": "RDATA"}); n < 1 {
		t.Error("no process counted an RDATA")
	}

	// Lag returns to 0 everywhere once the fleet has settled.
	testutil.Eventually(t, 20*time.Second, "replication lag back to 0 on every process", func() bool {
		if !f.settled(ctx) {
			return false
		}
		all := scrapeAll()
		for _, fams := range all {
			fam := fams["ganglion_replication_lag"]
			if fam == nil {
				continue
			}
			for _, m := range fam.Metric {
				if m.GetGauge().GetValue() != 0 {
					return false
				}
			}
		}
		return total(all, "ganglion_replication_lag", nil) == 0
	})
}
