package replication

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"

	"ganglion/internal/mxhttp"
	"ganglion/internal/streams"
)

const (
	// DefaultMaxBody bounds request bodies. Batches of events with their
	// serialized contexts are the largest thing sent; 10 MiB is far above
	// that and still stops a runaway caller from making us buffer anything.
	DefaultMaxBody = 10 << 20
	// DefaultWaitTimeout bounds each wait for a stream position (Synapse's
	// 5 s). Past it the call proceeds: a lagging replication stream should
	// make a read stale, not fail the request.
	DefaultWaitTimeout = 5 * time.Second
	// DefaultCacheTTL is how long an idempotent response is replayed
	// (Synapse's 30 minutes), comfortably longer than any retry budget.
	DefaultCacheTTL = 30 * time.Minute
	// DefaultCacheEntries caps the replay cache so a burst of calls cannot
	// grow it without bound; the oldest responses go first.
	DefaultCacheEntries = 10000
)

// Server serves registered endpoints under PathPrefix. It is an
// http.Handler; mount it on replication listeners only.
type Server struct {
	secret      string
	reg         *streams.Registry
	log         *slog.Logger
	known       map[streams.Name]bool
	maxBody     int64
	waitTimeout time.Duration
	cache       *responseCache
	handler     http.Handler

	mu        sync.RWMutex
	endpoints map[string]*Endpoint
}

// ServerOption tunes a Server; the defaults suit production.
type ServerOption func(*Server)

// ServerMaxBody sets the request body limit (DefaultMaxBody).
func ServerMaxBody(n int64) ServerOption { return func(s *Server) { s.maxBody = n } }

// ServerWaitTimeout sets the bound on each wait for a caller's stream
// position (DefaultWaitTimeout).
func ServerWaitTimeout(d time.Duration) ServerOption { return func(s *Server) { s.waitTimeout = d } }

// ServerCacheLimits sets how long and how many idempotent responses are
// kept (DefaultCacheTTL, DefaultCacheEntries).
func ServerCacheLimits(ttl time.Duration, maxEntries int) ServerOption {
	return func(s *Server) { s.cache = newResponseCache(ttl, maxEntries, time.Now) }
}

// NewServer builds a server. With a secret, every request must carry
// "Authorization: Bearer <secret>"; with none, requests are not
// authenticated, which config validation allows only on loopback
// listeners. reg is this process's stream registry: it names the instance
// in response positions and is waited on for callers' positions.
func NewServer(secret string, reg *streams.Registry, log *slog.Logger, opts ...ServerOption) *Server {
	s := &Server{
		secret:      secret,
		reg:         reg,
		log:         log,
		known:       map[streams.Name]bool{},
		maxBody:     DefaultMaxBody,
		waitTimeout: DefaultWaitTimeout,
		cache:       newResponseCache(DefaultCacheTTL, DefaultCacheEntries, time.Now),
		endpoints:   map[string]*Endpoint{},
	}
	for _, o := range opts {
		o(s)
	}
	if reg != nil {
		for _, d := range reg.Defs() {
			s.known[d.Name] = true
		}
	}
	// mxhttp supplies request ids, logging, panic recovery and Matrix
	// error encoding for everything outside the handler run itself.
	s.handler = mxhttp.NewServer(log).Handle(s.serve)
	return s
}

// Register adds an endpoint. A malformed or duplicate endpoint is a
// programming error and panics, as http.ServeMux does.
func (s *Server) Register(e Endpoint) {
	if err := e.validate(); err != nil {
		panic(err)
	}
	if e.Handle == nil {
		panic(fmt.Sprintf("replication endpoint %s: nil Handle", e.Name))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, dup := s.endpoints[e.Name]; dup {
		panic(fmt.Sprintf("replication endpoint %s registered twice", e.Name))
	}
	s.endpoints[e.Name] = &e
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.handler.ServeHTTP(w, r) }

func (s *Server) serve(w http.ResponseWriter, r *http.Request) error {
	// Authenticate before routing so an unauthenticated caller learns
	// nothing about which endpoints exist.
	if err := s.authenticate(r); err != nil {
		return err
	}
	e, args, txn, err := s.route(r)
	if err != nil {
		if e != nil {
			w.Header().Set("Allow", e.method())
		}
		return err
	}
	req := &Request{Args: args, Query: r.URL.Query(), Caller: canonicalInstance(r.Header.Get(callerHeader))}
	var pos *wirePositions
	if r.Method != http.MethodGet {
		raw, err := mxhttp.ReadBody(r, s.maxBody)
		if err != nil {
			return err
		}
		raw = bytes.TrimSpace(raw)
		if len(raw) == 0 {
			raw = []byte("{}")
		}
		if !json.Valid(raw) || raw[0] != '{' {
			return mxhttp.NotJSON("Content not a JSON object")
		}
		if req.Body, pos, err = splitPositions(raw); err != nil {
			return mxhttp.BadJSON("%v", err)
		}
		if req.Caller == "" && pos != nil {
			req.Caller = canonicalInstance(pos.InstanceName)
		}
	}

	var resp response
	if e.Idempotent {
		entry, owner := s.cache.claim(cacheKey{name: e.Name, txn: txn})
		if owner {
			// Detached from this request's cancellation: when the caller
			// times out and retries, the retry must find this run finishing
			// rather than work abandoned halfway and started again.
			resp = s.run(context.WithoutCancel(r.Context()), e, req, pos)
			s.cache.complete(entry, resp, resp.status == http.StatusOK)
		} else {
			select {
			case <-entry.ready:
				resp = entry.resp
			case <-r.Context().Done():
				return &mxhttp.Error{Status: http.StatusServiceUnavailable, Code: "M_UNKNOWN", Message: "Request cancelled",
					Cause: fmt.Errorf("wait for in-flight %s txn %s: %w", e.Name, txn, r.Context().Err())}
			}
		}
	} else {
		resp = s.run(r.Context(), e, req, pos)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(resp.body)))
	w.WriteHeader(resp.status)
	_, _ = w.Write(resp.body)
	return nil
}

// authenticate checks the shared secret. Exactly one Authorization header
// is accepted, as Synapse does, so a proxy cannot prepend its own.
func (s *Server) authenticate(r *http.Request) error {
	if s.secret == "" {
		return nil
	}
	vals := r.Header.Values("Authorization")
	switch {
	case len(vals) == 0:
		return mxhttp.MissingToken()
	case len(vals) > 1:
		return mxhttp.Forbidden("Exactly one Authorization header is allowed")
	}
	scheme, token, ok := strings.Cut(vals[0], " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || !ConstantTimeEqual(token, s.secret) {
		return mxhttp.Forbidden("Invalid replication secret")
	}
	return nil
}

// route finds the endpoint and decodes the path. It works on the escaped
// path because an argument may contain an escaped '/'. The endpoint is
// returned with a method mismatch so the caller can set Allow.
func (s *Server) route(r *http.Request) (*Endpoint, map[string]string, string, error) {
	rest, ok := strings.CutPrefix(r.URL.EscapedPath(), PathPrefix)
	if !ok {
		return nil, nil, "", mxhttp.Unrecognized(http.StatusNotFound, "Unrecognized request: %s %s", r.Method, r.URL.Path)
	}
	segs := strings.Split(rest, "/")
	s.mu.RLock()
	e := s.endpoints[segs[0]] // names are plain segments, equal to their escaped form
	s.mu.RUnlock()
	if e == nil || len(segs) != e.segments() {
		return nil, nil, "", mxhttp.Unrecognized(http.StatusNotFound, "Unrecognized request: %s %s", r.Method, r.URL.Path)
	}
	if r.Method != e.method() {
		return e, nil, "", mxhttp.Unrecognized(http.StatusMethodNotAllowed, "Method %s not allowed on %s", r.Method, r.URL.Path)
	}
	args := make(map[string]string, len(e.PathArgs))
	for i, name := range e.PathArgs {
		v, err := url.PathUnescape(segs[1+i])
		if err != nil || v == "" {
			return nil, nil, "", mxhttp.Unrecognized(http.StatusNotFound, "Bad path argument %s in %s", name, r.URL.Path)
		}
		args[name] = v
	}
	var txn string
	if e.Idempotent {
		if txn = segs[len(segs)-1]; txn == "" {
			return nil, nil, "", mxhttp.Unrecognized(http.StatusNotFound, "Missing transaction id in %s", r.URL.Path)
		}
	}
	return e, args, txn, nil
}

// run waits for the caller's positions, calls the handler and encodes the
// outcome. It never panics and always returns a response, because for
// idempotent calls other requests are waiting on it.
func (s *Server) run(ctx context.Context, e *Endpoint, req *Request, pos *wirePositions) (resp response) {
	defer func() {
		if p := recover(); p != nil {
			s.log.Error("panic in replication handler", "endpoint", e.Name, "caller", req.Caller,
				"panic", fmt.Sprint(p), "stack", string(debug.Stack()))
			resp = errorResponse(mxhttp.Internal(fmt.Errorf("panic: %v", p)))
		}
	}()
	if e.WaitForStreams && pos != nil {
		if err := s.waitForCaller(ctx, e, pos); err != nil {
			return s.fail(e, req, err)
		}
	}
	result, err := e.Handle(ctx, req)
	if err != nil {
		return s.fail(e, req, err)
	}
	body, err := s.encode(result)
	if err != nil {
		return s.fail(e, req, fmt.Errorf("encode %s response: %w", e.Name, err))
	}
	return response{status: http.StatusOK, body: body}
}

// waitForCaller blocks until this process has seen the caller's writes
// reach the positions it sent, each bounded by waitTimeout. A timeout is
// logged and the call proceeds; only the request ending aborts it.
func (s *Server) waitForCaller(ctx context.Context, e *Endpoint, pos *wirePositions) error {
	writer := canonicalInstance(pos.InstanceName)
	for name, p := range pos.Streams {
		if s.reg == nil || !s.known[name] {
			// A newer caller may know streams we do not; waiting is an
			// optimisation for freshness, not a correctness requirement.
			s.log.Warn("caller sent position of unknown stream", "endpoint", e.Name, "stream", name, "instance", writer)
			continue
		}
		wctx, cancel := context.WithTimeout(ctx, s.waitTimeout)
		// The caller is the writer and is authenticated: catch up from the
		// source now instead of waiting for the Redis doorbell.
		if err := s.reg.CatchUp(wctx, name, writer, p); err != nil && ctx.Err() == nil {
			s.log.Warn("catch-up to the caller's position failed", "endpoint", e.Name,
				"stream", name, "instance", writer, "position", p, "err", err)
		}
		err := s.reg.WaitForWriter(wctx, name, writer, p)
		cancel()
		if err == nil {
			continue
		}
		if ctx.Err() != nil {
			return &mxhttp.Error{Status: http.StatusServiceUnavailable, Code: "M_UNKNOWN", Message: "Request cancelled",
				Cause: fmt.Errorf("%s: %w", e.Name, err)}
		}
		s.log.Warn("caller's stream position not reached in time, handling anyway", "endpoint", e.Name,
			"stream", name, "instance", writer, "position", p, "seen", s.reg.WriterPosition(name, writer),
			"waited", s.waitTimeout)
	}
	return nil
}

// encode renders the handler's result, adding this server's positions
// when the handler reported any.
func (s *Server) encode(result any) ([]byte, error) {
	var pos StreamPositions
	if p, ok := result.(positioned); ok {
		result, pos = p.result, p.pos
	}
	body := []byte("{}")
	if result != nil {
		b, err := json.Marshal(result)
		if err != nil {
			return nil, err
		}
		if !bytes.Equal(b, []byte("null")) {
			body = b
		}
	}
	if len(pos) == 0 {
		return body, nil
	}
	if s.reg == nil {
		return nil, errors.New("stream positions returned but the server has no registry")
	}
	return addPositions(body, wirePositions{InstanceName: s.reg.Instance(), Streams: pos})
}

// fail turns a handler error into a response, logging what the caller will
// not see: 5xx causes at error level, refusals at debug.
func (s *Server) fail(e *Endpoint, req *Request, err error) response {
	var me *mxhttp.Error
	if !errors.As(err, &me) {
		me = mxhttp.Internal(err)
	}
	if me.Status >= 500 {
		s.log.Error("replication call failed", "endpoint", e.Name, "caller", req.Caller, "status", me.Status, "err", err)
	} else {
		s.log.Debug("replication call refused", "endpoint", e.Name, "caller", req.Caller, "status", me.Status,
			"errcode", me.Code, "err", err)
	}
	return errorResponse(me)
}

func errorResponse(me *mxhttp.Error) response {
	body, err := json.Marshal(me.Body())
	if err != nil {
		return response{status: http.StatusInternalServerError,
			body: []byte(`{"errcode":"M_UNKNOWN","error":"Internal server error"}`)}
	}
	return response{status: me.Status, body: body}
}
