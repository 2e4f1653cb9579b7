// Package client is Ganglion's outbound federation HTTP client: it
// resolves server names as the spec's "Resolving server names" says
// (.well-known delegation with caching, SRV records, IP literals, explicit
// ports), connects only to addresses the IP range blacklist allows, checks
// certificates against the name the spec names, keeps to
// federation_domain_whitelist, and signs requests with X-Matrix.
package client

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"ganglion/internal/canonicaljson"
	"ganglion/internal/config"
	"ganglion/internal/events"
	"ganglion/internal/federation/servername"
	"ganglion/internal/federation/xmatrix"
	"ganglion/internal/version"
)

// Defaults of Options.
const (
	DefaultRequestTimeout   = 60 * time.Second
	DefaultConnectTimeout   = 10 * time.Second
	DefaultMaxResponseBytes = 10 << 20
)

// Options configure a Client.
type Options struct {
	// ServerName and Key are ours: requests are signed as ServerName.
	ServerName string
	Key        events.SigningKey
	// DNS resolves names; nil means net.DefaultResolver.
	DNS DNS
	// IPFilter is the IP range blacklist and its exceptions. The zero
	// filter blocks only the unspecified addresses: callers set Synapse's
	// defaults (NewFromConfig does).
	IPFilter IPFilter
	// DomainWhitelist is federation_domain_whitelist: when non-nil only
	// these servers are contacted.
	DomainWhitelist map[string]bool
	// InsecureSkipVerify is federation_verify_certificates: false.
	InsecureSkipVerify bool
	// RootCAs is federation_custom_ca_list; nil means the system roots.
	RootCAs *x509.CertPool
	// RequestTimeout bounds a request from the first dial to the end of
	// its response body, unless the Request sets its own.
	RequestTimeout time.Duration
	// ConnectTimeout bounds one TCP connection attempt.
	ConnectTimeout time.Duration
	// MaxResponseBytes bounds a response body, unless the Request sets
	// its own.
	MaxResponseBytes int64
	// WellKnownPort is the port of .well-known fetches: 443 (the spec's),
	// or a test server's.
	WellKnownPort int
	// Now is the clock for the .well-known cache; nil means time.Now.
	Now func() time.Time
	Log *slog.Logger
	// Via, when set, sends every request through another process instead
	// of connecting to the destination from this one
	// (outbound_federation_restricted_to): the request is built and
	// signed here, and the proxy resolves, dials (with its own IP filter)
	// and returns the answer.
	Via Proxy
}

// Proxy carries a request built and signed by one process to another,
// which sends it (Client.Forward) and returns the destination's answer.
type Proxy interface {
	Forward(ctx context.Context, req ProxiedRequest) (*ProxiedResponse, error)
}

// ProxiedRequest is a federation request ready to send: the body as
// signed and the Authorization header ("" for unsigned requests).
type ProxiedRequest struct {
	Method           string `json:"method"`
	Destination      string `json:"destination"`
	Path             string `json:"path"`
	Body             []byte `json:"body,omitempty"`
	Authorization    string `json:"authorization,omitempty"`
	TimeoutMS        int64  `json:"timeout_ms"`
	MaxResponseBytes int64  `json:"max_response_bytes"`
}

// ProxiedResponse is the destination's answer to a ProxiedRequest.
type ProxiedResponse struct {
	Status int    `json:"status"`
	Body   []byte `json:"body"`
}

// Client sends federation requests. It is safe for concurrent use and
// keeps connections per destination.
type Client struct {
	serverName    string
	key           events.SigningKey
	whitelist     map[string]bool
	resolver      *Resolver
	dialer        *dialer
	tlsBase       *tls.Config
	http          *http.Client
	wellKnownHTTP *http.Client
	httpsPort     int
	timeout       time.Duration
	maxResponse   int64
	userAgent     string
	via           Proxy
	now           func() time.Time
	log           *slog.Logger
}

// New builds a Client.
func New(o Options) (*Client, error) {
	if _, err := servername.Parse(o.ServerName); err != nil {
		return nil, fmt.Errorf("federation client: %w", err)
	}
	c := &Client{
		serverName: o.ServerName, key: o.Key, whitelist: o.DomainWhitelist,
		httpsPort: o.WellKnownPort, timeout: o.RequestTimeout, maxResponse: o.MaxResponseBytes,
		userAgent: version.UserAgent(), now: o.Now, log: o.Log, via: o.Via,
	}
	if c.httpsPort == 0 {
		c.httpsPort = 443
	}
	if c.timeout <= 0 {
		c.timeout = DefaultRequestTimeout
	}
	if c.maxResponse <= 0 {
		c.maxResponse = DefaultMaxResponseBytes
	}
	if c.now == nil {
		c.now = time.Now
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	dns := o.DNS
	if dns == nil {
		dns = net.DefaultResolver
	}
	connectTimeout := o.ConnectTimeout
	if connectTimeout <= 0 {
		connectTimeout = DefaultConnectTimeout
	}
	c.dialer = newDialer(dns, o.IPFilter, connectTimeout)
	c.tlsBase = &tls.Config{RootCAs: o.RootCAs, InsecureSkipVerify: o.InsecureSkipVerify, MinVersion: tls.VersionTLS12}

	c.http = &http.Client{
		Transport: &http.Transport{
			// Never through a proxy: it would connect on our behalf,
			// past the IP filter.
			Proxy:          nil,
			DialTLSContext: c.dialTLS,
			DialContext: func(context.Context, string, string) (net.Conn, error) {
				return nil, errors.New("federation requests are only made over TLS")
			},
			MaxIdleConnsPerHost:    4,
			IdleConnTimeout:        90 * time.Second,
			MaxResponseHeaderBytes: 64 << 10,
		},
		// A federation endpoint does not redirect; following one would
		// send a signed request somewhere it was not signed for.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	c.wellKnownHTTP = newWellKnownHTTP(&http.Transport{
		Proxy:                  nil,
		DialContext:            c.dialer.DialContext,
		TLSClientConfig:        c.tlsBase.Clone(),
		TLSHandshakeTimeout:    wellKnownTimeout,
		MaxIdleConnsPerHost:    1,
		IdleConnTimeout:        30 * time.Second,
		MaxResponseHeaderBytes: 64 << 10,
	})
	wk := &wellKnownCache{now: c.now, log: c.log}
	wk.fetch = c.fetchWellKnown
	c.resolver = newResolver(dns, wk, c.log)
	return c, nil
}

// Option adjusts what NewFromConfig builds beyond the config.
type Option func(*Options)

// WithVia sends every request through a proxy (Options.Via).
func WithVia(p Proxy) Option { return func(o *Options) { o.Via = p } }

// NewFromConfig builds the Client of a process from its config.
func NewFromConfig(cfg *config.Config, key events.SigningKey, log *slog.Logger, opts ...Option) (*Client, error) {
	block, allow := cfg.FederationIPRanges()
	o := Options{
		ServerName:         cfg.ServerName,
		Key:                key,
		IPFilter:           IPFilter{Block: block, Allow: allow},
		DomainWhitelist:    cfg.FederationDomains(),
		InsecureSkipVerify: !cfg.FederationVerifiesCertificates(),
		RootCAs:            cfg.FederationCAPool(),
		Log:                log,
	}
	for _, opt := range opts {
		opt(&o)
	}
	return New(o)
}

// CloseIdleConnections closes the kept-alive connections (at shutdown).
func (c *Client) CloseIdleConnections() {
	c.http.CloseIdleConnections()
	c.wellKnownHTTP.CloseIdleConnections()
}

// Resolver resolves server names with the client's DNS and .well-known
// cache.
func (c *Client) Resolver() *Resolver { return c.resolver }

// ErrNotWhitelisted means the destination is not in
// federation_domain_whitelist.
var ErrNotWhitelisted = errors.New("destination not in federation_domain_whitelist")

// ErrResponseTooLarge means a response body passed the size limit.
var ErrResponseTooLarge = errors.New("federation response too large")

// HTTPError is a non-2xx answer from the remote server.
type HTTPError struct {
	Destination string
	Status      int
	// Errcode and Message are the Matrix error body's, when it had one.
	Errcode string
	Message string
}

func (e *HTTPError) Error() string {
	if e.Errcode != "" {
		return fmt.Sprintf("%s answered %d %s: %s", e.Destination, e.Status, e.Errcode, e.Message)
	}
	return fmt.Sprintf("%s answered %d", e.Destination, e.Status)
}

// Request is one federation request.
type Request struct {
	Method      string
	Destination string
	// Path is the request URI: path and query, escaped as it is to be
	// sent (and signed), starting with /_matrix/.
	Path string
	// Body is encoded as JSON when non-nil (json.RawMessage is sent as
	// given, canonicalised).
	Body any
	// Out receives the JSON response when non-nil.
	Out any
	// Unsigned sends no Authorization header (the key endpoints).
	Unsigned bool
	// Timeout and MaxResponseBytes override the client's when positive.
	Timeout          time.Duration
	MaxResponseBytes int64
}

type resolvedKey struct{}

// Do sends req and decodes a 2xx response into req.Out; any other status
// is an *HTTPError.
func (c *Client) Do(ctx context.Context, req Request) error {
	if err := c.do(ctx, req); err != nil {
		return fmt.Errorf("federation %s %s%s: %w", req.Method, req.Destination, pathOnly(req.Path), err)
	}
	return nil
}

func (c *Client) do(ctx context.Context, req Request) error {
	if err := c.checkRequest(req.Destination, req.Path); err != nil {
		return err
	}
	timeout := c.timeout
	if req.Timeout > 0 {
		timeout = req.Timeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	var body []byte
	if req.Body != nil {
		raw, err := json.Marshal(req.Body)
		if err != nil {
			return fmt.Errorf("encode body: %w", err)
		}
		// Lenient: a body may carry events of old room versions with
		// numbers strict canonical JSON refuses.
		if body, err = canonicaljson.Canonicalize(raw, false); err != nil {
			return fmt.Errorf("encode body: %w", err)
		}
	}
	auth, err := c.authorization(req, body)
	if err != nil {
		return err
	}
	limit := c.maxResponse
	if req.MaxResponseBytes > 0 {
		limit = req.MaxResponseBytes
	}

	var status int
	var data []byte
	if c.via != nil {
		resp, err := c.via.Forward(ctx, ProxiedRequest{Method: req.Method, Destination: req.Destination, Path: req.Path,
			Body: body, Authorization: auth, TimeoutMS: timeout.Milliseconds(), MaxResponseBytes: limit})
		if err != nil {
			return fmt.Errorf("through the outbound federation proxy: %w", err)
		}
		status, data = resp.Status, resp.Body
		if int64(len(data)) > limit {
			return fmt.Errorf("%w (limit %d bytes)", ErrResponseTooLarge, limit)
		}
	} else {
		var err error
		if status, data, err = c.roundTrip(ctx, req.Method, req.Destination, req.Path, body, auth, limit); err != nil {
			return err
		}
	}
	if status < 200 || status > 299 {
		return httpError(req.Destination, status, data)
	}
	if req.Out != nil {
		if err := json.Unmarshal(data, req.Out); err != nil {
			return fmt.Errorf("decode response: %w", err)
		}
	}
	return nil
}

// httpError builds the error of a non-2xx answer from its body.
func httpError(destination string, status int, data []byte) *HTTPError {
	he := &HTTPError{Destination: destination, Status: status}
	var e struct {
		Errcode string `json:"errcode"`
		Error   string `json:"error"`
	}
	if json.Unmarshal(data, &e) == nil {
		he.Errcode, he.Message = e.Errcode, e.Error
	}
	return he
}

// authorization is req's X-Matrix header ("" for unsigned requests).
func (c *Client) authorization(req Request, body []byte) (string, error) {
	if req.Unsigned {
		return "", nil
	}
	var content json.RawMessage
	if body != nil {
		content = body
	}
	p, err := xmatrix.Sign(xmatrix.Request{Method: req.Method, URI: req.Path, Origin: c.serverName,
		Destination: req.Destination, Content: content}, c.key)
	if err != nil {
		return "", err
	}
	return p.Format(), nil
}

// send checks, signs and sends req directly (never through an outbound
// proxy: the answer is streamed) and returns the response with its body
// unread, and the cancel function of the request's timeout, which the
// caller calls once done with the body.
func (c *Client) send(ctx context.Context, req Request) (*http.Response, context.CancelFunc, error) {
	if err := c.checkRequest(req.Destination, req.Path); err != nil {
		return nil, nil, err
	}
	timeout := c.timeout
	if req.Timeout > 0 {
		timeout = req.Timeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	var body []byte
	if req.Body != nil {
		raw, err := json.Marshal(req.Body)
		if err == nil {
			body, err = canonicaljson.Canonicalize(raw, false)
		}
		if err != nil {
			cancel()
			return nil, nil, fmt.Errorf("encode body: %w", err)
		}
	}
	auth, err := c.authorization(req, body)
	if err != nil {
		cancel()
		return nil, nil, err
	}
	resp, err := c.exchange(ctx, req.Method, req.Destination, req.Path, body, auth)
	if err != nil {
		cancel()
		return nil, nil, err
	}
	return resp, cancel, nil
}

// checkRequest refuses destinations that are not server names or not in
// the whitelist, and paths that are not escaped federation paths.
func (c *Client) checkRequest(destination, path string) error {
	if _, err := servername.Parse(destination); err != nil {
		return err
	}
	if c.whitelist != nil && !c.whitelist[destination] {
		return ErrNotWhitelisted
	}
	if !strings.HasPrefix(path, "/_matrix/") {
		return fmt.Errorf("path %q does not start with /_matrix/", path)
	}
	// The path goes into the request line as it is (it is what is
	// signed), so it must already be escaped.
	if i := strings.IndexFunc(path, func(r rune) bool { return r <= ' ' || r == 0x7f || r == '#' || r > 0x7e }); i >= 0 {
		return fmt.Errorf("path %q is not escaped (byte %d)", path, i)
	}
	return nil
}

// Forward sends a request another process built and signed (the serving
// side of Proxy): this process resolves and connects, with its own IP
// filter and whitelist, and returns whatever status the destination
// answered. An error means no answer came.
func (c *Client) Forward(ctx context.Context, req ProxiedRequest) (*ProxiedResponse, error) {
	if err := c.checkRequest(req.Destination, req.Path); err != nil {
		return nil, fmt.Errorf("federation %s %s%s: %w", req.Method, req.Destination, pathOnly(req.Path), err)
	}
	timeout := c.timeout
	if req.TimeoutMS > 0 {
		timeout = min(timeout, time.Duration(req.TimeoutMS)*time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	limit := c.maxResponse
	if req.MaxResponseBytes > 0 {
		limit = min(limit, req.MaxResponseBytes)
	}
	status, data, err := c.roundTrip(ctx, req.Method, req.Destination, req.Path, req.Body, req.Authorization, limit)
	if err != nil {
		return nil, fmt.Errorf("federation %s %s%s: %w", req.Method, req.Destination, pathOnly(req.Path), err)
	}
	return &ProxiedResponse{Status: status, Body: data}, nil
}

// roundTrip sends one request to the destination over TLS and reads the
// answer (at most limit bytes of body).
func (c *Client) roundTrip(ctx context.Context, method, destination, path string, body []byte, auth string, limit int64) (int, []byte, error) {
	resp, err := c.exchange(ctx, method, destination, path, body, auth)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return 0, nil, fmt.Errorf("read response: %w", err)
	}
	if int64(len(data)) > limit {
		return 0, nil, fmt.Errorf("%w (limit %d bytes)", ErrResponseTooLarge, limit)
	}
	return resp.StatusCode, data, nil
}

// exchange sends one request to the destination over TLS and returns the
// response with its body unread.
func (c *Client) exchange(ctx context.Context, method, destination, path string, body []byte, auth string) (*http.Response, error) {
	res, err := c.resolver.Resolve(ctx, destination)
	if err != nil {
		return nil, err
	}
	pathPart, query, _ := strings.Cut(path, "?")
	u := &urlParts{host: urlHost(destination), opaque: pathPart, query: query}
	hreq, err := http.NewRequestWithContext(context.WithValue(ctx, resolvedKey{}, res), method, u.String(), nil)
	if err != nil {
		return nil, fmt.Errorf("build request: %w", err)
	}
	// Opaque keeps the path byte for byte as signed.
	hreq.URL.Opaque, hreq.URL.RawQuery = pathPart, query
	hreq.Host = res.Host
	hreq.Header.Set("User-Agent", c.userAgent)
	if body != nil {
		hreq.Body = io.NopCloser(bytes.NewReader(body))
		hreq.ContentLength = int64(len(body))
		hreq.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
		hreq.Header.Set("Content-Type", "application/json")
	}
	if auth != "" {
		hreq.Header.Set("Authorization", auth)
	}
	resp, err := c.http.Do(hreq)
	if err != nil {
		// Do names the request itself; url.Error's URL, built from the
		// opaque path, would only confuse.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, err
	}
	return resp, nil
}

// GetJSON fetches path from serverName without signing (the key endpoints
// are unauthenticated). It is serverkeys.Getter.
func (c *Client) GetJSON(ctx context.Context, serverName, path string, out any) error {
	return c.Do(ctx, Request{Method: http.MethodGet, Destination: serverName, Path: path, Out: out, Unsigned: true})
}

// PostJSON posts body to path on serverName without signing (a notary's
// /_matrix/key/v2/query). It is serverkeys.Poster.
func (c *Client) PostJSON(ctx context.Context, serverName, path string, body, out any) error {
	return c.Do(ctx, Request{Method: http.MethodPost, Destination: serverName, Path: path, Body: body, Out: out, Unsigned: true})
}

// SignedGetJSON is a signed GET.
func (c *Client) SignedGetJSON(ctx context.Context, destination, path string, out any) error {
	return c.Do(ctx, Request{Method: http.MethodGet, Destination: destination, Path: path, Out: out})
}

// SignedPutJSON is a signed PUT with a JSON body.
func (c *Client) SignedPutJSON(ctx context.Context, destination, path string, body, out any) error {
	return c.Do(ctx, Request{Method: http.MethodPut, Destination: destination, Path: path, Body: body, Out: out})
}

// SignedPostJSON is a signed POST with a JSON body.
func (c *Client) SignedPostJSON(ctx context.Context, destination, path string, body, out any) error {
	return c.Do(ctx, Request{Method: http.MethodPost, Destination: destination, Path: path, Body: body, Out: out})
}

// urlHost is the URL host that stands for a destination in the transport's
// connection pool: the server name with its port, or with port 0 when it
// has none. "example.org" and "example.org:443" are different servers
// (the first may be delegated), so they must not share connections.
func urlHost(serverName string) string {
	n, err := servername.Parse(serverName)
	if err != nil {
		return serverName
	}
	if n.Port != 0 {
		return n.HostPort()
	}
	return n.HostPort() + ":0"
}

// serverNameOf undoes urlHost on the address the transport dials.
func serverNameOf(addr string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", err
	}
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	if port == "0" {
		return host, nil
	}
	if _, err := strconv.Atoi(port); err != nil {
		return "", fmt.Errorf("bad port in %q", addr)
	}
	return host + ":" + port, nil
}

type urlParts struct{ host, opaque, query string }

func (u *urlParts) String() string {
	s := "https://" + u.host + u.opaque
	if u.query != "" {
		s += "?" + u.query
	}
	return s
}

func pathOnly(p string) string {
	path, _, _ := strings.Cut(p, "?")
	return path
}

// dialTLS connects to a destination: the targets of its resolution in
// order, each checked by the IP filter, with the certificate verified for
// the name the spec says (the delegated hostname, or the IP literal).
func (c *Client) dialTLS(ctx context.Context, _, addr string) (net.Conn, error) {
	name, err := serverNameOf(addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	res, ok := ctx.Value(resolvedKey{}).(Resolved)
	if !ok || res.ServerName != name {
		if res, err = c.resolver.Resolve(ctx, name); err != nil {
			return nil, err
		}
	}
	var errs []error
	for _, t := range res.Targets {
		conn, err := c.dialer.dialTarget(ctx, t)
		if err != nil {
			errs = append(errs, err)
			if ctx.Err() != nil {
				break
			}
			continue
		}
		cfg := c.tlsBase.Clone()
		cfg.ServerName = res.TLSName
		cfg.NextProtos = []string{"http/1.1"}
		tc := tls.Client(conn, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			conn.Close()
			errs = append(errs, fmt.Errorf("TLS with %s (as %s): %w", t, res.TLSName, err))
			if ctx.Err() != nil {
				break
			}
			continue
		}
		return tc, nil
	}
	if len(errs) == 0 {
		return nil, fmt.Errorf("no address to connect to for %s", name)
	}
	return nil, errors.Join(errs...)
}
