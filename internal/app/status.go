package app

import (
	"context"
	"net/http"
	"sort"
	"time"

	"ganglion/internal/metrics"
	"ganglion/internal/replication"
	"ganglion/internal/streams"
)

// StatusEndpoint reports an instance's role, health, Redis link and stream
// positions; `ganglion status` asks every instance for it.
var StatusEndpoint = replication.Endpoint{Name: "status", Method: "GET"}

// Status is one instance's report.
type Status struct {
	Instance    string                      `json:"instance"`
	Role        string                      `json:"role"`
	UptimeSec   int64                       `json:"uptime_seconds"`
	Redis       *replication.Status         `json:"redis,omitempty"`
	Positions   map[string]map[string]int64 `json:"positions"`
	WrittenHere []string                    `json:"written_here"`
	Current     map[string]int64            `json:"current"`
	// HTTP is the request count and latency histogram since start (long-
	// polls left out), for the request rate and p99 of `ganglion status`.
	HTTP *metrics.Summary `json:"http,omitempty"`
}

// status snapshots this process.
func (p *Process) status() Status {
	st := Status{Instance: p.cfg.InstanceName(), Role: p.cfg.WorkerRole(), UptimeSec: int64(time.Since(p.started).Seconds()),
		Positions: map[string]map[string]int64{}, Current: map[string]int64{}}
	if p.replicator != nil {
		rs := p.replicator.Bus().Status()
		st.Redis = &rs
	}
	for name, m := range p.reg.Positions() {
		st.Positions[string(name)] = m
		if name != streams.Caches {
			st.Current[string(name)] = p.reg.Current(name)
		}
	}
	for _, n := range p.reg.WrittenHere() {
		st.WrittenHere = append(st.WrittenHere, string(n))
	}
	sort.Strings(st.WrittenHere)
	return st
}

func (p *Process) serveStatus(srv *replication.Server) {
	e := StatusEndpoint
	e.Handle = func(ctx context.Context, req *replication.Request) (any, error) {
		st := p.status()
		// Here rather than in status(), which every metrics scrape reads.
		sum := p.httpMetrics.Summary()
		st.HTTP = &sum
		return st, nil
	}
	srv.Register(e)
}

// unrecognized records a request for an endpoint this process does not
// serve (not implemented, or not on this listener): at INFO, so clients
// and proxies that depend on a missing endpoint show up in the logs, and
// counted for the metrics. The query string is left out: it may carry an
// access token.
func (p *Process) unrecognized(r *http.Request, status int) {
	p.unrecognizedRequests.Add(1)
	p.log.Info("unrecognized request", "method", r.Method, "path", r.URL.Path, "status", status)
}
