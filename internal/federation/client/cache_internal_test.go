package client

import (
	"net/http"
	"testing"
	"time"
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
