package client

import (
	"context"
	"log/slog"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"ganglion/internal/testutil"
)

func TestCachePeriod(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		headers []string
		want    time.Duration
	}{
		{nil, 24 * time.Hour},
		{[]string{"Cache-Control", "max-age=7200"}, 2 * time.Hour},
		{[]string{"Cache-Control", "public, max-age=\"10800\""}, 3 * time.Hour},
		{[]string{"Cache-Control", "max-age=60"}, time.Hour},
		{[]string{"Cache-Control", "max-age=999999999999"}, 48 * time.Hour},
		{[]string{"Cache-Control", "no-store"}, time.Hour},
		{[]string{"Cache-Control", "max-age=7200, no-cache"}, time.Hour},
		{[]string{"Cache-Control", "max-age=bogus"}, 24 * time.Hour},
		{[]string{"Expires", now.Add(5 * time.Hour).Format(http.TimeFormat)}, 5 * time.Hour},
		{[]string{"Expires", "0"}, time.Hour},
		{[]string{"Expires", now.Add(90 * time.Hour).Format(http.TimeFormat)}, 48 * time.Hour},
		// max-age wins over Expires (RFC 9111).
		{[]string{"Cache-Control", "max-age=7200", "Expires", now.Add(5 * time.Hour).Format(http.TimeFormat)}, 2 * time.Hour},
	} {
		h := http.Header{}
		for i := 0; i+1 < len(tc.headers); i += 2 {
			h.Set(tc.headers[i], tc.headers[i+1])
		}
		if got := cachePeriod(h, now); got != tc.want {
			t.Errorf("%v: %v, want %v", tc.headers, got, tc.want)
		}
	}
}

func TestServerNameOfRoundTrip(t *testing.T) {
	for _, n := range []string{"a.example", "a.example:443", "1.2.3.4", "1.2.3.4:8448", "[::1]", "[::1]:8448"} {
		got, err := serverNameOf(urlHost(n))
		if err != nil || got != n {
			t.Errorf("%s: urlHost %s, back %q %v", n, urlHost(n), got, err)
		}
	}
	if urlHost("a.example") == urlHost("a.example:443") {
		t.Error("a.example and a.example:443 share a connection pool key")
	}
}

// Concurrent lookups of one host share one fetch, and a caller that gives
// up does not cancel it for the others.
func TestWellKnownLookupsShareOneFetch(t *testing.T) {
	entered, release := make(chan struct{}, 4), make(chan struct{})
	var fetches atomic.Int64
	c := &wellKnownCache{now: time.Now, log: slog.New(slog.DiscardHandler)}
	c.fetch = func(ctx context.Context, host string) (string, fetchStatus, time.Duration) {
		fetches.Add(1)
		entered <- struct{}{}
		<-release
		return "d.example:1", fetchValid, time.Hour
	}
	waiters := func() int {
		c.mu.Lock()
		defer c.mu.Unlock()
		if call := c.inflight["h.example"]; call != nil {
			return call.waiters
		}
		return 0
	}
	impatient, giveUp := context.WithCancel(context.Background())
	results := make(chan string, 3)
	go func() { d, _ := c.lookup(impatient, "h.example"); results <- "impatient:" + d }()
	<-entered
	for range 2 {
		go func() { d, _ := c.lookup(context.Background(), "h.example"); results <- d }()
	}
	testutil.Eventually(t, 5*time.Second, "three lookups waiting on one fetch", func() bool { return waiters() == 3 })
	giveUp()
	if got := <-results; got != "impatient:" {
		t.Fatalf("cancelled lookup got %q", got)
	}
	close(release)
	for range 2 {
		if got := <-results; got != "d.example:1" {
			t.Fatalf("waiting lookup got %q", got)
		}
	}
	if d, ok := c.lookup(context.Background(), "h.example"); !ok || d != "d.example:1" {
		t.Fatalf("cached answer %q %v", d, ok)
	}
	if n := fetches.Load(); n != 1 {
		t.Fatalf("%d fetches, want 1", n)
	}
}
