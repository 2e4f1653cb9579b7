package app

import (
	"context"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"time"

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
	e.Handle = func(ctx context.Context, req *replication.Request) (any, error) { return p.status(), nil }
	srv.Register(e)
}

// serveMetrics writes Prometheus text exposition: stream positions per
// writer as this process sees them (lag is the difference between a
// writer's own series and another instance's), the Redis link, and the
// replication command counts.
func (p *Process) serveMetrics(w http.ResponseWriter, r *http.Request) {
	st := p.status()
	var b strings.Builder
	inst := st.Instance
	fmt.Fprintf(&b, "# HELP ganglion_stream_position Position of a stream writer as seen by this instance.\n# TYPE ganglion_stream_position gauge\n")
	var names []string
	for n := range st.Positions {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		var ws []string
		for wr := range st.Positions[n] {
			ws = append(ws, wr)
		}
		sort.Strings(ws)
		for _, wr := range ws {
			fmt.Fprintf(&b, "ganglion_stream_position{instance=%q,stream=%q,writer=%q} %d\n", inst, n, wr, st.Positions[n][wr])
		}
	}
	fmt.Fprintf(&b, "# HELP ganglion_stream_current Readable (minimum) position of a stream on this instance.\n# TYPE ganglion_stream_current gauge\n")
	for _, n := range names {
		if c, ok := st.Current[n]; ok {
			fmt.Fprintf(&b, "ganglion_stream_current{instance=%q,stream=%q} %d\n", inst, n, c)
		}
	}
	if st.Redis != nil {
		up := 0
		if st.Redis.Connected {
			up = 1
		}
		fmt.Fprintf(&b, "# HELP ganglion_redis_connected Whether the replication link to Redis is up.\n# TYPE ganglion_redis_connected gauge\nganglion_redis_connected{instance=%q} %d\n", inst, up)
		fmt.Fprintf(&b, "# TYPE ganglion_redis_reconnects_total counter\nganglion_redis_reconnects_total{instance=%q} %d\n", inst, st.Redis.Reconnects)
		fmt.Fprintf(&b, "# TYPE ganglion_replication_published_total counter\nganglion_replication_published_total{instance=%q} %d\n", inst, st.Redis.Published)
		fmt.Fprintf(&b, "# TYPE ganglion_replication_received_total counter\n")
		var cmds []string
		for c := range st.Redis.ByCommand {
			cmds = append(cmds, c)
		}
		sort.Strings(cmds)
		for _, c := range cmds {
			fmt.Fprintf(&b, "ganglion_replication_received_total{instance=%q,command=%q} %d\n", inst, c, st.Redis.ByCommand[c])
		}
	}
	fmt.Fprintf(&b, "# HELP ganglion_http_unrecognized_requests_total Requests for endpoints this instance does not serve.\n"+
		"# TYPE ganglion_http_unrecognized_requests_total counter\nganglion_http_unrecognized_requests_total{instance=%q} %d\n",
		inst, p.unrecognizedRequests.Load())
	fmt.Fprintf(&b, "# TYPE ganglion_uptime_seconds gauge\nganglion_uptime_seconds{instance=%q} %d\n", inst, st.UptimeSec)
	w.Header().Set("Content-Type", "text/plain; version=0.0.4")
	_, _ = w.Write([]byte(b.String()))
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
