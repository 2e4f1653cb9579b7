// Package e2e_test drives whole Ganglion processes over real HTTP with a
// real Matrix client library (mautrix-go), on both storage engines. Nothing
// here reaches into server internals: what a client can observe is the
// spec, and these tests assert it.
package e2e_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"ganglion/internal/app"
	"ganglion/internal/config"
	"ganglion/internal/storage/storagetest"
)

// serverName is the server_name of every test server.
const serverName = "e2e.test"

// sharedSecret is registration_shared_secret of every test server.
const sharedSecret = "e2e-shared-secret-not-for-production"

// Engines, as subtest names.
const (
	engineSQLite   = "sqlite"
	enginePostgres = "postgres"
)

// testTimeout bounds every test's HTTP calls: each test derives all its
// request contexts from one context with this deadline.
const testTimeout = 90 * time.Second

// server is a running Ganglion process under test.
type server struct {
	url    string // base URL, http://127.0.0.1:PORT
	engine string
	http   *http.Client

	// What restart needs to start the process again on the same data.
	dir  string
	db   map[string]any
	opts []configOption
	port int
	logs *syncBuffer
	// stop cancels the running process and waits for its Run to return.
	stop func(t testing.TB)
	// host is the listener's host:port, which the transport sends every
	// request to: clients made before a restart keep working even if the
	// restarted process had to take another port.
	host atomic.Pointer[string]

	// fleet is set for engine "fleet": url is worker1's client listener
	// (where raw requests go), and each new client gets the next generic
	// worker in turn. A fleet restarts on its own ports, so its transport
	// needs no redirecting. Behind a front (fleet.front set), url is the
	// front's and every request goes there.
	fleet *fleet
}

// followServer is the test clients' transport: it sends each request to
// the server's current address.
type followServer struct {
	s    *server
	base *http.Transport
}

func (f followServer) RoundTrip(req *http.Request) (*http.Response, error) {
	if host := *f.s.host.Load(); req.URL.Host != host {
		req = req.Clone(req.Context())
		req.URL.Host, req.Host = host, ""
	}
	return f.base.RoundTrip(req)
}

func (f followServer) CloseIdleConnections() { f.base.CloseIdleConnections() }

// configOption edits the config document before it is written.
type configOption func(cfg map[string]any)

// fastLimit is a rate limit no test reaches by accident.
func fastLimit() map[string]any { return map[string]any{"per_second": 1000, "burst_count": 1000} }

// withRegistrationDisabled closes open registration (the shared-secret
// admin API stays available).
func withRegistrationDisabled() configOption {
	return func(cfg map[string]any) { cfg["enable_registration"] = false }
}

// withMessageRateLimit sets rc_message.
func withMessageRateLimit(perSecond, burst float64) configOption {
	return func(cfg map[string]any) {
		cfg["rc_message"] = map[string]any{"per_second": perSecond, "burst_count": burst}
	}
}

// databaseSection returns the config's database section for engine; on
// PostgreSQL it creates a fresh database, dropped when the test ends.
func databaseSection(t testing.TB, engine, dir string) map[string]any {
	t.Helper()
	switch engine {
	case engineSQLite:
		return map[string]any{"name": "sqlite3", "args": map[string]any{"database": filepath.Join(dir, "homeserver.db")}}
	case enginePostgres:
		u, err := url.Parse(storagetest.NewPostgresDatabase(t))
		if err != nil {
			t.Fatalf("parse PostgreSQL URL: %v", err)
		}
		args := map[string]any{
			"database": strings.TrimPrefix(u.Path, "/"),
			"host":     u.Hostname(),
			"cp_max":   10,
		}
		if p := u.Port(); p != "" {
			args["port"] = p
		}
		if u.User != nil {
			args["user"] = u.User.Username()
			if pw, ok := u.User.Password(); ok {
				args["password"] = pw
			}
		}
		if m := u.Query().Get("sslmode"); m != "" {
			args["sslmode"] = m
		}
		return map[string]any{"name": "psycopg2", "args": args}
	}
	t.Fatalf("unknown engine %q", engine)
	return nil
}

// baseConfig is the config document of a test server: open registration
// without verification, cheap bcrypt, rate limits out of the way, one
// loopback listener serving client and federation.
func baseConfig(dir string, db map[string]any, port int) map[string]any {
	return map[string]any{
		"server_name":    serverName,
		"public_baseurl": fmt.Sprintf("http://127.0.0.1:%d/", port),
		"listeners": []any{map[string]any{
			"port":           port,
			"bind_addresses": []string{"127.0.0.1"},
			"type":           "http",
			"tls":            false,
			"x_forwarded":    false,
			"resources":      []any{map[string]any{"names": []string{"client", "federation"}, "compress": false}},
		}},
		"database":            db,
		"signing_key_path":    filepath.Join(dir, serverName+".signing.key"),
		"media_store_path":    filepath.Join(dir, "media_store"),
		"enable_registration": true,
		"enable_registration_without_verification": true,
		"registration_shared_secret":               sharedSecret,
		"bcrypt_rounds":                            4,
		"report_stats":                             false,
		"trusted_key_servers":                      []any{},
		"rc_message":                               fastLimit(),
		"rc_registration":                          fastLimit(),
		"rc_login": map[string]any{
			"address":         fastLimit(),
			"account":         fastLimit(),
			"failed_attempts": fastLimit(),
		},
		"rc_joins":          map[string]any{"local": fastLimit(), "remote": fastLimit()},
		"rc_joins_per_room": fastLimit(),
		"rc_invites":        map[string]any{"per_room": fastLimit(), "per_user": fastLimit(), "per_issuer": fastLimit()},
		"rc_room_creation":  fastLimit(),
		"rc_presence":       map[string]any{"per_user": fastLimit()},
		"rc_user_directory": fastLimit(),
	}
}

// writeConfig writes cfg as homeserver.yaml in dir. JSON is YAML, and
// encoding/json cannot produce a document that means something else.
func writeConfig(t testing.TB, dir string, cfg map[string]any) string {
	t.Helper()
	data, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		t.Fatalf("encode config: %v", err)
	}
	path := filepath.Join(dir, "homeserver.yaml")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatalf("write config: %v", err)
	}
	return path
}

// freePort returns a loopback port nothing listened on a moment ago.
// Someone may take it before the server binds; callers retry.
func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("find a free port: %v", err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	if err := ln.Close(); err != nil {
		t.Fatalf("release port: %v", err)
	}
	return port
}

// syncBuffer collects the server's log; it is shown only when the test
// fails, so passing runs stay quiet.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// tail returns at most the last n bytes of s, cut at a line start.
func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	s = s[len(s)-n:]
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	return "…\n" + s
}

// startServer runs a Ganglion main process in-process on engine, stopped
// (and its Run awaited) when the test ends.
//
// On engine "fleet" it starts a fleet of `ganglion serve` processes
// instead (see fleet_test.go), stopped when the test ends.
func startServer(t *testing.T, engine string, opts ...configOption) *server {
	t.Helper()
	if engine == engineFleet {
		return startFleetServer(t, opts...)
	}
	if kind, ok := frontKind(engine); ok {
		return startFrontServer(t, engine, kind, opts...)
	}
	dir := t.TempDir()
	s := &server{
		engine: engine,
		dir:    dir,
		db:     databaseSection(t, engine, dir),
		opts:   opts,
		logs:   &syncBuffer{},
	}
	s.http = &http.Client{Timeout: 30 * time.Second,
		Transport: followServer{s: s, base: http.DefaultTransport.(*http.Transport).Clone()}}
	s.launch(t)
	t.Cleanup(func() {
		s.stop(t)
		if t.Failed() {
			t.Logf("server log (%s):\n%s", engine, tail(s.logs.String(), 16<<10))
		}
	})
	return s
}

// launch starts the process on s's directory and database: on a free port
// the first time, on the same port if it is still free after a restart.
func (s *server) launch(t testing.TB) {
	t.Helper()
	log := slog.New(slog.NewTextHandler(s.logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	for attempt := 1; ; attempt++ {
		port := s.port
		if port == 0 || attempt > 1 {
			port = freePort(t)
		}
		cfgDoc := baseConfig(s.dir, s.db, port)
		for _, o := range s.opts {
			o(cfgDoc)
		}
		path := writeConfig(t, s.dir, cfgDoc)
		cfg, err := config.Load([]string{path}, nil)
		if err != nil {
			t.Fatalf("load config: %v", err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		p, err := app.New(ctx, cfg, log)
		if err != nil {
			cancel()
			t.Fatalf("start server: %v\n%s", err, s.logs)
		}
		if err := p.Listen(); err != nil {
			// Run on a cancelled context is the only way to release what
			// New opened (the database).
			cancel()
			_ = p.Run(ctx)
			if errors.Is(err, syscall.EADDRINUSE) && attempt < 5 {
				continue
			}
			t.Fatalf("listen: %v", err)
		}
		done := make(chan error, 1)
		go func() { done <- p.Run(ctx) }()
		stopped := false
		s.stop = func(t testing.TB) {
			if stopped {
				return
			}
			stopped = true
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("server Run: %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Errorf("server did not stop within 30s")
			}
		}
		addrs := p.Addrs()
		if len(addrs) == 0 {
			t.Fatalf("server has no listener")
		}
		s.port = addrs[0].(*net.TCPAddr).Port
		host := addrs[0].String()
		s.host.Store(&host)
		s.url = "http://" + host
		return
	}
}

// restart stops the process (an orderly shutdown: positions saved, database
// closed) and starts a new one on the same config and data. Nothing may be
// in flight.
//
// A fleet restarts every process (SIGTERM, then start again on the same
// ports and data).
func (s *server) restart(t testing.TB) {
	t.Helper()
	if s.fleet != nil {
		s.fleet.restart(t)
		s.http.CloseIdleConnections()
		return
	}
	s.stop(t)
	// Connections to the old process are dead; do not let a request try one.
	s.http.CloseIdleConnections()
	s.launch(t)
}

// forEachEngine runs fn as subtests "sqlite", "postgres", "fleet",
// "fleet-router" and "fleet-nginx", each with its own freshly started
// server: a monolith in-process on each engine, then a fleet of real
// processes (main, two generic workers, two event persisters, one stream
// writer, one media worker) on PostgreSQL and Redis, reached directly, through `ganglion
// route`, and through nginx running the generated config.
func forEachEngine(t *testing.T, fn func(t *testing.T, srv *server), opts ...configOption) {
	t.Helper()
	runDeployments(t, []string{engineSQLite, enginePostgres, engineFleet, engineFleetRouter, engineFleetNginx}, fn, opts...)
}

// runDeployments runs fn as one subtest per engine, each with its own
// freshly started server.
func runDeployments(t *testing.T, engines []string, fn func(t *testing.T, srv *server), opts ...configOption) {
	t.Helper()
	for _, engine := range engines {
		t.Run(engine, func(t *testing.T) {
			fn(t, startServer(t, engine, opts...))
		})
	}
}

// testContext bounds all of one test's requests.
func testContext(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// password is the password the harness registers localpart with.
func password(localpart string) string { return "pw-" + localpart + "-correct-horse" }

func userID(localpart string) id.UserID { return id.NewUserID(localpart, serverName) }

// client returns a mautrix client for the server with these credentials.
// On a fleet, each new client talks to the next generic worker in turn;
// behind a front (fleet-router, fleet-nginx), every client uses the front.
func (s *server) client(t testing.TB, user id.UserID, token string) *mautrix.Client {
	t.Helper()
	base := s.url
	if s.fleet != nil && s.fleet.front == nil {
		base = s.fleet.nextClientURL()
	}
	c, err := mautrix.NewClient(base, user, token)
	if err != nil {
		t.Fatalf("mautrix client: %v", err)
	}
	c.Client = s.http
	return c
}

// register creates localpart (password: password(localpart)) through
// /register with the m.login.dummy flow and returns a logged-in client.
func (s *server) register(t testing.TB, ctx context.Context, localpart string) *mautrix.Client {
	t.Helper()
	c := s.client(t, "", "")
	resp, err := c.RegisterDummy(ctx, &mautrix.ReqRegister[any]{
		Username:                 localpart,
		Password:                 password(localpart),
		InitialDeviceDisplayName: "e2e " + localpart,
	})
	if err != nil {
		t.Fatalf("register %s: %v", localpart, err)
	}
	if resp.UserID != userID(localpart) {
		t.Fatalf("register %s: user_id %q, want %q", localpart, resp.UserID, userID(localpart))
	}
	if resp.AccessToken == "" || resp.DeviceID == "" {
		t.Fatalf("register %s: no access token or device id in %+v", localpart, resp)
	}
	c.SetCredentials(resp.UserID, resp.AccessToken)
	c.DeviceID = resp.DeviceID
	return c
}

// login logs localpart in with a password, as a new device.
func (s *server) login(t testing.TB, ctx context.Context, localpart, pw string) (*mautrix.Client, error) {
	t.Helper()
	c := s.client(t, "", "")
	_, err := c.Login(ctx, &mautrix.ReqLogin{
		Type:             mautrix.AuthTypePassword,
		Identifier:       mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: localpart},
		Password:         pw,
		StoreCredentials: true,
	})
	if err != nil {
		return nil, err
	}
	return c, nil
}

// mustLogin is login that fails the test on error.
func (s *server) mustLogin(t testing.TB, ctx context.Context, localpart, pw string) *mautrix.Client {
	t.Helper()
	c, err := s.login(t, ctx, localpart, pw)
	if err != nil {
		t.Fatalf("login %s: %v", localpart, err)
	}
	return c
}

// response is a raw HTTP answer.
type response struct {
	status int
	header http.Header
	body   []byte
}

// object decodes the body as a JSON object, failing the test otherwise.
func (r response) object(t testing.TB) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.body, &m); err != nil || m == nil {
		t.Fatalf("response %d is not a JSON object: %v: %s", r.status, err, truncate(r.body))
	}
	return m
}

func truncate(b []byte) string {
	if len(b) > 600 {
		return string(b[:600]) + "…"
	}
	return string(b)
}

// do sends one raw request. path is appended to the base URL as is (the
// caller escapes); token, if set, goes in the Authorization header.
//
// On a fleet raw requests all go to worker1: they include two-legged
// exchanges (a UIA challenge and its answer, an admin-registration nonce
// and its use) and rate-limit sequences whose buckets are per process, and
// TestBadInput's errors must be the same on every deployment. Behind a
// front they go to the front, which routes them as it would any client's.
func (s *server) do(t testing.TB, ctx context.Context, method, path, token string, body []byte) response {
	t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, s.url+path, rd)
	if err != nil {
		t.Fatalf("build request %s %s: %v", method, path, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := s.http.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: data}
}

// doJSON is do with v marshalled as the body.
func (s *server) doJSON(t testing.TB, ctx context.Context, method, path, token string, v any) response {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("encode body: %v", err)
	}
	return s.do(t, ctx, method, path, token, b)
}

// clientPath builds /_matrix/client/v3/… from segments, escaping each.
func clientPath(segments ...string) string {
	var b strings.Builder
	b.WriteString("/_matrix/client/v3")
	for _, s := range segments {
		b.WriteByte('/')
		b.WriteString(url.PathEscape(s))
	}
	return b.String()
}

// wantMatrixError checks that err is a Matrix error answer with status and
// one of codes.
func wantMatrixError(t testing.TB, err error, status int, codes ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got success, want HTTP %d %v", status, codes)
	}
	var he mautrix.HTTPError
	if !errors.As(err, &he) || he.Response == nil {
		t.Fatalf("got %v, want HTTP %d %v", err, status, codes)
	}
	got := ""
	if he.RespError != nil {
		got = he.RespError.ErrCode
	}
	if he.Response.StatusCode != status || !slices.Contains(codes, got) {
		t.Fatalf("got HTTP %d %q (%v), want HTTP %d %v", he.Response.StatusCode, got, err, status, codes)
	}
}

// matrixErr is an HTTP status with an errcode.
type matrixErr struct {
	status int
	code   string
}

// wantOneOf checks that err is a Matrix error answer matching one of want,
// for cases where the spec and Synapse disagree and both are acceptable.
func wantOneOf(t testing.TB, err error, want ...matrixErr) {
	t.Helper()
	var he mautrix.HTTPError
	if err == nil || !errors.As(err, &he) || he.Response == nil {
		t.Fatalf("got %v, want one of %v", err, want)
	}
	got := matrixErr{status: he.Response.StatusCode}
	if he.RespError != nil {
		got.code = he.RespError.ErrCode
	}
	if !slices.Contains(want, got) {
		t.Fatalf("got %v (%v), want one of %v", got, err, want)
	}
}

// wantRawError checks a raw response is a Matrix error: status, JSON
// content type, a JSON object with errcode in codes and a string error.
func wantRawError(t testing.TB, r response, status int, codes ...string) map[string]any {
	t.Helper()
	if r.status != status {
		t.Fatalf("status %d, want %d; body %s", r.status, status, truncate(r.body))
	}
	if ct := r.header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Fatalf("Content-Type %q, want application/json; body %s", ct, truncate(r.body))
	}
	m := r.object(t)
	code, _ := m["errcode"].(string)
	if !slices.Contains(codes, code) {
		t.Fatalf("errcode %q, want one of %v; body %s", code, codes, truncate(r.body))
	}
	if _, ok := m["error"].(string); !ok {
		t.Fatalf("no string \"error\" field; body %s", truncate(r.body))
	}
	return m
}

// itoa is strconv.Itoa, for building transaction ids.
func itoa(i int) string { return strconv.Itoa(i) }
