// Package httpguard bounds what slow or numerous clients can hold on an
// HTTP listener, so that a few hundred connections trickling bytes cannot
// exhaust file descriptors and lock everyone else out:
//
//   - a request body must arrive within a deadline that grows with the data
//     received (a base time plus one second per BodyMinRate bytes), so a
//     large upload at a sane rate passes while a trickle is cut off;
//   - a listener holds at most MaxConns connections. At the cap a new
//     connection first closes the longest-idle keep-alive connection, then
//     the oldest connection that has not yet delivered a complete request
//     ("pending"); when every connection is busy serving a request, the new
//     one is refused (429 M_LIMIT_EXCEEDED on plain HTTP, then closed);
//   - optionally, each client address holds at most MaxPendingPerIP pending
//     connections.
//
// Request headers are bounded by http.Server.ReadHeaderTimeout, which the
// caller sets; a Guard covers what happens after them.
package httpguard

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Options configure a Guard.
type Options struct {
	// BodyTimeout is the time a request body may take, before the
	// allowance for the bytes received. 0 disables the body deadline.
	BodyTimeout time.Duration
	// BodyMinRate (bytes per second) extends the body deadline by one
	// second per BodyMinRate bytes received.
	BodyMinRate int64
	// MaxConns caps open connections; 0 means no cap.
	MaxConns int
	// MaxPendingPerIP caps, per client address, connections that have not
	// yet delivered a complete request; 0 means no cap. Leave it 0 behind
	// a proxy, where every connection has the proxy's address.
	MaxPendingPerIP int
	// PlainHTTP says refused connections may be sent an HTTP answer (not
	// on a TLS listener, where the handshake has not happened yet).
	PlainHTTP bool
}

// Guard tracks one listener's connections. Install all three hooks:
// Listener on the net.Listener, and ConnState, ConnContext and Handler on
// the http.Server.
type Guard struct {
	opts Options
	log  *slog.Logger
	now  func() time.Time

	mu      sync.Mutex
	conns   map[*conn]struct{}
	pending map[string]int // client address -> pending connections

	refused atomic.Uint64
	evicted atomic.Uint64
	lastLog atomic.Int64 // unix seconds of the last refusal log line
}

// New returns a Guard.
func New(opts Options, log *slog.Logger) *Guard {
	return &Guard{opts: opts, log: log, now: time.Now, conns: map[*conn]struct{}{}, pending: map[string]int{}}
}

// conn is an admitted connection. Its fields after Conn are guarded by
// the Guard's mu.
type conn struct {
	net.Conn
	g      *Guard
	ip     string
	opened time.Time

	idle      bool
	idleSince time.Time
	proven    bool // has delivered a complete request
	released  bool
}

// Close releases the connection's place, once, and closes it.
func (c *conn) Close() error {
	c.g.mu.Lock()
	c.g.releaseLocked(c)
	c.g.mu.Unlock()
	return c.Conn.Close()
}

// releaseLocked frees c's place in the counts; idempotent.
func (g *Guard) releaseLocked(c *conn) {
	if c.released {
		return
	}
	c.released = true
	delete(g.conns, c)
	if !c.proven {
		g.unpendLocked(c.ip)
	}
}

func (g *Guard) unpendLocked(ip string) {
	if g.pending[ip] <= 1 {
		delete(g.pending, ip)
	} else {
		g.pending[ip]--
	}
}

// markProven records that c delivered a complete request: it no longer
// counts as pending and is no longer a candidate for eviction while busy.
func (g *Guard) markProven(c *conn) {
	if c == nil {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if !c.proven && !c.released {
		c.proven = true
		g.unpendLocked(c.ip)
	}
}

// Counts reports open and pending connections (for tests and status).
func (g *Guard) Counts() (open, pending int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, n := range g.pending {
		pending += n
	}
	return len(g.conns), pending
}

// Idle reports how many connections idle between keep-alive requests:
// the first a newcomer at the cap evicts.
func (g *Guard) Idle() (n int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for c := range g.conns {
		if c.idle {
			n++
		}
	}
	return n
}

// admit decides whether nc may be served. On success it returns the
// tracked connection and, if a place had to be freed, the victim to close
// (outside the lock).
func (g *Guard) admit(nc net.Conn) (c *conn, victim *conn, reason string) {
	ip := hostOf(nc.RemoteAddr())
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.opts.MaxPendingPerIP > 0 && g.pending[ip] >= g.opts.MaxPendingPerIP {
		return nil, nil, "too many connections without a complete request from " + ip
	}
	if g.opts.MaxConns > 0 && len(g.conns) >= g.opts.MaxConns {
		victim = g.victimLocked()
		if victim == nil {
			return nil, nil, "connection limit reached and every connection is serving a request"
		}
		// Free its place now, so the count holds even before its Close.
		g.releaseLocked(victim)
	}
	c = &conn{Conn: nc, g: g, ip: ip, opened: g.now()}
	g.conns[c] = struct{}{}
	g.pending[ip]++
	return c, victim, ""
}

// victimLocked picks the connection to close for a newcomer: the
// longest-idle keep-alive connection (its client reconnects at no cost),
// else the oldest pending one (under attack, the attacker's). Connections
// busy with a complete request (a long-poll /sync) are never chosen.
func (g *Guard) victimLocked() *conn {
	var idle, pend *conn
	for c := range g.conns {
		switch {
		case c.idle:
			if idle == nil || c.idleSince.Before(idle.idleSince) {
				idle = c
			}
		case !c.proven:
			if pend == nil || c.opened.Before(pend.opened) {
				pend = c
			}
		}
	}
	if idle != nil {
		return idle
	}
	return pend
}

// Listener wraps ln so that every accepted connection goes through the
// limits.
func (g *Guard) Listener(ln net.Listener) net.Listener { return &listener{Listener: ln, g: g} }

type listener struct {
	net.Listener
	g *Guard
}

func (l *listener) Accept() (net.Conn, error) {
	for {
		nc, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		c, victim, reason := l.g.admit(nc)
		if victim != nil {
			l.g.evicted.Add(1)
			// The underlying close: the server's own Close of the wrapper
			// follows and finds the place already released.
			_ = victim.Conn.Close()
		}
		if c != nil {
			return c, nil
		}
		l.g.refuse(nc, reason)
	}
}

// refusal is the answer to a connection that is not admitted, sent before
// its request is read (HTTP allows an early response; the connection is
// then closed).
var refusal = func() []byte {
	body := `{"errcode":"M_LIMIT_EXCEEDED","error":"Too many connections","retry_after_ms":1000}`
	return []byte("HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\nRetry-After: 1\r\n" +
		"Connection: close\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body)
}()

// refuse answers and closes nc without blocking the accept loop for more
// than a moment: the answer fits the socket buffer of any live peer.
func (g *Guard) refuse(nc net.Conn, reason string) {
	n := g.refused.Add(1)
	if g.opts.PlainHTTP {
		_ = nc.SetWriteDeadline(g.now().Add(100 * time.Millisecond))
		_, _ = nc.Write(refusal)
	}
	_ = nc.Close()
	// One log line a minute at most: under attack this fires per connection.
	now := g.now().Unix()
	if last := g.lastLog.Load(); now-last >= 60 && g.lastLog.CompareAndSwap(last, now) {
		g.log.Warn("refusing connections", "reason", reason, "refused_total", n, "evicted_total", g.evicted.Load(),
			"local_addr", nc.LocalAddr().String())
	}
}

// ConnState is the http.Server ConnState hook: it tracks idle keep-alive
// connections (evicted first) and completed requests.
func (g *Guard) ConnState(nc net.Conn, state http.ConnState) {
	c := unwrap(nc)
	if c == nil {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	switch state {
	case http.StateIdle:
		c.idle, c.idleSince = true, g.now()
		if !c.proven && !c.released {
			c.proven = true
			g.unpendLocked(c.ip)
		}
	case http.StateActive:
		c.idle = false
	case http.StateClosed, http.StateHijacked:
		g.releaseLocked(c)
	}
}

type connKey struct{}

// ConnContext is the http.Server ConnContext hook: it lets Handler find
// the request's connection.
func (g *Guard) ConnContext(ctx context.Context, nc net.Conn) context.Context {
	if c := unwrap(nc); c != nil {
		return context.WithValue(ctx, connKey{}, c)
	}
	return ctx
}

// unwrap finds the tracked connection under TLS (or any wrapper that
// exposes NetConn).
func unwrap(nc net.Conn) *conn {
	for nc != nil {
		switch v := nc.(type) {
		case *conn:
			return v
		case interface{ NetConn() net.Conn }:
			nc = v.NetConn()
		default:
			return nil
		}
	}
	return nil
}

func hostOf(a net.Addr) string {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.IP.String()
	}
	host, _, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	return host
}
