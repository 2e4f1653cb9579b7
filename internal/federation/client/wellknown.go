package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"ganglion/internal/federation/servername"
)

const (
	// wellKnownMaxBody bounds the .well-known body (Synapse's limit).
	wellKnownMaxBody = 50 << 10
	// wellKnownMaxRedirects bounds the redirects followed; the spec asks
	// only that loops be avoided.
	wellKnownMaxRedirects = 10
	wellKnownTimeout      = 10 * time.Second
)

var errRedirect = errors.New("well-known redirect refused")

func newWellKnownHTTP(t http.RoundTripper) *http.Client {
	return &http.Client{
		Transport: t,
		Timeout:   wellKnownTimeout,
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) >= wellKnownMaxRedirects {
				return fmt.Errorf("%w: more than %d redirects", errRedirect, wellKnownMaxRedirects)
			}
			if req.URL.Scheme != "https" {
				// Delegation fetched over plain HTTP could be forged.
				return fmt.Errorf("%w: to %s", errRedirect, req.URL.Scheme)
			}
			for _, v := range via {
				if v.URL.String() == req.URL.String() {
					return fmt.Errorf("%w: loop at %s", errRedirect, req.URL)
				}
			}
			return nil
		},
	}
}

// fetchWellKnown GETs https://host/.well-known/matrix/server and returns
// m.server with how long to cache it.
func (c *Client) fetchWellKnown(ctx context.Context, host string) (string, fetchStatus, time.Duration) {
	authority := host
	if c.httpsPort != 443 {
		authority = host + ":" + strconv.Itoa(c.httpsPort)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+authority+"/.well-known/matrix/server", nil)
	if err != nil {
		return "", fetchInvalid, 0
	}
	req.Header.Set("User-Agent", c.userAgent)
	resp, err := c.wellKnownHTTP.Do(req)
	if err != nil {
		if errors.Is(err, errRedirect) {
			c.log.Info("well-known lookup: bad redirects", "host", host, "err", err)
			return "", fetchInvalid, 0
		}
		c.log.Info("well-known lookup failed", "host", host, "err", err)
		return "", fetchFailed, 0
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fetchInvalid, 0
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, wellKnownMaxBody+1))
	if err != nil {
		return "", fetchFailed, 0
	}
	if len(body) > wellKnownMaxBody {
		c.log.Info("well-known lookup: response too large", "host", host)
		return "", fetchInvalid, 0
	}
	var doc map[string]any
	if err := json.Unmarshal(body, &doc); err != nil {
		return "", fetchInvalid, 0
	}
	delegated, _ := doc["m.server"].(string)
	if _, err := servername.Parse(delegated); err != nil {
		c.log.Info("well-known lookup: invalid m.server", "host", host, "err", err)
		return "", fetchInvalid, 0
	}
	return delegated, fetchValid, cachePeriod(resp.Header, c.now())
}

// cachePeriod reads Cache-Control and Expires, bounded to
// [wellKnownMinCache, wellKnownMaxCache]; without either, the default.
func cachePeriod(h http.Header, now time.Time) time.Duration {
	period, ok := headerCachePeriod(h, now)
	if !ok {
		return wellKnownDefaultCache
	}
	return min(max(period, wellKnownMinCache), wellKnownMaxCache)
}

func headerCachePeriod(h http.Header, now time.Time) (time.Duration, bool) {
	for _, v := range h.Values("Cache-Control") {
		for _, d := range strings.Split(v, ",") {
			d = strings.ToLower(strings.TrimSpace(d))
			if d == "no-store" || d == "no-cache" {
				return 0, true
			}
		}
	}
	for _, v := range h.Values("Cache-Control") {
		for _, d := range strings.Split(v, ",") {
			name, val, found := strings.Cut(strings.TrimSpace(d), "=")
			if found && strings.EqualFold(name, "max-age") {
				if n, err := strconv.ParseInt(strings.Trim(val, `"`), 10, 64); err == nil && n >= 0 {
					return time.Duration(min(n, int64(wellKnownMaxCache/time.Second))) * time.Second, true
				}
			}
		}
	}
	if v := h.Get("Expires"); v != "" {
		t, err := http.ParseTime(v)
		if err != nil {
			// RFC 9111: an invalid date means already expired.
			return 0, true
		}
		return t.Sub(now), true
	}
	return 0, false
}
