package replication

import (
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"ganglion/internal/tracing"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"ganglion/internal/config"
	"ganglion/internal/mxhttp"
	"ganglion/internal/streams"
)

const (
	// DefaultBudget bounds a whole Call, retries included: about as long as
	// Synapse's connect backoff (1+2+…+32 s), long enough to ride out a
	// worker restart, short enough that a client request does not hang.
	DefaultBudget = 60 * time.Second
	// DefaultAttemptTimeout bounds one attempt, so an attempt stuck on a
	// wedged connection is retried within the budget.
	DefaultAttemptTimeout = 30 * time.Second
	// DefaultUnreachableBudget bounds how long a Call keeps retrying a
	// target that cannot be connected to at all (refused, no route): a few
	// quick retries ride out a connection that broke, but a writer that is
	// down must not hold the client's request for the whole budget. The
	// caller answers 503 with Retry-After instead, and the client retries.
	DefaultUnreachableBudget = 2 * time.Second
	// downMemory is how long a target that just exhausted a call's
	// unreachable budget is presumed still down: calls meanwhile make one
	// attempt instead of retrying, so a burst of requests to a dead writer
	// does not cost each of them the whole unreachable budget.
	downMemory = 5 * time.Second
	// UnavailableRetryAfter is the Retry-After of the 503 a Call returns
	// when its target is unavailable: about how long a supervised process
	// takes to restart.
	UnavailableRetryAfter = 2 * time.Second

	backoffBase = 100 * time.Millisecond
	backoffCap  = 5 * time.Second
	dialTimeout = 5 * time.Second
	// maxResponseBody is larger than the request limit: stream catch-up
	// answers can carry many rows.
	maxResponseBody = 64 << 20
)

// Client calls endpoints on other instances of the fleet.
type Client struct {
	instances func(string) (config.InstanceLocation, bool)
	secret    string
	self      string
	reg       *streams.Registry
	log       *slog.Logger
	known     map[streams.Name]bool

	mu      sync.Mutex
	remotes map[string]*remote // by canonical instance name

	// calls times calls (nil without RegisterMetrics).
	calls *callMetrics
	// tracer makes a client span of each call and sends its context along
	// (nil or disabled: no spans).
	tracer *tracing.Tracer
}

// remote is the connection pool for one instance. Pools are per instance
// so a slow or dead instance cannot take the idle connections of others.
type remote struct {
	loc  config.InstanceLocation
	base string // scheme://host
	tr   *http.Transport
	hc   *http.Client
	// downAt is when a call last gave up on this instance because it could
	// not connect (unix nanoseconds; 0 once a call got through).
	downAt atomic.Int64
}

// presumedDown reports whether a call gave up on the instance for being
// unreachable within downMemory.
func (r *remote) presumedDown(now time.Time) bool {
	at := r.downAt.Load()
	return at != 0 && now.Sub(time.Unix(0, at)) < downMemory
}

// NewClient builds a client for the instance named self. instances resolves
// instance_map entries (see InstanceLookup); secret is
// worker_replication_secret ("" for none); reg is this process's stream
// registry, used for positions in both directions.
func NewClient(instances func(name string) (config.InstanceLocation, bool), secret string, self string,
	reg *streams.Registry, log *slog.Logger) *Client {
	c := &Client{instances: instances, secret: secret, self: canonicalInstance(self), reg: reg, log: log,
		known: map[streams.Name]bool{}, remotes: map[string]*remote{}}
	if reg != nil {
		for _, d := range reg.Defs() {
			c.known[d.Name] = true
		}
	}
	return c
}

// CallOption tunes one Call.
type CallOption func(*callOptions)

type callOptions struct {
	budget            time.Duration
	unreachableBudget time.Duration
	attemptTimeout    time.Duration
	waitTimeout       time.Duration
	retryTimeouts     bool
	positions         []streams.Name
	positionsSet      bool
	query             url.Values
}

// WithBudget bounds the whole call, retries included (DefaultBudget).
// Raise it for calls that legitimately run long, such as remote joins.
func WithBudget(d time.Duration) CallOption { return func(o *callOptions) { o.budget = d } }

// WithUnreachableBudget bounds how long the call retries a target it
// cannot connect to (DefaultUnreachableBudget); it never extends past the
// budget. Raise it where waiting for a restarting process is better than
// failing, such as start-up.
func WithUnreachableBudget(d time.Duration) CallOption {
	return func(o *callOptions) { o.unreachableBudget = d }
}

// WithAttemptTimeout bounds each attempt (DefaultAttemptTimeout); it never
// extends past the budget.
func WithAttemptTimeout(d time.Duration) CallOption {
	return func(o *callOptions) { o.attemptTimeout = d }
}

// WithoutTimeoutRetry stops retries after failures that may have happened
// once the server had the request (timeouts, reset connections). Use it
// for endpoints that are neither Idempotent nor safe to run twice, where
// Synapse sets RETRY_ON_TIMEOUT = False. Connection failures are still
// retried: those requests never arrived.
func WithoutTimeoutRetry() CallOption { return func(o *callOptions) { o.retryTimeouts = false } }

// WithStreamPositions sends this process's own positions on the named
// streams, so an endpoint with WaitForStreams handles the call only after
// its instance has seen those writes. Without this option such endpoints
// get the positions of every stream this process writes, as in Synapse;
// with it, exactly the named ones (none if called with no names).
func WithStreamPositions(names ...streams.Name) CallOption {
	return func(o *callOptions) { o.positions, o.positionsSet = names, true }
}

// WithQuery sets query parameters, the way GET endpoints take arguments.
func WithQuery(q url.Values) CallOption { return func(o *callOptions) { o.query = q } }

// WithWaitTimeout bounds each wait for the positions a response reports
// (DefaultWaitTimeout); past it Call returns anyway and logs.
func WithWaitTimeout(d time.Duration) CallOption { return func(o *callOptions) { o.waitTimeout = d } }

// Call runs endpoint e on instance with the given path args and body (any
// value encoding as a JSON object; nil for GET) and decodes the result into
// out (nil to discard).
//
// 502/503/504 answers and broken connections are retried with jittered
// exponential backoff until ctx ends or the budget is spent; a target that
// refuses connections only for the (much shorter) unreachable budget, and
// for one attempt while it is presumed down after such a failure. The
// error then is an *mxhttp.Error with status 503, M_UNKNOWN and
// Retry-After, wrapping ErrUnavailable and the last failure: a client
// retries it later, as it would a rate limit. A Matrix error from the handler is returned as an *mxhttp.Error
// with the remote status, errcode and message. When the response reports
// stream positions, Call returns once this process has seen them.
func (c *Client) Call(ctx context.Context, instance string, e Endpoint, args map[string]string, body any, out any,
	opts ...CallOption) error {
	start := time.Now()
	var span trace.Span
	if c.tracer.Enabled() {
		ctx, span = c.tracer.Start(ctx, "replication "+e.Name, trace.SpanKindClient,
			attribute.String("replication.endpoint", e.Name), attribute.String("replication.target", canonicalInstance(instance)))
	}
	err := c.call(ctx, instance, e, args, body, out, opts...)
	c.calls.observe(e.Name, instance, time.Since(start), err)
	if span != nil {
		if err != nil {
			span.SetStatus(codes.Error, err.Error())
		}
		span.End()
	}
	return err
}

func (c *Client) call(ctx context.Context, instance string, e Endpoint, args map[string]string, body any, out any,
	opts ...CallOption) error {
	o := callOptions{budget: DefaultBudget, unreachableBudget: DefaultUnreachableBudget, attemptTimeout: DefaultAttemptTimeout,
		waitTimeout: DefaultWaitTimeout, retryTimeouts: true}
	for _, f := range opts {
		f(&o)
	}
	if err := e.validate(); err != nil {
		return err
	}
	target := canonicalInstance(instance)
	if target == c.self {
		return fmt.Errorf("call %s on %s: %w", e.Name, target, ErrSelfCall)
	}
	rm, err := c.remote(target)
	if err != nil {
		return fmt.Errorf("call %s: %w", e.Name, err)
	}
	var txn string
	if e.Idempotent {
		// Once per Call, reused by every retry: that is what lets the
		// server recognise a retry and replay its first answer.
		txn = rand.Text()
	}
	path, err := e.path(args, txn)
	if err != nil {
		return err
	}
	u := rm.base + path
	if len(o.query) > 0 {
		u += "?" + o.query.Encode()
	}
	if _, err := url.Parse(u); err != nil {
		return fmt.Errorf("call %s on %s: bad url: %w", e.Name, target, err)
	}
	payload, err := c.payload(&e, body, &o)
	if err != nil {
		return fmt.Errorf("call %s on %s: %w", e.Name, target, err)
	}

	start := time.Now()
	deadline := start.Add(o.budget)
	// unreachableSince is when the current run of failures to connect
	// began (zero while the target answers or the connection merely broke).
	var unreachableSince time.Time
	unreachableBudget := min(o.unreachableBudget, o.budget)
	if rm.presumedDown(start) {
		unreachableBudget = 0 // one attempt: it is very likely still down
	}
	delay := backoffBase
	var last error
	for attempt := 1; ; attempt++ {
		status, respBody, err := c.attempt(ctx, rm, e.method(), u, payload, deadline, o.attemptTimeout)
		retry := false
		switch {
		case err != nil && ctx.Err() != nil:
			return unavailable(e.Name, target, attempt, fmt.Errorf("%w (last failure: %w)", ctx.Err(), err))
		case err != nil:
			kind := classify(err)
			retry = kind == notSent || (kind == maybeSent && o.retryTimeouts)
			last = err
			if kind == notSent {
				if unreachableSince.IsZero() {
					unreachableSince = time.Now()
				}
				if time.Since(unreachableSince) >= unreachableBudget {
					rm.downAt.Store(time.Now().UnixNano())
					return unavailable(e.Name, target, attempt, fmt.Errorf("unreachable for %v: %w",
						time.Since(unreachableSince).Round(time.Millisecond), err))
				}
			} else {
				unreachableSince = time.Time{}
			}
		case status >= 200 && status < 300:
			rm.downAt.Store(0)
			return c.finish(ctx, &e, target, respBody, out, o.waitTimeout)
		case status == http.StatusBadGateway || status == http.StatusServiceUnavailable || status == http.StatusGatewayTimeout:
			rm.downAt.Store(0)
			unreachableSince = time.Time{}
			retry = true
			last = remoteFailure(status, respBody)
		default:
			rm.downAt.Store(0)
			if me := remoteError(status, respBody, e.Name, target); me != nil {
				return me
			}
			// Not a Matrix answer: something other than our server (a
			// proxy, a listener without the replication resource) replied.
			return unavailable(e.Name, target, attempt, remoteFailure(status, respBody))
		}
		if !retry {
			return unavailable(e.Name, target, attempt, last)
		}
		// Equal jitter: at least half the delay, so a fleet of callers
		// spreads out without any of them hammering.
		wait := delay/2 + mrand.N(delay/2+1)
		delay = min(2*delay, backoffCap)
		if time.Now().Add(wait).After(deadline) {
			return unavailable(e.Name, target, attempt, fmt.Errorf("retry budget %v spent: %w", o.budget, last))
		}
		if !unreachableSince.IsZero() && time.Since(unreachableSince)+wait > unreachableBudget {
			// Sleeping would only end past the unreachable budget: one last
			// attempt right away, then give up.
			wait = max(unreachableBudget-time.Since(unreachableSince), 0)
		}
		lvl := slog.LevelDebug
		if attempt == 1 {
			lvl = slog.LevelWarn // once per call, so an outage is visible without flooding
		}
		c.log.Log(ctx, lvl, "retrying replication call", "endpoint", e.Name, "instance", target,
			"attempt", attempt, "wait", wait, "err", last)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return unavailable(e.Name, target, attempt, fmt.Errorf("%w (last failure: %w)", ctx.Err(), last))
		case <-t.C:
		}
	}
}

// CloseIdleConnections closes pooled connections to every instance, for
// shutdown.
func (c *Client) CloseIdleConnections() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, r := range c.remotes {
		r.tr.CloseIdleConnections()
	}
}

func (c *Client) remote(target string) (*remote, error) {
	loc, ok := c.instances(target)
	if !ok && target == config.MainInstance {
		loc, ok = c.instances("master")
	}
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrUnknownInstance, target)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if r := c.remotes[target]; r != nil {
		if r.loc == loc {
			return r, nil
		}
		r.tr.CloseIdleConnections() // instance_map changed under us (reload)
	}
	r := newRemote(loc)
	c.remotes[target] = r
	return r, nil
}

func newRemote(loc config.InstanceLocation) *remote {
	network, addr := loc.Network()
	dialer := &net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}
	tr := &http.Transport{
		// Internal traffic must never go through HTTP(S)_PROXY.
		Proxy: nil,
		// The location, not the URL, says where to connect: that is how a
		// Unix socket is reached with an http:// URL.
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return dialer.DialContext(ctx, network, addr)
		},
		TLSHandshakeTimeout: 10 * time.Second,
		// Workers fan many concurrent calls into main; the default of 2
		// idle connections per host would churn connections.
		MaxIdleConnsPerHost:   32,
		IdleConnTimeout:       90 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
	host := addr
	if network == "unix" {
		host = "localhost"
	}
	// No http.Client.Timeout: each attempt has a context deadline instead.
	return &remote{loc: loc, base: loc.Scheme() + "://" + host, tr: tr, hc: &http.Client{Transport: tr}}
}

// payload encodes the request body, adding this process's positions.
func (c *Client) payload(e *Endpoint, body any, o *callOptions) ([]byte, error) {
	if e.method() == http.MethodGet {
		if body != nil {
			return nil, errors.New("GET endpoints take no body; use WithQuery")
		}
		if len(o.positions) > 0 {
			return nil, errors.New("GET endpoints cannot carry stream positions")
		}
		return nil, nil
	}
	b := []byte("{}")
	if body != nil {
		var err error
		if b, err = json.Marshal(body); err != nil {
			return nil, fmt.Errorf("encode body: %w", err)
		}
		if bytes.Equal(b, []byte("null")) {
			b = []byte("{}")
		}
		if b[0] != '{' {
			return nil, errors.New("body must encode as a JSON object")
		}
	}
	names := o.positions
	if !o.positionsSet && e.WaitForStreams && c.reg != nil {
		for _, d := range c.reg.Defs() {
			if c.reg.IsWriter(d.Name) && c.reg.WriterPosition(d.Name, c.self) > 0 {
				names = append(names, d.Name)
			}
		}
	}
	if len(names) == 0 {
		return b, nil
	}
	pos := make(StreamPositions, len(names))
	for _, n := range names {
		if !c.known[n] {
			return nil, fmt.Errorf("position of unknown stream %q", n)
		}
		pos[n] = c.reg.WriterPosition(n, c.self)
	}
	return addPositions(b, wirePositions{InstanceName: c.self, Streams: pos})
}

// attempt sends one request and reads the whole answer.
func (c *Client) attempt(ctx context.Context, rm *remote, method, u string, payload []byte, deadline time.Time,
	timeout time.Duration) (int, []byte, error) {
	d := time.Now().Add(timeout)
	if deadline.Before(d) {
		d = deadline
	}
	actx, cancel := context.WithDeadline(ctx, d)
	defer cancel()
	var rd io.Reader
	if payload != nil {
		rd = bytes.NewReader(payload)
	}
	req, err := http.NewRequestWithContext(actx, method, u, rd)
	if err != nil {
		return 0, nil, fmt.Errorf("build request: %w", err)
	}
	if payload != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.secret != "" {
		req.Header.Set("Authorization", "Bearer "+c.secret)
	}
	req.Header.Set(callerHeader, c.self)
	if c.tracer.Enabled() {
		c.tracer.Inject(ctx, req.Header)
	}
	resp, err := rm.hc.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBody+1))
	if err != nil {
		return 0, nil, fmt.Errorf("read response: %w", err)
	}
	if len(b) > maxResponseBody {
		return 0, nil, fmt.Errorf("response larger than %d bytes", maxResponseBody)
	}
	return resp.StatusCode, b, nil
}

// finish decodes a successful response and waits for the positions it
// reports.
func (c *Client) finish(ctx context.Context, e *Endpoint, target string, body []byte, out any,
	waitTimeout time.Duration) error {
	rest, pos, err := splitPositions(body)
	if err != nil {
		return fmt.Errorf("call %s on %s: %w", e.Name, target, err)
	}
	if out != nil {
		if err := json.Unmarshal(rest, out); err != nil {
			return fmt.Errorf("call %s on %s: decode response: %w", e.Name, target, err)
		}
	}
	if pos != nil {
		c.waitForRemote(ctx, e, target, pos, waitTimeout)
	}
	return nil
}

// waitForRemote blocks until this process has seen the remote writer reach
// the reported positions, so a read served here after the call sees what
// the call wrote. The call itself already succeeded, so a timeout or a
// cancelled context only ends the wait.
func (c *Client) waitForRemote(ctx context.Context, e *Endpoint, target string, pos *wirePositions,
	timeout time.Duration) {
	writer := canonicalInstance(pos.InstanceName)
	if writer == "" {
		writer = target
	}
	for name, p := range pos.Streams {
		if c.reg == nil || !c.known[name] {
			c.log.Warn("response carries position of unknown stream", "endpoint", e.Name, "stream", name,
				"instance", writer)
			continue
		}
		wctx, cancel := context.WithTimeout(ctx, timeout)
		// The writer told us itself: read its rows from the source now
		// rather than wait for the Redis doorbell, which may be down.
		if err := c.reg.CatchUp(wctx, name, writer, p); err != nil {
			c.log.Warn("catch-up to a remote writer's reported position failed", "endpoint", e.Name,
				"stream", name, "instance", writer, "position", p, "err", err)
		}
		err := c.reg.WaitForWriter(wctx, name, writer, p)
		cancel()
		if err == nil {
			continue
		}
		if ctx.Err() != nil {
			return
		}
		c.log.Warn("remote stream position not seen in time, returning anyway", "endpoint", e.Name,
			"stream", name, "instance", writer, "position", p, "seen", c.reg.WriterPosition(name, writer),
			"waited", timeout)
	}
}

type failureKind int

const (
	notRetryable failureKind = iota
	// notSent: the request never reached the server, so retrying is safe
	// for any endpoint.
	notSent
	// maybeSent: the server may have handled the request (timeout, reset).
	maybeSent
)

func classify(err error) failureKind {
	var dnsErr *net.DNSError
	var opErr *net.OpError
	var netErr net.Error
	switch {
	case errors.As(err, &dnsErr),
		errors.As(err, &opErr) && opErr.Op == "dial",
		errors.Is(err, syscall.ECONNREFUSED):
		return notSent
	case errors.Is(err, context.DeadlineExceeded),
		errors.As(err, &netErr) && netErr.Timeout(),
		errors.Is(err, syscall.ECONNRESET),
		errors.Is(err, syscall.EPIPE),
		errors.Is(err, io.EOF),
		errors.Is(err, io.ErrUnexpectedEOF):
		return maybeSent
	}
	return notRetryable
}

// remoteError rebuilds the Matrix error a remote handler sent, or returns
// nil when the body is not one.
func remoteError(status int, body []byte, name, target string) *mxhttp.Error {
	var m map[string]any
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	if dec.Decode(&m) != nil {
		return nil
	}
	code, _ := m["errcode"].(string)
	if code == "" {
		return nil
	}
	msg, _ := m["error"].(string)
	var extra map[string]any
	for k, v := range m {
		if k == "errcode" || k == "error" {
			continue
		}
		if n, ok := v.(json.Number); ok {
			// mxhttp expects integers as int64 (retry_after_ms drives the
			// Retry-After header).
			if i, err := n.Int64(); err == nil {
				v = i
			} else if f, err := n.Float64(); err == nil {
				v = f
			}
		}
		if extra == nil {
			extra = map[string]any{}
		}
		extra[k] = v
	}
	return &mxhttp.Error{Status: status, Code: code, Message: msg, Extra: extra,
		Cause: fmt.Errorf("replication call %s on %s", name, target)}
}

// remoteFailure describes a non-success answer that is not returned as is.
func remoteFailure(status int, body []byte) error {
	if me := remoteError(status, body, "", ""); me != nil {
		return fmt.Errorf("remote answered %d %s: %s", status, me.Code, me.Message)
	}
	const show = 200
	if len(body) > show {
		body = body[:show]
	}
	return fmt.Errorf("remote answered %d: %q", status, body)
}

// unavailable is the error of a call that could not be completed: 503
// M_UNKNOWN with Retry-After, so the client retries rather than giving up.
func unavailable(name, target string, attempts int, cause error) error {
	return &mxhttp.Error{Status: http.StatusServiceUnavailable, Code: "M_UNKNOWN",
		Message:    "The server handling this request is temporarily unavailable; try again later",
		RetryAfter: UnavailableRetryAfter,
		Cause:      fmt.Errorf("%w: call %s on %s, %d attempt(s): %w", ErrUnavailable, name, target, attempts, cause)}
}
