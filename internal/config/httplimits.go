package config

import (
	"time"
)

// HTTPLimits is the http_limits section: how long a client may take to
// send a request and how many connections one listener holds. It applies to
// every HTTP listener of the process (a worker's file may override it).
// Synapse has no equivalent keys; its reverse proxy usually does this job.
//
//	http_limits:
//	  request_header_timeout: 10s          # whole request line and headers
//	  request_body_timeout: 30s            # a body must arrive within this ...
//	  request_body_min_rate: 16K           # ... plus 1 s per this many bytes received
//	  idle_timeout: 2m                     # keep-alive connections waiting for a request
//	  max_connections: 4096                # per listener address
//	  max_pending_connections_per_ip: 0    # per client IP, connections without a complete request; 0 = no cap
type HTTPLimits struct {
	RequestHeaderTimeout Duration `yaml:"request_header_timeout"`
	RequestBodyTimeout   Duration `yaml:"request_body_timeout"`
	// RequestBodyMinRate (bytes per second) extends the body deadline as
	// data arrives, so a large upload at a sane rate is not cut off while
	// a client trickling bytes is.
	RequestBodyMinRate ByteSize `yaml:"request_body_min_rate"`
	IdleTimeout        Duration `yaml:"idle_timeout"`
	// MaxConnections caps open connections per listener address. When it is
	// reached, the longest-idle keep-alive connection is closed first, then
	// the oldest connection that has not yet sent a complete request; if
	// every connection is busy with a request, the new one is refused.
	MaxConnections int `yaml:"max_connections"`
	// MaxPendingConnectionsPerIP caps, per client address, connections that
	// have not yet delivered a complete first request (headers and body).
	// It does not apply on x_forwarded listeners, where every connection
	// comes from the proxy.
	MaxPendingConnectionsPerIP int `yaml:"max_pending_connections_per_ip"`
}

func defaultHTTPLimits() HTTPLimits {
	return HTTPLimits{
		RequestHeaderTimeout: "10s",
		RequestBodyTimeout:   "30s",
		RequestBodyMinRate:   "16K",
		IdleTimeout:          "2m",
		MaxConnections:       4096,
	}
}

// HTTPLimitValues are the parsed http_limits.
type HTTPLimitValues struct {
	RequestHeaderTimeout       time.Duration
	RequestBodyTimeout         time.Duration
	RequestBodyMinRate         int64
	IdleTimeout                time.Duration
	MaxConnections             int
	MaxPendingConnectionsPerIP int
}

// Values parses the section; Validate has already reported bad values, so
// errors here only come from hand-built configs and fall back to defaults.
func (h HTTPLimits) Values() HTTPLimitValues {
	def := defaultHTTPLimits()
	dur := func(v, d Duration) time.Duration {
		if x, err := v.Value(); err == nil && x > 0 {
			return x
		}
		x, _ := d.Value()
		return x
	}
	rate, err := h.RequestBodyMinRate.Bytes()
	if err != nil || rate <= 0 {
		rate, _ = def.RequestBodyMinRate.Bytes()
	}
	maxConns := h.MaxConnections
	if maxConns <= 0 {
		maxConns = def.MaxConnections
	}
	return HTTPLimitValues{
		RequestHeaderTimeout:       dur(h.RequestHeaderTimeout, def.RequestHeaderTimeout),
		RequestBodyTimeout:         dur(h.RequestBodyTimeout, def.RequestBodyTimeout),
		RequestBodyMinRate:         rate,
		IdleTimeout:                dur(h.IdleTimeout, def.IdleTimeout),
		MaxConnections:             maxConns,
		MaxPendingConnectionsPerIP: max(h.MaxPendingConnectionsPerIP, 0),
	}
}

func (c *Config) validateHTTPLimits(ps *problems) {
	h := c.HTTPLimits
	for _, d := range []struct {
		key string
		v   Duration
	}{
		{"request_header_timeout", h.RequestHeaderTimeout},
		{"request_body_timeout", h.RequestBodyTimeout},
		{"idle_timeout", h.IdleTimeout},
	} {
		if x, err := d.v.Value(); err != nil {
			ps.add("http_limits."+d.key, "%v", err)
		} else if x <= 0 {
			ps.add("http_limits."+d.key, "must be positive, got %q", string(d.v))
		}
	}
	if n, err := h.RequestBodyMinRate.Bytes(); err != nil {
		ps.add("http_limits.request_body_min_rate", "%v", err)
	} else if n <= 0 {
		ps.add("http_limits.request_body_min_rate", "must be at least 1 byte per second")
	}
	if h.MaxConnections < 1 {
		ps.add("http_limits.max_connections", "must be at least 1, got %d", h.MaxConnections)
	}
	if h.MaxPendingConnectionsPerIP < 0 {
		ps.add("http_limits.max_pending_connections_per_ip", "must not be negative (0 means no cap), got %d", h.MaxPendingConnectionsPerIP)
	}
}
