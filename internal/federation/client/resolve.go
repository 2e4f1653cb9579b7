package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"ganglion/internal/federation/servername"
)

// DNS is the part of *net.Resolver the federation client uses; tests
// inject their own records.
type DNS interface {
	LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error)
	LookupSRV(ctx context.Context, service, proto, name string) (cname string, addrs []*net.SRV, err error)
}

var _ DNS = (*net.Resolver)(nil)

// DefaultPort is the federation port when nothing names another.
const DefaultPort = 8448

// Target is one place to connect to: a hostname (looked up with A/AAAA
// records at dial time) or an IP literal, and a port.
type Target struct {
	Host string
	Port int
}

func (t Target) String() string { return net.JoinHostPort(t.Host, strconv.Itoa(t.Port)) }

// Resolved is where and how to reach a server, per the spec's "Resolving
// server names".
type Resolved struct {
	// ServerName is the name resolved.
	ServerName string
	// Targets are tried in order.
	Targets []Target
	// Host is the Host header of requests.
	Host string
	// TLSName is the name (hostname or IP literal) the server's
	// certificate must be valid for; it is also the SNI, except for IP
	// literals, which TLS does not send as SNI.
	TLSName string
}

// Resolver resolves server names. It caches .well-known answers; DNS
// answers are left to the system resolver's cache.
type Resolver struct {
	dns       DNS
	wellKnown *wellKnownCache
	log       *slog.Logger
}

func newResolver(dns DNS, wk *wellKnownCache, log *slog.Logger) *Resolver {
	return &Resolver{dns: dns, wellKnown: wk, log: log}
}

// ErrServiceUnavailable means the server's SRV record says it offers no
// federation service (a single record with target ".").
var ErrServiceUnavailable = errors.New("server's SRV record says federation is not available")

// Resolve follows the spec's steps in order.
func (r *Resolver) Resolve(ctx context.Context, serverName string) (Resolved, error) {
	n, err := servername.Parse(serverName)
	if err != nil {
		return Resolved{}, err
	}
	res := Resolved{ServerName: serverName}
	// Step 1: an IP literal, with its port or 8448. The Host header is the
	// server name (with its port if it has one).
	if n.IsIP() {
		res.Targets = []Target{{Host: n.IP.String(), Port: portOr(n.Port, DefaultPort)}}
		res.Host, res.TLSName = n.HostPort(), n.IP.String()
		return res, nil
	}
	// Step 2: a hostname with an explicit port: A/AAAA, no delegation.
	if n.Port != 0 {
		res.Targets = []Target{{Host: n.Host, Port: n.Port}}
		res.Host, res.TLSName = n.HostPort(), n.Host
		return res, nil
	}
	// Step 3: .well-known delegation.
	if delegated, ok := r.wellKnown.lookup(ctx, n.Host); ok {
		d, err := servername.Parse(delegated)
		if err == nil {
			return r.resolveDelegated(ctx, res, d)
		}
		// fetch validates m.server, so this is only reached if the
		// grammars disagree; treat it as no delegation.
		r.log.Warn("ignoring invalid .well-known delegation", "server", serverName, "m.server", delegated, "err", err)
	}
	if err := ctx.Err(); err != nil {
		return Resolved{}, err
	}
	// Steps 4-6: SRV on the server name itself, then port 8448.
	res.Host, res.TLSName = n.Host, n.Host
	targets, err := r.srvTargets(ctx, n.Host)
	if err != nil {
		return Resolved{}, fmt.Errorf("resolve %s: %w", serverName, err)
	}
	res.Targets = targets
	return res, nil
}

// resolveDelegated is step 3's sub-steps for m.server's value d.
func (r *Resolver) resolveDelegated(ctx context.Context, res Resolved, d servername.Name) (Resolved, error) {
	switch {
	case d.IsIP():
		// 3.1: the Host header is the IP literal, with the port if given.
		res.Targets = []Target{{Host: d.IP.String(), Port: portOr(d.Port, DefaultPort)}}
		res.Host, res.TLSName = d.HostPort(), d.IP.String()
	case d.Port != 0:
		// 3.2
		res.Targets = []Target{{Host: d.Host, Port: d.Port}}
		res.Host, res.TLSName = d.HostPort(), d.Host
	default:
		// 3.3–3.5: SRV on the delegated name, then port 8448; the
		// certificate and Host header are the delegated name's.
		targets, err := r.srvTargets(ctx, d.Host)
		if err != nil {
			return Resolved{}, fmt.Errorf("resolve %s (delegated to %s): %w", res.ServerName, d.Host, err)
		}
		res.Targets = targets
		res.Host, res.TLSName = d.Host, d.Host
	}
	return res, nil
}

// srvTargets looks up _matrix-fed._tcp.host, then the deprecated
// _matrix._tcp.host, and falls back to host:8448.
func (r *Resolver) srvTargets(ctx context.Context, host string) ([]Target, error) {
	for _, service := range []string{"matrix-fed", "matrix"} {
		_, addrs, err := r.dns.LookupSRV(ctx, service, "tcp", host)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			// NXDOMAIN, no records or a failed lookup: the next step.
			continue
		}
		if len(addrs) == 0 {
			continue
		}
		if len(addrs) == 1 && (addrs[0].Target == "." || addrs[0].Target == "") {
			return nil, fmt.Errorf("_%s._tcp.%s: %w", service, host, ErrServiceUnavailable)
		}
		// net.Resolver already orders by priority and weight; an injected
		// resolver may not, and priority is the part that matters.
		sorted := append([]*net.SRV(nil), addrs...)
		sort.SliceStable(sorted, func(i, j int) bool { return sorted[i].Priority < sorted[j].Priority })
		out := make([]Target, 0, len(sorted))
		for _, a := range sorted {
			t := strings.TrimSuffix(a.Target, ".")
			if t == "" || a.Port == 0 {
				continue
			}
			out = append(out, Target{Host: t, Port: int(a.Port)})
		}
		if len(out) > 0 {
			return out, nil
		}
	}
	return []Target{{Host: host, Port: DefaultPort}}, nil
}

func portOr(p, def int) int {
	if p == 0 {
		return def
	}
	return p
}

// wellKnownCache fetches and caches /.well-known/matrix/server answers.
type wellKnownCache struct {
	fetch func(ctx context.Context, host string) (delegated string, status fetchStatus, ttl time.Duration)
	now   func() time.Time
	log   *slog.Logger

	mu      sync.Mutex
	entries map[string]wellKnownEntry
	// inflight holds the fetch under way per host: concurrent lookups of
	// a host whose answer expired wait for one fetch instead of each
	// making their own.
	inflight map[string]*wellKnownCall
}

type wellKnownCall struct {
	done      chan struct{}
	delegated string // valid once done is closed
	waiters   int    // lookups waiting (for tests)
}

type wellKnownEntry struct {
	delegated string // "" when the host does not delegate (or failed)
	// expires is when the answer may no longer be used; refreshAt, no
	// later, is when the next lookup fetches again. A valid delegation is
	// refreshed before it expires so that a failed refresh can keep using
	// it: one unreachable moment of the .well-known host does not send
	// our requests to the wrong server.
	expires, refreshAt time.Time
	// failures counts consecutive network failures, for the backoff.
	failures int
}

// fetchStatus classifies a .well-known fetch.
type fetchStatus int

const (
	fetchValid fetchStatus = iota
	// fetchInvalid: an answer, but no valid delegation (non-200, bad
	// JSON, missing or invalid m.server, too large, too many redirects).
	fetchInvalid
	// fetchFailed: no answer (DNS, connection, TLS, timeout).
	fetchFailed
)

// Cache periods, per the spec's recommendations: a valid answer per its
// cache headers within [wellKnownMinCache, wellKnownMaxCache], default
// 24 h; an invalid answer one hour; a failure a backoff that doubles from
// two minutes up to one hour.
const (
	wellKnownDefaultCache = 24 * time.Hour
	wellKnownMinCache     = time.Hour
	wellKnownMaxCache     = 48 * time.Hour
	wellKnownInvalidCache = time.Hour
	wellKnownFailureFirst = 2 * time.Minute
	wellKnownFailureMax   = time.Hour
)

// wellKnownRefreshFactor: a valid answer is refreshed after this share of
// its cache period.
const wellKnownRefreshFactor = 0.8

// lookup returns the delegated server name of host, from the cache or a
// fetch.
func (c *wellKnownCache) lookup(ctx context.Context, host string) (string, bool) {
	now := c.now()
	c.mu.Lock()
	e, ok := c.entries[host]
	if ok && now.Before(e.refreshAt) {
		c.mu.Unlock()
		return e.delegated, e.delegated != ""
	}
	call := c.inflight[host]
	if call == nil {
		if c.inflight == nil {
			c.inflight = map[string]*wellKnownCall{}
		}
		call = &wellKnownCall{done: make(chan struct{})}
		c.inflight[host] = call
		// The fetch outlives a caller that gives up, bounded by its own
		// timeout, so that its answer is cached for the others.
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), wellKnownTimeout)
		go func() {
			defer cancel()
			c.refresh(fctx, host, call)
		}()
	}
	call.waiters++
	c.mu.Unlock()
	select {
	case <-call.done:
		return call.delegated, call.delegated != ""
	case <-ctx.Done():
		// Our caller gave up; a delegation still valid is still good.
		if ok && now.Before(e.expires) {
			return e.delegated, e.delegated != ""
		}
		return "", false
	}
}

// refresh fetches host's answer, caches it and completes call.
func (c *wellKnownCache) refresh(ctx context.Context, host string, call *wellKnownCall) {
	delegated, status, ttl := c.fetch(ctx, host)
	now := c.now()
	c.mu.Lock()
	e, ok := c.entries[host]
	c.mu.Unlock()
	var next wellKnownEntry
	switch status {
	case fetchValid:
		next = wellKnownEntry{delegated: delegated, expires: now.Add(ttl),
			refreshAt: now.Add(time.Duration(float64(ttl) * wellKnownRefreshFactor))}
	case fetchInvalid:
		next = wellKnownEntry{expires: now.Add(wellKnownInvalidCache), refreshAt: now.Add(wellKnownInvalidCache)}
	case fetchFailed:
		next.failures = e.failures + 1
		backoff := min(wellKnownFailureFirst<<min(next.failures-1, 10), wellKnownFailureMax)
		next.expires, next.refreshAt = now.Add(backoff), now.Add(backoff)
		if ok && e.delegated != "" && now.Before(e.expires) {
			// The host did not answer: keep the delegation it gave us
			// while it is valid, and try again after the backoff.
			next.delegated, next.expires = e.delegated, e.expires
			if next.refreshAt.After(e.expires) {
				next.refreshAt = e.expires
			}
		}
	}
	c.mu.Lock()
	if c.entries == nil {
		c.entries = map[string]wellKnownEntry{}
	}
	// Forget expired entries now and then so the map holds only what is
	// worth keeping.
	if len(c.entries) > 1024 {
		for h, old := range c.entries {
			if !now.Before(old.expires) {
				delete(c.entries, h)
			}
		}
	}
	c.entries[host] = next
	delete(c.inflight, host)
	call.delegated = next.delegated
	c.mu.Unlock()
	close(call.done)
}
