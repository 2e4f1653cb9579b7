package router_test

import (
	"context"
	"encoding/json"
	"errors"
	"ganglion/internal/testutil"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"ganglion/internal/accounts"
	"ganglion/internal/config"
	"ganglion/internal/router"
)

// echoBackend is a fake Ganglion process that answers every request with
// its own name, so a test can tell where the router sent a request. Paths
// ending in /sync with timeout=block long-poll until released or killed.
type echoBackend struct {
	name string
	addr string

	mu      sync.Mutex
	srv     *http.Server
	waits   chan struct{} // one value per long-poll that started
	gotReq  chan string   // streaming test: first body chunk seen
	release chan struct{} // streaming test: finish the response
	// hangups is how many of the next requests the backend reads whole
	// and then drops the connection on without answering, as a process
	// dying mid-request would.
	hangups atomic.Int32
	// seen counts the requests it received (hung up on or answered).
	seen atomic.Int32
}

// takeHangup uses up one planned hang-up, if any is left.
func (b *echoBackend) takeHangup() bool {
	for {
		n := b.hangups.Load()
		if n <= 0 {
			return false
		}
		if b.hangups.CompareAndSwap(n, n-1) {
			return true
		}
	}
}

type echoReply struct {
	Backend string `json:"backend"`
	Method  string `json:"method"`
	Path    string `json:"path"`
	Query   string `json:"query"`
	XFF     string `json:"xff"`
	XFP     string `json:"xfp"`
	Host    string `json:"host"`
	BodyLen int64  `json:"body_len"`
}

func startEcho(t testing.TB, name string) *echoBackend {
	t.Helper()
	b := &echoBackend{name: name, waits: make(chan struct{}, 64), gotReq: make(chan string, 4), release: make(chan struct{})}
	b.start(t, "127.0.0.1:0")
	t.Cleanup(b.kill)
	return b
}

func (b *echoBackend) start(t testing.TB, addr string) {
	t.Helper()
	var ln net.Listener
	var err error
	// The port may still be held by the killed server: retry until the
	// deadline.
	testutil.Eventually(t, 5*time.Second, "listen on "+addr, func() bool {
		ln, err = net.Listen("tcp", addr)
		return err == nil
	})
	if err != nil {
		t.Fatalf("backend %s: listen: %v", b.name, err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(b.serve)}
	b.mu.Lock()
	b.srv, b.addr = srv, ln.Addr().String()
	b.mu.Unlock()
	go func() { _ = srv.Serve(ln) }()
}

// kill closes the listener and every connection at once, as a crashed
// process would.
func (b *echoBackend) kill() {
	b.mu.Lock()
	srv := b.srv
	b.mu.Unlock()
	if srv != nil {
		_ = srv.Close()
	}
}

func (b *echoBackend) url() string { return "http://" + b.addr }

func (b *echoBackend) serve(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/health" {
		_, _ = io.WriteString(w, "OK")
		return
	}
	b.seen.Add(1)
	if b.takeHangup() {
		_, _ = io.Copy(io.Discard, r.Body)
		if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
			_ = conn.Close()
		}
		return
	}
	w.Header().Set("X-Backend", b.name)
	switch r.URL.Query().Get("mode") {
	case "block": // a long-poll that never finishes on its own
		b.waits <- struct{}{}
		<-r.Context().Done()
		return
	case "stream-request": // report the body's first part as soon as it arrives
		buf := make([]byte, 5)
		n, _ := io.ReadFull(r.Body, buf)
		b.gotReq <- string(buf[:n])
		_, _ = io.Copy(io.Discard, r.Body)
		_, _ = io.WriteString(w, "done")
		return
	case "stream-response": // first part now, the rest when released
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, "first;")
		http.NewResponseController(w).Flush()
		select {
		case <-b.release:
		case <-r.Context().Done():
			return
		}
		_, _ = io.WriteString(w, "second")
		return
	}
	n, _ := io.Copy(io.Discard, r.Body)
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(echoReply{Backend: b.name, Method: r.Method, Path: r.URL.Path, Query: r.URL.RawQuery,
		XFF: r.Header.Get("X-Forwarded-For"), XFP: r.Header.Get("X-Forwarded-Proto"), Host: r.Host, BodyLen: n})
}

// testFleet is a set of echo backends in the pools of a router config.
type testFleet struct {
	backends map[string]*echoBackend
	cfg      *config.Config
	rc       *router.Config
}

// pool memberships of the standard test fleet. encryption, registration,
// pagination and user_directory are left unset so they fall back to client.
var testPools = map[string][]string{
	"sync":               {"sync1", "sync2"},
	"initial_sync":       {"isync1"},
	"federation_inbound": {"fedin1", "fedin2"},
	"federation":         {"fed1"},
	"client":             {"client1", "client2"},
	"events":             {"events1", "events2"},
	"media":              {"media1"},
	"sso":                {"sso1"},
}

// pools are the sets of backends a test expects, by name.
var expectPool = map[string][]string{
	"sync":               {"sync1", "sync2"},
	"initial_sync":       {"isync1"},
	"federation_inbound": {"fedin1", "fedin2"},
	"federation":         {"fed1"},
	"client":             {"client1", "client2"},
	"events":             {"events1", "events2"},
	"media":              {"media1"},
	"sso":                {"sso1"},
	"writer":             {"writer1"},
	"main":               {"main"},
}

func newTestFleet(t testing.TB, listenPort int) *testFleet {
	t.Helper()
	f := &testFleet{backends: map[string]*echoBackend{}}
	names := []string{"main", "writer1"}
	for _, ms := range testPools {
		names = append(names, ms...)
	}
	instances := map[string]router.InstanceURLs{}
	for _, n := range names {
		if _, ok := f.backends[n]; ok {
			continue
		}
		f.backends[n] = startEcho(t, n)
		instances[n] = router.InstanceURLs{ClientURL: f.backends[n].url()}
	}
	cfg := config.Default()
	cfg.ServerName = "test.example"
	for _, s := range []*config.StringList{&cfg.Writers.Typing, &cfg.Writers.ToDevice, &cfg.Writers.AccountData,
		&cfg.Writers.Receipts, &cfg.Writers.Presence, &cfg.Writers.PushRules} {
		*s = config.StringList{"writer1"}
	}
	pools := map[string]config.StringList{}
	for p, ms := range testPools {
		pools[p] = ms
	}
	rc, err := router.NewConfig(cfg, router.Config{
		Listen:              config.Listener{Port: listenPort, BindAddresses: []string{"127.0.0.1"}},
		Instances:           instances,
		Pools:               pools,
		MaxRequestSize:      "64K",
		MaxUploadSize:       "1M",
		HealthCheckInterval: 50 * time.Millisecond,
	})
	if err != nil {
		t.Fatalf("router config: %v", err)
	}
	f.cfg, f.rc = cfg, rc
	return f
}

func testLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("instance", "router")
	}
	return slog.New(slog.DiscardHandler)
}

// startRouter runs the router on an httptest server with its health
// checks, until the test ends.
func startRouter(t testing.TB, f *testFleet) (*router.Router, string) {
	t.Helper()
	rt, err := router.New(f.cfg, f.rc, testLogger(t))
	if err != nil {
		t.Fatalf("router: %v", err)
	}
	srv := httptest.NewServer(rt.Handler())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = rt.RunHealthChecks(ctx) }()
	t.Cleanup(func() { cancel(); <-done; srv.Close() })
	return rt, srv.URL
}

// reqLine is a request the tables send through a proxy.
type reqLine struct {
	method, path string
	token        string // access token (Authorization: Bearer)
	origin       string // X-Matrix origin
	body         string
}

func (l reqLine) String() string { return l.method + " " + l.path }

type result struct {
	status  int
	backend string
	body    []byte
	header  http.Header
}

func (r result) reply(t testing.TB) echoReply {
	t.Helper()
	var e echoReply
	if err := json.Unmarshal(r.body, &e); err != nil {
		t.Fatalf("not an echo reply (%d): %s", r.status, r.body)
	}
	return e
}

// matrixError decodes an error body; it fails the test unless the body is
// Matrix JSON with the given status and errcode.
func (r result) wantMatrixError(t testing.TB, status int, code string) {
	t.Helper()
	var e struct {
		Code string `json:"errcode"`
		Msg  string `json:"error"`
	}
	if r.status != status || json.Unmarshal(r.body, &e) != nil || e.Code != code || e.Msg == "" {
		t.Fatalf("got %d %q, want %d with errcode %s", r.status, r.body, status, code)
	}
	if ct := r.header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("Content-Type %q, want application/json", ct)
	}
}

var testClient = &http.Client{Timeout: 10 * time.Second}

func send(t testing.TB, base string, l reqLine) result {
	t.Helper()
	res, err := trySend(context.Background(), base, l)
	if err != nil {
		t.Fatalf("%s: %v", l, err)
	}
	return res
}

func trySend(ctx context.Context, base string, l reqLine) (result, error) {
	var body io.Reader
	if l.body != "" {
		body = strings.NewReader(l.body)
	}
	req, err := http.NewRequestWithContext(ctx, l.method, base+l.path, body)
	if err != nil {
		return result{}, err
	}
	if l.token != "" {
		req.Header.Set("Authorization", "Bearer "+l.token)
	}
	if l.origin != "" {
		req.Header.Set("Authorization", `X-Matrix origin="`+l.origin+`",destination="test.example",key="ed25519:a",sig="c2ln"`)
	}
	resp, err := testClient.Do(req)
	if err != nil {
		return result{}, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return result{}, err
	}
	return result{status: resp.StatusCode, backend: resp.Header.Get("X-Backend"), body: data, header: resp.Header}, nil
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	testutil.Eventually(t, timeout, what, cond)
}

func token(localpart string) string { return accounts.NewAccessToken(localpart) }

// usersOn finds, for each backend of a sticky sync pool, a user whose
// syncs land there.
func usersOn(t testing.TB, base, query string, want []string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for i := 0; i < 200 && len(out) < len(want); i++ {
		lp := "user" + string(rune('a'+i%26)) + strings.Repeat("x", i/26)
		tok := token(lp)
		r := send(t, base, reqLine{method: "GET", path: "/_matrix/client/v3/sync" + query, token: tok})
		if _, seen := out[r.backend]; !seen {
			out[r.backend] = tok
		}
	}
	for _, w := range want {
		if out[w] == "" {
			keys := make([]string, 0, len(out))
			for k := range out {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			t.Fatalf("no user lands on %s (got %v)", w, keys)
		}
	}
	return out
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func writeFile(path, body string) error { return os.WriteFile(path, []byte(body), 0o600) }
