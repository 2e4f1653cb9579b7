// Package router is Ganglion's built-in reverse proxy (`ganglion route`):
// it classifies each request with internal/routes and forwards it to a
// backend of the class's pool by the class's policy — sticky by user for
// syncs, by origin for inbound federation transactions, by room for event
// sending, straight to a stream's writer, round robin for the rest — with
// active and passive health checks, one retry on a backend that refused
// the connection, streaming bodies, size limits and per-class metrics.
// It also writes the equivalent nginx config (nginx.go).
package router

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"ganglion/internal/accounts"
	"ganglion/internal/config"
	"ganglion/internal/forwarded"
	"ganglion/internal/httpguard"
	"ganglion/internal/metrics"
	"ganglion/internal/mxhttp"
	"ganglion/internal/routes"
	"ganglion/internal/tracing"
)

// MetricsPath is where the router's own listener serves metrics when no
// metrics_listen is configured.
const MetricsPath = "/_ganglion/router/metrics"

// maxAttempts is the first choice plus one retry on another backend.
const maxAttempts = 2

// Router is a running reverse proxy.
type Router struct {
	rc      *Config
	plan    *Plan
	log     *slog.Logger
	metrics *routerMetrics
	// tracer traces requests and passes the trace to the backends
	// (disabled unless SetTracer is called).
	tracer *tracing.Tracer
	// trust says whose X-Forwarded-For the router believes (with
	// listen.x_forwarded).
	trust forwarded.Trust

	transport *http.Transport
	proxy     *httputil.ReverseProxy
	health    *http.Client

	// limits bound slow and numerous clients (http_limits, as on every
	// Ganglion listener).
	limits config.HTTPLimitValues

	mu        sync.Mutex
	listeners []net.Listener
	servers   []*http.Server
}

// New builds a router from the shared config and its router section.
func New(cfg *config.Config, rc *Config, log *slog.Logger) (*Router, error) {
	plan, err := NewPlan(cfg, rc)
	if err != nil {
		return nil, err
	}
	// complete validated the list.
	trust, _ := forwarded.Parse(rc.Listen.XForwardedTrustedProxies)
	rt := &Router{rc: rc, plan: plan, log: log, limits: cfg.HTTPLimits.Values(), trust: trust}
	rt.metrics = newMetrics(rc.Name, func() []*Backend { return rt.plan.Backends })
	rt.tracer = tracing.Disabled()
	dialer := &net.Dialer{Timeout: 3 * time.Second, KeepAlive: 30 * time.Second}
	rt.transport = &http.Transport{
		DialContext:         dialer.DialContext,
		MaxIdleConns:        1024,
		MaxIdleConnsPerHost: 256,
		IdleConnTimeout:     90 * time.Second,
		// No response header timeout: /sync long-polls for as long as the
		// client asked.
		ExpectContinueTimeout: time.Second,
	}
	rt.proxy = &httputil.ReverseProxy{
		Rewrite:   rt.rewrite,
		Transport: &retryTransport{rt: rt},
		// Flush every write: long-polls and streamed media reach the
		// client as the backend produces them.
		FlushInterval: -1,
		ErrorHandler:  rt.proxyError,
		ErrorLog:      slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		// Without a pool every proxied response allocates a 32 KiB copy
		// buffer, and the garbage collector's extra cycles show in the
		// tail latency.
		BufferPool: &copyBuffers{},
	}
	rt.health = &http.Client{
		Transport: &http.Transport{DialContext: dialer.DialContext, MaxIdleConnsPerHost: 2, IdleConnTimeout: 30 * time.Second},
		Timeout:   max(rc.HealthCheckInterval, 500*time.Millisecond),
	}
	for _, n := range plan.Notes {
		log.Info("routing note", "note", n)
	}
	return rt, nil
}

// Plan returns the resolved routing plan.
func (rt *Router) Plan() *Plan { return rt.plan }

// Handler is the proxy with the router's own /health (and metrics when
// there is no separate metrics listener).
func (rt *Router) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		_, _ = io.WriteString(w, "OK")
	})
	if rt.rc.MetricsListen == nil {
		mux.Handle("GET "+MetricsPath, rt.MetricsHandler())
	}
	mux.Handle("/", http.HandlerFunc(rt.serveProxy))
	return mux
}

// MetricsHandler serves the Prometheus exposition of the router's registry.
func (rt *Router) MetricsHandler() http.Handler { return rt.metrics.reg.Handler() }

// SetTracer makes the router trace requests (call before serving).
func (rt *Router) SetTracer(t *tracing.Tracer) { rt.tracer = t }

// Metrics is the router's registry (for tests and the dashboard check).
func (rt *Router) Metrics() *metrics.Registry { return rt.metrics.reg }

// attempt is the routing state of one request, shared by the handler, the
// rewrite hook, the transport and the error handler.
type attempt struct {
	class  string
	cands  []*Backend
	body   *limitedBody // nil without a body, or when it is in replay
	chosen atomic.Pointer[Backend]
	// idempotent requests (routes.Replayable) may be sent again after a
	// connection broke mid-request, if their body can be: none, or a small
	// one read up front into replay.
	idempotent bool
	replay     []byte
}

// maxReplayBody is the largest body read up front so that an idempotent
// request can be replayed: room for event sends and state, not uploads.
const maxReplayBody = 64 << 10

type attemptKey struct{}

func attemptOf(ctx context.Context) *attempt {
	a, _ := ctx.Value(attemptKey{}).(*attempt)
	return a
}

func (a *attempt) backendName() string {
	if b := a.chosen.Load(); b != nil {
		return b.Name
	}
	return "none"
}

func (rt *Router) serveProxy(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	rec := &recorder{ResponseWriter: w}
	a := &attempt{class: "unknown"}
	rt.metrics.inFlight.Inc()
	var span trace.Span
	if rt.tracer.Enabled() {
		var ctx context.Context
		ctx, span = rt.tracer.Start(rt.tracer.Extract(r.Context(), r.Header), "route "+r.Method, trace.SpanKindServer,
			attribute.String("http.request.method", r.Method))
		r = r.WithContext(ctx)
	}
	defer func() {
		rt.metrics.inFlight.Dec()
		rt.metrics.observe(a.class, a.backendName(), rec.code(), time.Since(start))
		if span != nil {
			span.SetName("route " + r.Method + " " + a.class)
			span.SetAttributes(attribute.String("ganglion.class", a.class), attribute.String("ganglion.backend", a.backendName()),
				attribute.Int("http.response.status_code", rec.code()))
			if rec.code() >= 500 {
				span.SetStatus(codes.Error, http.StatusText(rec.code()))
			}
			span.End()
		}
	}()

	class, ok := routes.Classify(r.Method, r.URL.Path)
	if class == nil {
		// Counted under class "unknown" by the deferred observe.
		rt.log.Info("unrecognized request", "method", r.Method, "path", r.URL.Path, "status", http.StatusNotFound)
		mxhttp.WriteError(rec, mxhttp.Unrecognized(http.StatusNotFound, "Unrecognized request: %s %s", r.Method, r.URL.Path))
		return
	}
	a.class = class.Name
	if !ok {
		rec.Header().Set("Allow", strings.Join(class.AllowedMethods(), ", "))
		mxhttp.WriteError(rec, mxhttp.Unrecognized(http.StatusMethodNotAllowed, "Method %s not allowed on %s", r.Method, r.URL.Path))
		return
	}
	route := rt.plan.Route(class.Name)
	if r.ContentLength > route.Limit {
		mxhttp.WriteError(rec, tooLarge(route.Limit))
		return
	}
	tiers := route.Tiers
	if route.InitialTiers != nil && r.URL.Query().Get("since") == "" {
		tiers = route.InitialTiers
	}
	a.cands = candidates(tiers, rt.balanceKey(class, r), maxAttempts)
	if len(a.cands) == 0 {
		rt.log.Warn("no backend up", "class", class.Name)
		mxhttp.WriteError(rec, noBackend())
		return
	}
	a.idempotent = routes.Replayable(r.Method, r.URL.Path)
	switch {
	case r.Body == nil || r.Body == http.NoBody:
	case a.idempotent && r.ContentLength >= 0 && r.ContentLength <= min(maxReplayBody, route.Limit):
		// The server already holds the client to its Content-Length.
		buf, err := io.ReadAll(r.Body)
		if err != nil {
			mxhttp.WriteError(rec, mxhttp.BadJSON("Could not read the request body: %v", err))
			return
		}
		a.replay = buf
		r.Body = io.NopCloser(bytes.NewReader(buf))
	default:
		a.body = &limitedBody{rc: r.Body, limit: route.Limit}
		r.Body = a.body
	}
	rt.proxy.ServeHTTP(rec, r.WithContext(context.WithValue(r.Context(), attemptKey{}, a)))
}

// balanceKey is what a sticky policy hashes.
func (rt *Router) balanceKey(c *routes.Class, r *http.Request) string {
	switch c.Policy {
	case routes.StickyUser:
		if tok := accessToken(r); tok != "" {
			if lp, ok := accounts.TokenLocalpart(tok); ok {
				return lp
			}
			return tok // not one of ours: still stable per device
		}
	case routes.StickyOrigin:
		if o := routes.OriginOf(r.Header.Get("Authorization")); o != "" {
			return o
		}
	case routes.ByRoom:
		return routes.RoomKey(r.URL.Path)
	}
	return rt.clientIP(r)
}

func accessToken(r *http.Request) string {
	if h := r.Header.Get("Authorization"); len(h) > 7 && strings.EqualFold(h[:7], "Bearer ") {
		return strings.TrimSpace(h[7:])
	}
	return r.URL.Query().Get("access_token")
}

// clientIP is the client's address: the peer, or behind a trusted proxy
// (listen.x_forwarded) the address it reports.
func (rt *Router) clientIP(r *http.Request) string {
	if rt.rc.Listen.XForwarded {
		if a, ok := rt.trust.Client(r); ok {
			return a.String()
		}
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// rewrite aims the request at the chosen backend. X-Forwarded-For ends with
// the router's peer, which is what the workers (trusting the router) take
// as the client: a chain the client sent itself is dropped, and only a
// trusted proxy in front (listen.x_forwarded) has its chain kept.
func (rt *Router) rewrite(pr *httputil.ProxyRequest) {
	a := attemptOf(pr.In.Context())
	pr.SetURL(a.cands[0].URL)
	// Keep the client's Host, as nginx's proxy_set_header Host $host.
	pr.Out.Host = pr.In.Host
	behindProxy := rt.rc.Listen.XForwarded && rt.trust.TrustedPeer(pr.In)
	if behindProxy {
		// Behind another proxy: keep its chain and scheme, add our peer.
		pr.Out.Header["X-Forwarded-For"] = pr.In.Header["X-Forwarded-For"]
	}
	pr.SetXForwarded()
	if rt.tracer.Enabled() {
		// The backend's span is a child of the router's, whatever the
		// client sent.
		rt.tracer.Inject(pr.In.Context(), pr.Out.Header)
	}
	if behindProxy {
		if proto := pr.In.Header.Get("X-Forwarded-Proto"); proto != "" {
			pr.Out.Header.Set("X-Forwarded-Proto", proto)
		}
	}
}

// copyBuffers is ReverseProxy's pool of response copy buffers.
type copyBuffers struct{ pool sync.Pool }

func (c *copyBuffers) Get() []byte {
	if b, ok := c.pool.Get().(*[]byte); ok {
		return *b
	}
	return make([]byte, 32<<10)
}

func (c *copyBuffers) Put(b []byte) { c.pool.Put(&b) }

// retryTransport sends the request to the attempt's first candidate and,
// when that backend refuses the connection, marks it down and tries the
// next one once. A refused dial means the backend never saw the request,
// so the retry is safe for any method as long as no byte of the body was
// consumed. A replayable request whose body can be sent again is also
// retried when the connection broke mid-request (a backend that died with
// the request on a pooled connection); health checks decide about that
// backend.
type retryTransport struct{ rt *Router }

func (t *retryTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	a := attemptOf(req.Context())
	var lastErr error
	for i, be := range a.cands {
		if i > 0 {
			if a.body != nil && a.body.touched() {
				break
			}
			req = req.Clone(req.Context())
			req.URL.Scheme, req.URL.Host = be.URL.Scheme, be.URL.Host
			switch {
			case a.replay != nil:
				req.Body = io.NopCloser(bytes.NewReader(a.replay))
			case a.body != nil:
				// The failed attempt closed ReverseProxy's wrapper of the
				// body; the body itself is untouched.
				req.Body = &retryBody{b: a.body}
			}
		}
		a.chosen.Store(be)
		resp, err := t.rt.transport.RoundTrip(req)
		if err == nil {
			return resp, nil
		}
		lastErr = err
		if req.Context().Err() != nil || (a.body != nil && a.body.exceeded.Load()) {
			return nil, err
		}
		t.rt.metrics.upstreamError(a.class, be.Name)
		switch {
		case isDialError(err):
			t.rt.markDown(be, err)
		case a.idempotent && a.body == nil && isBrokenConn(err):
		default:
			return nil, err
		}
	}
	return nil, lastErr
}

// isBrokenConn reports a connection that failed under a request before
// any response: reset, closed, or a write into a closed socket.
func isBrokenConn(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
}

// isDialError reports a failure to connect: the backend is down (refused,
// unreachable, timed out connecting), not a failure of one request.
func isDialError(err error) bool {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return true
	}
	return errors.Is(err, syscall.ECONNREFUSED)
}

func (rt *Router) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	a := attemptOf(r.Context())
	switch {
	case a.body != nil && a.body.exceeded.Load():
		mxhttp.WriteError(w, tooLarge(a.body.limit))
	case r.Context().Err() != nil:
		// The client went away (a closed long-poll); nobody reads this.
		w.WriteHeader(499)
	default:
		rt.log.Warn("upstream request failed", "class", a.class, "backend", a.backendName(),
			"method", r.Method, "path", r.URL.Path, "err", err)
		mxhttp.WriteError(w, &mxhttp.Error{Status: http.StatusBadGateway, Code: "M_UNKNOWN",
			Message: "The server handling this request is unavailable"})
	}
}

func tooLarge(limit int64) *mxhttp.Error {
	return mxhttp.TooLarge("Request body too large (limit %d bytes)", limit)
}

func noBackend() *mxhttp.Error {
	return &mxhttp.Error{Status: http.StatusBadGateway, Code: "M_UNKNOWN", Message: "No server is available to handle this request"}
}

// markDown is the passive health check.
func (rt *Router) markDown(be *Backend, cause error) {
	if be.up.Swap(false) {
		rt.log.Warn("backend down", "backend", be.Name, "url", be.URL.String(), "reason", "request failed", "err", cause)
	}
}

// RunHealthChecks polls every backend's /health each interval until ctx
// ends: a 200 marks it up, anything else down. (Passive checks mark a
// backend down as soon as it refuses a connection.)
func (rt *Router) RunHealthChecks(ctx context.Context) error {
	var wg sync.WaitGroup
	for _, be := range rt.plan.Backends {
		wg.Go(func() {
			t := time.NewTicker(rt.rc.HealthCheckInterval)
			defer t.Stop()
			for {
				rt.checkOnce(ctx, be)
				select {
				case <-ctx.Done():
					return
				case <-t.C:
				}
			}
		})
	}
	wg.Wait()
	rt.health.CloseIdleConnections()
	return nil
}

func (rt *Router) checkOnce(ctx context.Context, be *Backend) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, be.URL.JoinPath("/health").String(), nil)
	if err != nil {
		return
	}
	resp, err := rt.health.Do(req)
	if ctx.Err() != nil {
		return
	}
	up := err == nil && resp.StatusCode == http.StatusOK
	if resp != nil {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
	}
	if was := be.up.Swap(up); was != up {
		if up {
			rt.log.Info("backend up", "backend", be.Name, "url", be.URL.String())
		} else {
			reason := "health check failed"
			if err == nil {
				reason = "health check returned " + resp.Status
			}
			rt.log.Warn("backend down", "backend", be.Name, "url", be.URL.String(), "reason", reason, "err", err)
		}
	}
}

// Listen binds the router's listener and, if configured, the metrics
// listener. Separate from Run so callers know the ports are bound.
func (rt *Router) Listen() error {
	bind := func(l config.Listener, h http.Handler) error {
		for _, addr := range l.Addresses() {
			ln, err := net.Listen("tcp", addr)
			if err != nil {
				rt.closeListeners()
				return fmt.Errorf("listen on %s: %w", addr, err)
			}
			pendingCap := rt.limits.MaxPendingConnectionsPerIP
			if l.XForwarded {
				pendingCap = 0 // every connection has the proxy's address
			}
			guard := httpguard.New(httpguard.Options{
				BodyTimeout: rt.limits.RequestBodyTimeout, BodyMinRate: rt.limits.RequestBodyMinRate,
				MaxConns: rt.limits.MaxConnections, MaxPendingPerIP: pendingCap, PlainHTTP: !l.TLS,
			}, rt.log.With("listener", addr))
			ln = guard.Listener(ln)
			srv := &http.Server{
				Handler:           guard.Handler(h),
				ReadHeaderTimeout: rt.limits.RequestHeaderTimeout,
				IdleTimeout:       rt.limits.IdleTimeout,
				MaxHeaderBytes:    64 << 10,
				ErrorLog:          slog.NewLogLogger(rt.log.Handler(), slog.LevelWarn),
				ConnState:         guard.ConnState,
				ConnContext:       guard.ConnContext,
			}
			rt.mu.Lock()
			rt.listeners = append(rt.listeners, ln)
			rt.servers = append(rt.servers, srv)
			rt.mu.Unlock()
			rt.log.Info("listening", "addr", ln.Addr().String())
		}
		return nil
	}
	if err := bind(rt.rc.Listen, rt.Handler()); err != nil {
		return err
	}
	if m := rt.rc.MetricsListen; m != nil {
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", rt.MetricsHandler())
		mux.HandleFunc("GET /health", func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "OK") })
		if err := bind(*m, mux); err != nil {
			return err
		}
	}
	return nil
}

// Addrs lists the bound addresses, the proxy's first.
func (rt *Router) Addrs() []net.Addr {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	out := make([]net.Addr, len(rt.listeners))
	for i, ln := range rt.listeners {
		out[i] = ln.Addr()
	}
	return out
}

func (rt *Router) closeListeners() {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	for _, ln := range rt.listeners {
		ln.Close()
	}
}

// Run serves and health-checks until ctx ends, then stops accepting and
// lets requests finish (bounded; long-polls are cut at the bound).
func (rt *Router) Run(ctx context.Context) error {
	rt.mu.Lock()
	servers, listeners := rt.servers, rt.listeners
	rt.mu.Unlock()
	errc := make(chan error, len(servers))
	for i, srv := range servers {
		go func() {
			if err := srv.Serve(listeners[i]); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("serve %s: %w", listeners[i].Addr(), err)
			}
		}()
	}
	hctx, stopHealth := context.WithCancel(ctx)
	healthDone := make(chan struct{})
	go func() {
		defer close(healthDone)
		_ = rt.RunHealthChecks(hctx)
	}()
	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
	}
	rt.log.Info("shutting down")
	shutCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	for _, srv := range servers {
		if err := srv.Shutdown(shutCtx); err != nil {
			_ = srv.Close()
		}
	}
	stopHealth()
	<-healthDone
	rt.transport.CloseIdleConnections()
	return runErr
}

// limitedBody streams a request body to the backend and fails once more
// than limit bytes have been read, so chunked bodies are bounded too.
// ReverseProxy wraps it in a reader whose Close does nothing, so a failed
// dial leaves it intact for the retry.
type limitedBody struct {
	rc       io.ReadCloser
	limit    int64
	n        atomic.Int64
	exceeded atomic.Bool
}

var errBodyTooLarge = errors.New("request body exceeds the router's limit")

func (b *limitedBody) Read(p []byte) (int, error) {
	if b.exceeded.Load() {
		return 0, errBodyTooLarge
	}
	if room := b.limit + 1 - b.n.Load(); int64(len(p)) > room {
		p = p[:room]
	}
	n, err := b.rc.Read(p)
	if b.n.Add(int64(n)) > b.limit {
		b.exceeded.Store(true)
		return 0, errBodyTooLarge
	}
	return n, err
}

func (b *limitedBody) touched() bool { return b.n.Load() > 0 }

func (b *limitedBody) Close() error { return b.rc.Close() }

// retryBody carries the untouched body to the retry. Like ReverseProxy's
// own wrapper, Close only stops further reads: the server owns the inbound
// body.
type retryBody struct {
	b      *limitedBody
	closed atomic.Bool
}

func (r *retryBody) Read(p []byte) (int, error) {
	if r.closed.Load() {
		return 0, errors.New("read on a closed retried body")
	}
	return r.b.Read(p)
}

func (r *retryBody) Close() error {
	r.closed.Store(true)
	return nil
}

// recorder keeps the status for metrics; Unwrap lets ReverseProxy flush.
type recorder struct {
	http.ResponseWriter
	status int
}

func (r *recorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(p []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.ResponseWriter.Write(p)
}

func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

func (r *recorder) code() int {
	if r.status == 0 {
		return http.StatusOK
	}
	return r.status
}
