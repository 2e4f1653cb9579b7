package router_test

import (
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"ganglion/internal/router"
)

// BenchmarkRouterLatency measures the router's added latency: the same
// sticky /sync request (and an event send, a PUT with a JSON body) against
// one echo backend, directly and through the router, from 1 and from 8
// concurrent clients with keep-alive, and reports the median and p99 per
// request.
//
//	go test -run '^$' -bench RouterLatency -benchtime 20000x ./internal/router
func BenchmarkRouterLatency(b *testing.B) {
	f := newTestFleet(b, 8008)
	f.rc.Pools["sync"] = []string{"sync1"}
	f.rc.Pools["events"] = []string{"sync1"}
	f.rc.HealthCheckInterval = router.DefaultHealthInterval
	_, base := startRouter(b, f)
	targets := []struct{ name, base string }{
		{"direct", f.backends["sync1"].url()},
		{"router", base},
	}
	if nginxInstalled() {
		targets = append(targets, struct{ name, base string }{"nginx", startNginx(b, f)})
	}
	tok := token("alice")
	for _, conc := range []int{1, 8} {
		for _, target := range targets {
			benchLatency(b, fmt.Sprintf("c%d/%s", conc, target.name), target.base, tok, conc, "GET", "/_matrix/client/v3/sync?since=s1", "")
		}
	}
	body := `{"msgtype":"m.text","body":"hello from the benchmark"}`
	for _, target := range targets {
		benchLatency(b, "send/c8/"+target.name, target.base, tok, 8, "PUT", "/_matrix/client/v3/rooms/!r:test/send/m.room.message/t", body)
	}
}

func benchLatency(b *testing.B, name, base, tok string, concurrency int, method, path, body string) {
	b.Run(name, func(b *testing.B) {
		client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
		defer client.CloseIdleConnections()
		url := base + path
		lat := make([]time.Duration, b.N)
		var next atomic.Int64
		var wg sync.WaitGroup
		b.ResetTimer()
		for range concurrency {
			wg.Go(func() {
				for {
					i := next.Add(1) - 1
					if i >= int64(b.N) {
						return
					}
					var rb io.Reader
					if body != "" {
						rb = strings.NewReader(body)
					}
					req, _ := http.NewRequest(method, url, rb)
					req.Header.Set("Authorization", "Bearer "+tok)
					start := time.Now()
					resp, err := client.Do(req)
					if err != nil {
						b.Error(err)
						return
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					lat[i] = time.Since(start)
					if resp.StatusCode != http.StatusOK || resp.Header.Get("X-Backend") != "sync1" {
						b.Errorf("status %d from %q", resp.StatusCode, resp.Header.Get("X-Backend"))
						return
					}
				}
			})
		}
		wg.Wait()
		b.StopTimer()
		slices.Sort(lat)
		b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
		b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
	})
}
