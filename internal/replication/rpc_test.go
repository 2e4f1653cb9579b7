package replication_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
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

	"ganglion/internal/config"
	"ganglion/internal/mxhttp"
	"ganglion/internal/replication"
	"ganglion/internal/streams"
)

const testSecret = "correct horse battery staple"

// waitFor bounds every wait on a condition; none of them should come near it.
const waitFor = 10 * time.Second

// quiet is how long a test watches for something that must not happen yet.
// It only decides how likely a broken implementation is caught, never
// whether a correct one passes.
const quiet = 150 * time.Millisecond

func recv[T any](t testing.TB, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(waitFor):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

func newRegistry(t testing.TB, instance string) *streams.Registry {
	t.Helper()
	reg, err := streams.NewRegistry(instance, streams.AllDefs(),
		map[streams.Name][]string{streams.Events: {"main", "worker1"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return reg
}

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

// logRecorder lets a test wait for a log message instead of guessing how
// long something takes.
type logRecorder struct{ msgs chan string }

func newLogRecorder() *logRecorder { return &logRecorder{msgs: make(chan string, 64)} }

func (l *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (l *logRecorder) Handle(_ context.Context, r slog.Record) error {
	select {
	case l.msgs <- r.Message:
	default:
	}
	return nil
}
func (l *logRecorder) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logRecorder) WithGroup(string) slog.Handler      { return l }

func (l *logRecorder) waitFor(t testing.TB, msg string) {
	t.Helper()
	deadline := time.After(waitFor)
	for {
		select {
		case m := <-l.msgs:
			if m == msg {
				return
			}
		case <-deadline:
			t.Fatalf("timed out waiting for log %q", msg)
		}
	}
}

type fixtureOpts struct {
	noSecret     bool
	clientSecret string // defaults to the server's
	wrap         func(http.Handler) http.Handler
	serverOpts   []replication.ServerOption
	clientLog    *slog.Logger
}

// fixture is a "main" server and a "worker1" client over real loopback HTTP,
// each with its own stream registry as two processes would have.
type fixture struct {
	srvReg, cliReg *streams.Registry
	srv            *replication.Server
	ts             *httptest.Server
	loc            config.InstanceLocation
	cli            *replication.Client
	secret         string
}

func newFixture(t *testing.T, o fixtureOpts, eps ...replication.Endpoint) *fixture {
	t.Helper()
	f := &fixture{srvReg: newRegistry(t, "main"), cliReg: newRegistry(t, "worker1"), secret: testSecret}
	if o.noSecret {
		f.secret = ""
	}
	f.srv = replication.NewServer(f.secret, f.srvReg, discard(), o.serverOpts...)
	for _, e := range eps {
		f.srv.Register(e)
	}
	var h http.Handler = f.srv
	if o.wrap != nil {
		h = o.wrap(h)
	}
	f.ts = httptest.NewServer(h)
	t.Cleanup(f.ts.Close)
	f.loc = locationOf(t, f.ts.URL)
	cs := f.secret
	if o.clientSecret != "" {
		cs = o.clientSecret
	}
	log := o.clientLog
	if log == nil {
		log = discard()
	}
	f.cli = replication.NewClient(replication.InstanceLookup(map[string]config.InstanceLocation{"main": f.loc}),
		cs, "worker1", f.cliReg, log)
	t.Cleanup(f.cli.CloseIdleConnections)
	return f
}

func locationOf(t testing.TB, rawURL string) config.InstanceLocation {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	host, port, err := net.SplitHostPort(u.Host)
	if err != nil {
		t.Fatal(err)
	}
	p, err := strconv.Atoi(port)
	if err != nil {
		t.Fatal(err)
	}
	return config.InstanceLocation{Host: host, Port: p}
}

// raw sends a hand-made request, for what the client never sends.
func (f *fixture) raw(t testing.TB, method, path string, hdr http.Header, body string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, f.ts.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, vs := range hdr {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	resp, err := f.ts.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("%s %s: response %q is not a JSON object: %v", method, path, b, err)
	}
	return resp.StatusCode, m
}

func bearer() http.Header { return http.Header{"Authorization": {"Bearer " + testSecret}} }

func asMatrix(t testing.TB, err error) *mxhttp.Error {
	t.Helper()
	var me *mxhttp.Error
	if !errors.As(err, &me) {
		t.Fatalf("error %v (%T) is not an *mxhttp.Error", err, err)
	}
	return me
}

// echo answers with its path args, body and caller, counting runs.
func echo(name string, runs *atomic.Int32, mod func(*replication.Endpoint)) replication.Endpoint {
	e := replication.Endpoint{Name: name, Handle: func(_ context.Context, req *replication.Request) (any, error) {
		n := runs.Add(1)
		return map[string]any{"run": n, "args": req.Args, "body": req.Body, "caller": req.Caller,
			"query": req.Query}, nil
	}}
	if mod != nil {
		mod(&e)
	}
	return e
}

type echoed struct {
	Run    int32             `json:"run"`
	Args   map[string]string `json:"args"`
	Body   map[string]any    `json:"body"`
	Caller string            `json:"caller"`
	Query  url.Values        `json:"query"`
}

func TestConstantTimeEqual(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want bool
	}{
		{"secret", "secret", true},
		{"", "", true},
		{"secret", "secreT", false},
		{"secret", "secret2", false},
		{"secret2", "secret", false},
		{"", "secret", false},
		{"secret", "", false},
		{"\x00", "", false},
	} {
		if got := replication.ConstantTimeEqual(tc.a, tc.b); got != tc.want {
			t.Errorf("ConstantTimeEqual(%q, %q) = %v, want %v", tc.a, tc.b, got, tc.want)
		}
	}
}

func TestAuth(t *testing.T) {
	var runs atomic.Int32
	f := newFixture(t, fixtureOpts{}, echo("ping", &runs, nil))
	for _, tc := range []struct {
		name   string
		hdr    http.Header
		status int
		code   string
	}{
		{"missing", nil, 401, "M_MISSING_TOKEN"},
		{"wrong", http.Header{"Authorization": {"Bearer nope"}}, 403, "M_FORBIDDEN"},
		{"prefix of secret", http.Header{"Authorization": {"Bearer " + testSecret[:5]}}, 403, "M_FORBIDDEN"},
		{"not bearer", http.Header{"Authorization": {"Basic " + testSecret}}, 403, "M_FORBIDDEN"},
		{"no scheme", http.Header{"Authorization": {testSecret}}, 403, "M_FORBIDDEN"},
		{"two headers", http.Header{"Authorization": {"Bearer " + testSecret, "Bearer " + testSecret}}, 403, "M_FORBIDDEN"},
		{"right", bearer(), 200, ""},
		{"right, lower-case scheme", http.Header{"Authorization": {"bearer " + testSecret}}, 200, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, body := f.raw(t, http.MethodPost, "/_synapse/replication/ping", tc.hdr, "{}")
			if status != tc.status || (tc.code != "" && body["errcode"] != tc.code) {
				t.Fatalf("got %d %v, want %d %s", status, body, tc.status, tc.code)
			}
		})
	}
	if n := runs.Load(); n != 2 {
		t.Fatalf("handler ran %d times, want 2 (only authenticated requests)", n)
	}
}

func TestClientWithWrongSecretGetsForbidden(t *testing.T) {
	var runs atomic.Int32
	f := newFixture(t, fixtureOpts{clientSecret: "wrong"}, echo("ping", &runs, nil))
	err := f.cli.Call(t.Context(), "main", echo("ping", nil, nil), nil, nil, nil)
	if me := asMatrix(t, err); me.Status != 403 || me.Code != "M_FORBIDDEN" {
		t.Fatalf("got %v, want 403 M_FORBIDDEN", err)
	}
	if runs.Load() != 0 {
		t.Fatal("handler ran for an unauthenticated call")
	}
}

func TestNoSecretMode(t *testing.T) {
	var runs atomic.Int32
	f := newFixture(t, fixtureOpts{noSecret: true}, echo("ping", &runs, nil))
	if status, body := f.raw(t, http.MethodPost, "/_synapse/replication/ping", nil, ""); status != 200 {
		t.Fatalf("no header: got %d %v, want 200", status, body)
	}
	if status, body := f.raw(t, http.MethodPost, "/_synapse/replication/ping", bearer(), ""); status != 200 {
		t.Fatalf("stray header: got %d %v, want 200", status, body)
	}
	var out echoed
	if err := f.cli.Call(t.Context(), "main", echo("ping", nil, nil), nil, map[string]int{"n": 1}, &out); err != nil {
		t.Fatal(err)
	}
	if out.Caller != "worker1" || out.Body["n"] != float64(1) {
		t.Fatalf("got %+v", out)
	}
}

func TestIdempotentRetryReplaysFirstResponse(t *testing.T) {
	var runs atomic.Int32
	f := newFixture(t, fixtureOpts{}, echo("put", &runs, func(e *replication.Endpoint) {
		e.Method, e.PathArgs, e.Idempotent = http.MethodPut, []string{"room"}, true
	}))
	s1, b1 := f.raw(t, http.MethodPut, "/_synapse/replication/put/!r:hs/txn1", bearer(), `{"v":1}`)
	s2, b2 := f.raw(t, http.MethodPut, "/_synapse/replication/put/!r:hs/txn1", bearer(), `{"v":1}`)
	if s1 != 200 || s2 != 200 || b1["run"] != float64(1) || b2["run"] != float64(1) {
		t.Fatalf("got %d %v then %d %v, want run 1 twice", s1, b1, s2, b2)
	}
	_, b3 := f.raw(t, http.MethodPut, "/_synapse/replication/put/!r:hs/txn2", bearer(), `{"v":1}`)
	if b3["run"] != float64(2) {
		t.Fatalf("new txn id: got %v, want run 2", b3)
	}
	if n := runs.Load(); n != 2 {
		t.Fatalf("handler ran %d times, want 2", n)
	}
}

func TestIdempotentConcurrentDuplicatesRunOnce(t *testing.T) {
	var runs atomic.Int32
	release := make(chan struct{})
	e := replication.Endpoint{Name: "slow", Idempotent: true, Handle: func(context.Context, *replication.Request) (any, error) {
		n := runs.Add(1)
		<-release
		return map[string]any{"run": n}, nil
	}}
	arrived := make(chan struct{}, 8)
	f := newFixture(t, fixtureOpts{wrap: func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { arrived <- struct{}{}; h.ServeHTTP(w, r) })
	}}, e)
	const dups = 4
	type result struct {
		status int
		body   map[string]any
	}
	results := make(chan result, dups)
	for range dups {
		go func() {
			s, b := f.raw(t, http.MethodPost, "/_synapse/replication/slow/same-txn", bearer(), "{}")
			results <- result{s, b}
		}()
	}
	for range dups {
		recv(t, arrived, "duplicate requests to arrive")
	}
	close(release)
	for range dups {
		r := recv(t, results, "responses")
		if r.status != 200 || r.body["run"] != float64(1) {
			t.Fatalf("got %d %v, want 200 run 1", r.status, r.body)
		}
	}
	if n := runs.Load(); n != 1 {
		t.Fatalf("handler ran %d times, want 1", n)
	}
}

func TestIdempotentErrorsAreNotReplayed(t *testing.T) {
	var runs atomic.Int32
	e := replication.Endpoint{Name: "flaky", Idempotent: true, Handle: func(context.Context, *replication.Request) (any, error) {
		if runs.Add(1) == 1 {
			return nil, mxhttp.Forbidden("not yet")
		}
		return map[string]any{"ok": true}, nil
	}}
	f := newFixture(t, fixtureOpts{}, e)
	if s, b := f.raw(t, http.MethodPost, "/_synapse/replication/flaky/t", bearer(), "{}"); s != 403 {
		t.Fatalf("first: got %d %v, want 403", s, b)
	}
	if s, b := f.raw(t, http.MethodPost, "/_synapse/replication/flaky/t", bearer(), "{}"); s != 200 || b["ok"] != true {
		t.Fatalf("retry: got %d %v, want 200 (a failure must not be replayed)", s, b)
	}
}

func TestClientReusesTxnIDAcrossRetries(t *testing.T) {
	var runs atomic.Int32
	var mu sync.Mutex
	var paths []string
	f := newFixture(t, fixtureOpts{wrap: func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			paths = append(paths, r.URL.EscapedPath())
			first := len(paths) == 1
			mu.Unlock()
			if first { // as a restarting load balancer would answer
				w.WriteHeader(http.StatusServiceUnavailable)
				return
			}
			h.ServeHTTP(w, r)
		})
	}}, echo("idem", &runs, func(e *replication.Endpoint) { e.Idempotent = true }))
	var out echoed
	if err := f.cli.Call(t.Context(), "main", echo("idem", nil, func(e *replication.Endpoint) { e.Idempotent = true }),
		nil, nil, &out); err != nil {
		t.Fatal(err)
	}
	seen := func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(paths)
	}
	if p := seen(); len(p) != 2 || p[0] != p[1] || !strings.HasPrefix(p[0], "/_synapse/replication/idem/") {
		t.Fatalf("request paths %q, want the same idem/<txn> twice", p)
	}
	if runs.Load() != 1 || out.Run != 1 {
		t.Fatalf("runs %d, out %+v", runs.Load(), out)
	}
	// A second Call is a new transaction.
	if err := f.cli.Call(t.Context(), "main", echo("idem", nil, func(e *replication.Endpoint) { e.Idempotent = true }),
		nil, nil, &out); err != nil {
		t.Fatal(err)
	}
	if p := seen(); out.Run != 2 || len(p) != 3 || p[2] == p[0] {
		t.Fatalf("second call: out %+v, paths %q", out, p)
	}
}

func TestTimedOutAttemptJoinsInFlightRun(t *testing.T) {
	var runs atomic.Int32
	release := make(chan struct{})
	e := replication.Endpoint{Name: "slow", Idempotent: true, Handle: func(context.Context, *replication.Request) (any, error) {
		runs.Add(1)
		<-release
		return map[string]any{"done": true}, nil
	}}
	arrivals := make(chan string, 16)
	f := newFixture(t, fixtureOpts{wrap: func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { arrivals <- r.URL.Path; h.ServeHTTP(w, r) })
	}}, e)
	var releaseOnce sync.Once
	t.Cleanup(func() { releaseOnce.Do(func() { close(release) }) }) // before the server's Close
	done := make(chan error, 1)
	var out map[string]bool
	go func() {
		done <- f.cli.Call(t.Context(), "main", e, nil, nil, &out, replication.WithAttemptTimeout(100*time.Millisecond))
	}()
	p1 := recv(t, arrivals, "first attempt")
	p2 := recv(t, arrivals, "retry after the attempt timed out")
	if p1 != p2 {
		t.Fatalf("retry path %s differs from %s", p2, p1)
	}
	releaseOnce.Do(func() { close(release) })
	if err := recv(t, done, "call"); err != nil {
		t.Fatal(err)
	}
	if !out["done"] || runs.Load() != 1 {
		t.Fatalf("out %v, runs %d; want the first run's answer, one run", out, runs.Load())
	}
}

func TestWithoutTimeoutRetryGivesUp(t *testing.T) {
	var runs atomic.Int32
	release := make(chan struct{})
	e := replication.Endpoint{Name: "slow", Handle: func(context.Context, *replication.Request) (any, error) {
		runs.Add(1)
		<-release
		return nil, nil
	}}
	f := newFixture(t, fixtureOpts{}, e)
	t.Cleanup(func() { close(release) })
	err := f.cli.Call(t.Context(), "main", e, nil, nil, nil,
		replication.WithAttemptTimeout(100*time.Millisecond), replication.WithoutTimeoutRetry())
	if me := asMatrix(t, err); me.Status != 503 || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want 503 wrapping the deadline", err)
	}
	if n := runs.Load(); n != 1 {
		t.Fatalf("handler ran %d times, want 1", n)
	}
}

func TestNonIdempotentRunsEachTime(t *testing.T) {
	var runs atomic.Int32
	e := echo("notify", &runs, nil)
	f := newFixture(t, fixtureOpts{}, e)
	for want := int32(1); want <= 3; want++ {
		var out echoed
		if err := f.cli.Call(t.Context(), "main", e, nil, nil, &out); err != nil {
			t.Fatal(err)
		}
		if out.Run != want {
			t.Fatalf("run %d, want %d", out.Run, want)
		}
	}
}

func TestRetriesUntilServerComesUp(t *testing.T) {
	// A Unix socket that does not exist yet: the worker started before the
	// instance it calls. This also covers instance_map "path" locations.
	dir, err := os.MkdirTemp("", "rpc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "main.sock")
	logs := newLogRecorder()
	var runs atomic.Int32
	e := echo("hello", &runs, nil)
	cli := replication.NewClient(replication.InstanceLookup(map[string]config.InstanceLocation{"master": {Path: sock}}),
		testSecret, "worker1", newRegistry(t, "worker1"), slog.New(logs))
	t.Cleanup(cli.CloseIdleConnections)
	done := make(chan error, 1)
	var out echoed
	go func() {
		done <- cli.Call(t.Context(), "main", e, map[string]string{}, map[string]string{"hi": "there"}, &out)
	}()
	logs.waitFor(t, "retrying replication call")

	srv := replication.NewServer(testSecret, newRegistry(t, "main"), discard())
	srv.Register(e)
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: srv}
	go hs.Serve(ln)
	t.Cleanup(func() { hs.Close() })

	if err := recv(t, done, "call"); err != nil {
		t.Fatal(err)
	}
	if out.Run != 1 || out.Body["hi"] != "there" {
		t.Fatalf("got %+v", out)
	}
}

func TestRetriesOn503(t *testing.T) {
	var runs atomic.Int32
	e := replication.Endpoint{Name: "busy", Handle: func(context.Context, *replication.Request) (any, error) {
		if n := runs.Add(1); n <= 2 {
			return nil, mxhttp.WithCode(503, "M_UNKNOWN", "busy %d", n)
		}
		return map[string]any{"ok": true}, nil
	}}
	f := newFixture(t, fixtureOpts{}, e)
	var out map[string]bool
	if err := f.cli.Call(t.Context(), "main", e, nil, nil, &out); err != nil {
		t.Fatal(err)
	}
	if !out["ok"] || runs.Load() != 3 {
		t.Fatalf("out %v after %d runs, want ok after 3", out, runs.Load())
	}
}

func TestGivesUpAfterBudget(t *testing.T) {
	check := func(t *testing.T, err error) {
		t.Helper()
		me := asMatrix(t, err)
		if me.Status != 503 || me.Code != "M_UNKNOWN" || !errors.Is(err, replication.ErrUnavailable) {
			t.Fatalf("got %v, want 503 M_UNKNOWN wrapping ErrUnavailable", err)
		}
		// What the client of the original request receives.
		rec := httptest.NewRecorder()
		mxhttp.NewServer(discard()).Handle(func(http.ResponseWriter, *http.Request) error { return err }).
			ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
		var body map[string]any
		_ = json.Unmarshal(rec.Body.Bytes(), &body)
		if rec.Code != 503 || body["errcode"] != "M_UNKNOWN" || rec.Header().Get("Retry-After") == "" {
			t.Fatalf("HTTP layer answered %d %s (Retry-After %q), want 503 M_UNKNOWN with Retry-After",
				rec.Code, rec.Body, rec.Header().Get("Retry-After"))
		}
	}
	t.Run("always 503", func(t *testing.T) {
		var runs atomic.Int32
		e := replication.Endpoint{Name: "down", Handle: func(context.Context, *replication.Request) (any, error) {
			runs.Add(1)
			return nil, mxhttp.WithCode(503, "M_UNKNOWN", "overloaded")
		}}
		f := newFixture(t, fixtureOpts{}, e)
		start := time.Now()
		err := f.cli.Call(t.Context(), "main", e, nil, nil, nil, replication.WithBudget(700*time.Millisecond))
		check(t, err)
		if runs.Load() < 2 || time.Since(start) > waitFor {
			t.Fatalf("%d attempts in %v", runs.Load(), time.Since(start))
		}
	})
	t.Run("connection refused", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		loc := locationOf(t, "http://"+ln.Addr().String())
		ln.Close()
		cli := replication.NewClient(replication.InstanceLookup(map[string]config.InstanceLocation{"main": loc}),
			testSecret, "worker1", newRegistry(t, "worker1"), discard())
		err = cli.Call(t.Context(), "main", echo("x", nil, nil), nil, nil, nil, replication.WithBudget(400*time.Millisecond))
		check(t, err)
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("%v does not wrap the last failure (connection refused)", err)
		}
	})
	t.Run("context ends", func(t *testing.T) {
		e := replication.Endpoint{Name: "down", Handle: func(context.Context, *replication.Request) (any, error) {
			return nil, mxhttp.WithCode(503, "M_UNKNOWN", "overloaded")
		}}
		f := newFixture(t, fixtureOpts{}, e)
		ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
		defer cancel()
		err := f.cli.Call(ctx, "main", e, nil, nil, nil)
		check(t, err)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("%v does not wrap the context's error", err)
		}
	})
}

func TestRemoteMatrixErrorsPropagate(t *testing.T) {
	for _, tc := range []struct {
		name   string
		fail   func() error
		status int
		code   string
		msg    string
	}{
		{"forbidden", func() error { return mxhttp.Forbidden("user @a:hs not in room") }, 403, "M_FORBIDDEN", "user @a:hs not in room"},
		{"wrapped", func() error { return fmt.Errorf("persist: %w", mxhttp.WithCode(409, "M_CONFLICT", "partial state")) },
			409, "M_CONFLICT", "partial state"},
		{"rate limited", func() error { return mxhttp.LimitExceeded(1500) }, 429, "M_LIMIT_EXCEEDED", "Too many requests"},
		{"plain error", func() error { return errors.New("database on fire") }, 500, "M_UNKNOWN", "Internal server error"},
		{"panic", func() error { panic("boom") }, 500, "M_UNKNOWN", "Internal server error"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var runs atomic.Int32
			e := replication.Endpoint{Name: "fail", Handle: func(context.Context, *replication.Request) (any, error) {
				runs.Add(1)
				return nil, tc.fail()
			}}
			f := newFixture(t, fixtureOpts{}, e)
			err := f.cli.Call(t.Context(), "main", e, nil, nil, nil)
			me := asMatrix(t, err)
			if me.Status != tc.status || me.Code != tc.code || me.Message != tc.msg {
				t.Fatalf("got %d %s %q, want %d %s %q", me.Status, me.Code, me.Message, tc.status, tc.code, tc.msg)
			}
			if tc.code == "M_LIMIT_EXCEEDED" && me.Extra["retry_after_ms"] != int64(1500) {
				t.Fatalf("extra %v lost retry_after_ms", me.Extra)
			}
			if strings.Contains(me.Message, "fire") {
				t.Fatal("internal cause leaked to the caller")
			}
			if n := runs.Load(); n != 1 {
				t.Fatalf("handler ran %d times, want 1 (not retried)", n)
			}
		})
	}
}

func TestServerWaitsForCallerPositions(t *testing.T) {
	ran := make(chan int64, 1)
	var f *fixture
	e := replication.Endpoint{Name: "send_events", WaitForStreams: true,
		Handle: func(_ context.Context, req *replication.Request) (any, error) {
			ran <- f.srvReg.WriterPosition(streams.Events, "worker1")
			if strings.Contains(string(req.Body), "_INT_STREAM_POS") {
				return nil, fmt.Errorf("positions not stripped: %s", req.Body)
			}
			return map[string]any{"body": req.Body}, nil
		}}
	arrived := make(chan struct{}, 1)
	f = newFixture(t, fixtureOpts{wrap: func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { arrived <- struct{}{}; h.ServeHTTP(w, r) })
	}}, e)
	// worker1 wrote events up to 5; main has not heard of it yet.
	f.cliReg.Advance(streams.Events, "worker1", 5)
	done := make(chan error, 1)
	var out map[string]map[string]any
	go func() {
		// No WithStreamPositions: a WaitForStreams endpoint gets the
		// positions of every stream the caller writes.
		done <- f.cli.Call(t.Context(), "main", e, nil, map[string]any{"event": "$e"}, &out)
	}()
	recv(t, arrived, "request")
	select {
	case p := <-ran:
		t.Fatalf("handler ran at position %d, before the caller's 5", p)
	case <-time.After(quiet):
	}
	go f.srvReg.Advance(streams.Events, "worker1", 5) // as replication from worker1 would
	if p := recv(t, ran, "handler"); p < 5 {
		t.Fatalf("handler saw position %d, want >= 5", p)
	}
	if err := recv(t, done, "call"); err != nil {
		t.Fatal(err)
	}
	if len(out["body"]) != 1 || out["body"]["event"] != "$e" {
		t.Fatalf("handler body %v, want only the caller's keys", out["body"])
	}
}

func TestServerWaitTimesOutAndProceeds(t *testing.T) {
	var runs atomic.Int32
	e := echo("send", &runs, func(e *replication.Endpoint) { e.WaitForStreams = true })
	f := newFixture(t, fixtureOpts{serverOpts: []replication.ServerOption{replication.ServerWaitTimeout(50 * time.Millisecond)}}, e)
	f.cliReg.Advance(streams.Events, "worker1", 9) // never reaches main's registry
	if err := f.cli.Call(t.Context(), "main", e, nil, nil, nil, replication.WithStreamPositions(streams.Events)); err != nil {
		t.Fatal(err)
	}
	if runs.Load() != 1 {
		t.Fatal("handler did not run after the wait timed out")
	}
}

func TestClientWaitsForResponsePositions(t *testing.T) {
	handled := make(chan struct{})
	var f *fixture
	e := replication.Endpoint{Name: "persist", Handle: func(context.Context, *replication.Request) (any, error) {
		f.srvReg.Advance(streams.Events, "main", 7)
		close(handled)
		return replication.WithPositions(map[string]any{"stream_id": 7}, replication.StreamPositions{streams.Events: 7}), nil
	}}
	f = newFixture(t, fixtureOpts{}, e)
	var advanced atomic.Bool
	type result struct {
		err      error
		advanced bool
	}
	done := make(chan result, 1)
	var out map[string]any
	go func() {
		err := f.cli.Call(t.Context(), "main", e, nil, nil, &out)
		done <- result{err, advanced.Load()}
	}()
	<-handled
	select {
	case r := <-done:
		t.Fatalf("Call returned (%v) before worker1's registry saw events at 7", r.err)
	case <-time.After(quiet):
	}
	advanced.Store(true)
	f.cliReg.Advance(streams.Events, "main", 7) // replication of main's write arrives
	r := recv(t, done, "call")
	if r.err != nil || !r.advanced {
		t.Fatalf("Call: err %v, returned after advance: %v", r.err, r.advanced)
	}
	if len(out) != 1 || out["stream_id"] != float64(7) {
		t.Fatalf("out %v, want only stream_id", out)
	}
}

func TestClientResponseWaitTimesOut(t *testing.T) {
	e := replication.Endpoint{Name: "persist", Handle: func(context.Context, *replication.Request) (any, error) {
		return replication.WithPositions(nil, replication.StreamPositions{streams.Events: 99}), nil
	}}
	f := newFixture(t, fixtureOpts{}, e)
	if err := f.cli.Call(t.Context(), "main", e, nil, nil, nil, replication.WithWaitTimeout(50*time.Millisecond)); err != nil {
		t.Fatalf("a position never seen should delay, not fail, the call: %v", err)
	}
}

func TestPositionsOnTheWire(t *testing.T) {
	var got replication.Request
	e := replication.Endpoint{Name: "wire", Handle: func(_ context.Context, req *replication.Request) (any, error) {
		got = *req
		return replication.WithPositions(map[string]int{"a": 1}, replication.StreamPositions{streams.Receipts: 3}), nil
	}}
	f := newFixture(t, fixtureOpts{}, e)
	status, body := f.raw(t, http.MethodPost, "/_synapse/replication/wire", bearer(),
		`{"x":1,"_INT_STREAM_POS":{"instance_name":"master","streams":{"events":0}}}`)
	if status != 200 || body["a"] != float64(1) {
		t.Fatalf("got %d %v", status, body)
	}
	pos, _ := body["_INT_STREAM_POS"].(map[string]any)
	if pos["instance_name"] != "main" || pos["streams"].(map[string]any)["receipts"] != float64(3) {
		t.Fatalf("response positions %v", pos)
	}
	if string(got.Body) != `{"x":1}` || got.Caller != "main" {
		t.Fatalf("handler got body %s caller %q, want the body without positions from main", got.Body, got.Caller)
	}
}

func TestPathArgsRoundTrip(t *testing.T) {
	var runs atomic.Int32
	e := echo("send_event", &runs, func(e *replication.Endpoint) {
		e.PathArgs, e.Idempotent = []string{"room_id", "event_id"}, true
	})
	var rawPath string
	f := newFixture(t, fixtureOpts{wrap: func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { rawPath = r.URL.EscapedPath(); h.ServeHTTP(w, r) })
	}}, e)
	for _, args := range []map[string]string{
		{"room_id": "!abc:example.org", "event_id": "$ev/ent+id=="},
		{"room_id": "!x:[::1]:8448", "event_id": "$a?b#c%20d e/f\\g;h,é"},
		{"room_id": "!%2F:hs", "event_id": "$..."},
	} {
		var out echoed
		if err := f.cli.Call(t.Context(), "main", e, args, nil, &out); err != nil {
			t.Fatal(err)
		}
		if out.Args["room_id"] != args["room_id"] || out.Args["event_id"] != args["event_id"] {
			t.Fatalf("sent %q, handler got %q (path %s)", args, out.Args, rawPath)
		}
	}
	if err := f.cli.Call(t.Context(), "main", e, map[string]string{"room_id": "!a:hs"}, nil, nil); err == nil {
		t.Fatal("missing path arg accepted")
	}
	if err := f.cli.Call(t.Context(), "main", e, map[string]string{"room_id": "!a:hs", "event_id": ".."}, nil, nil); err == nil {
		t.Fatal("dot-dot path arg accepted")
	}
}

func TestRouting(t *testing.T) {
	var runs atomic.Int32
	f := newFixture(t, fixtureOpts{}, echo("one", &runs, func(e *replication.Endpoint) { e.PathArgs = []string{"a"} }))
	for _, tc := range []struct {
		name, method, path string
		status             int
		code               string
	}{
		{"unknown endpoint", http.MethodPost, "/_synapse/replication/nope", 404, "M_UNRECOGNIZED"},
		{"too few args", http.MethodPost, "/_synapse/replication/one", 404, "M_UNRECOGNIZED"},
		{"too many args", http.MethodPost, "/_synapse/replication/one/a/b", 404, "M_UNRECOGNIZED"},
		{"trailing slash", http.MethodPost, "/_synapse/replication/one/a/", 404, "M_UNRECOGNIZED"},
		{"outside prefix", http.MethodPost, "/_matrix/client/v3/one/a", 404, "M_UNRECOGNIZED"},
		{"wrong method", http.MethodGet, "/_synapse/replication/one/a", 405, "M_UNRECOGNIZED"},
		{"ok", http.MethodPost, "/_synapse/replication/one/a", 200, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, body := f.raw(t, tc.method, tc.path, bearer(), "")
			if status != tc.status || (tc.code != "" && body["errcode"] != tc.code) {
				t.Fatalf("got %d %v, want %d %s", status, body, tc.status, tc.code)
			}
		})
	}
}

func TestBodyChecks(t *testing.T) {
	var runs atomic.Int32
	e := echo("big", &runs, nil)
	f := newFixture(t, fixtureOpts{serverOpts: []replication.ServerOption{replication.ServerMaxBody(1024)}}, e)
	err := f.cli.Call(t.Context(), "main", e, nil, map[string]string{"blob": strings.Repeat("a", 2048)}, nil)
	if me := asMatrix(t, err); me.Status != 413 || me.Code != "M_TOO_LARGE" {
		t.Fatalf("oversize: got %v, want 413 M_TOO_LARGE", err)
	}
	for _, body := range []string{`{"a":`, `[1,2]`, `"str"`} {
		if status, b := f.raw(t, http.MethodPost, "/_synapse/replication/big", bearer(), body); status != 400 || b["errcode"] != "M_NOT_JSON" {
			t.Fatalf("body %s: got %d %v, want 400 M_NOT_JSON", body, status, b)
		}
	}
	if runs.Load() != 0 {
		t.Fatal("handler ran for a rejected body")
	}
	if err := f.cli.Call(t.Context(), "main", e, nil, []int{1}, nil); err == nil {
		t.Fatal("client sent a non-object body")
	}
}

func TestGETWithQuery(t *testing.T) {
	var runs atomic.Int32
	e := echo("get_repl_stream_updates", &runs, func(e *replication.Endpoint) {
		e.Method, e.PathArgs = http.MethodGet, []string{"stream_name"}
	})
	f := newFixture(t, fixtureOpts{}, e)
	var out echoed
	q := url.Values{"from_token": {"5"}, "upto_token": {"9"}, "instance_name": {"worker 1&x"}}
	if err := f.cli.Call(t.Context(), "main", e, map[string]string{"stream_name": "typing"}, nil, &out,
		replication.WithQuery(q)); err != nil {
		t.Fatal(err)
	}
	if out.Args["stream_name"] != "typing" || out.Query.Get("from_token") != "5" || out.Query.Get("instance_name") != "worker 1&x" ||
		out.Caller != "worker1" {
		t.Fatalf("got %+v", out)
	}
	if err := f.cli.Call(t.Context(), "main", e, map[string]string{"stream_name": "typing"}, map[string]int{}, nil); err == nil {
		t.Fatal("GET with a body accepted")
	}
}

func TestBadTargets(t *testing.T) {
	lookup := replication.InstanceLookup(map[string]config.InstanceLocation{"main": {Host: "127.0.0.1", Port: 1}})
	e := echo("x", nil, nil)
	for _, tc := range []struct {
		self, target string
		want         error
	}{
		{"worker1", "worker1", replication.ErrSelfCall},
		{"main", "master", replication.ErrSelfCall},
		{"master", "main", replication.ErrSelfCall},
		{"worker1", "worker9", replication.ErrUnknownInstance},
	} {
		cli := replication.NewClient(lookup, "", tc.self, nil, discard())
		if err := cli.Call(t.Context(), tc.target, e, nil, nil, nil); !errors.Is(err, tc.want) {
			t.Errorf("%s calling %s: got %v, want %v", tc.self, tc.target, err, tc.want)
		}
	}
}

func TestInstanceLookupMasterAlias(t *testing.T) {
	loc := config.InstanceLocation{Host: "h", Port: 1}
	if got, ok := replication.InstanceLookup(map[string]config.InstanceLocation{"master": loc})("main"); !ok || got != loc {
		t.Fatal("main not found under master")
	}
	if got, ok := replication.InstanceLookup(map[string]config.InstanceLocation{"main": loc})("master"); !ok || got != loc {
		t.Fatal("master not found under main")
	}
}

func TestRegisterRejectsBadEndpoints(t *testing.T) {
	h := func(context.Context, *replication.Request) (any, error) { return nil, nil }
	for _, tc := range []struct {
		name string
		e    replication.Endpoint
	}{
		{"empty name", replication.Endpoint{Handle: h}},
		{"slash in name", replication.Endpoint{Name: "a/b", Handle: h}},
		{"method", replication.Endpoint{Name: "a", Method: http.MethodDelete, Handle: h}},
		{"duplicate arg", replication.Endpoint{Name: "a", PathArgs: []string{"x", "x"}, Handle: h}},
		{"nil handle", replication.Endpoint{Name: "a"}},
		{"registered twice", replication.Endpoint{Name: "dup", Handle: h}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := replication.NewServer("", nil, discard())
			srv.Register(replication.Endpoint{Name: "dup", Handle: h})
			defer func() {
				if recover() == nil {
					t.Fatal("no panic")
				}
			}()
			srv.Register(tc.e)
		})
	}
}

// A target that refuses connections (a writer that is down) fails the call
// after a few quick retries, long before the budget or the caller's
// deadline, with a retryable 503; while it is presumed down, the next call
// makes a single attempt.
func TestUnreachableTargetFailsFast(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	loc := locationOf(t, "http://"+ln.Addr().String())
	ln.Close()
	cli := replication.NewClient(replication.InstanceLookup(map[string]config.InstanceLocation{"main": loc}),
		testSecret, "worker1", newRegistry(t, "worker1"), discard())
	// The default budget is a minute; the context's deadline is what would
	// end the call if the unreachable budget did not.
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
	defer cancel()
	for i, wantAttempts := range []string{"", "1 attempt(s)"} {
		err := cli.Call(ctx, "main", echo("x", nil, nil), nil, nil, nil)
		me := asMatrix(t, err)
		if me.Status != 503 || me.Code != "M_UNKNOWN" || me.RetryAfter <= 0 || !errors.Is(err, replication.ErrUnavailable) {
			t.Fatalf("call %d: got %v (Retry-After %v), want 503 M_UNKNOWN with Retry-After", i, err, me.RetryAfter)
		}
		if errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil {
			t.Fatalf("call %d: ended by the caller's deadline, not by the unreachable budget: %v", i, err)
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("call %d: %v does not wrap the refused connection", i, err)
		}
		if wantAttempts != "" && !strings.Contains(err.Error(), wantAttempts) {
			t.Fatalf("call %d while the target is presumed down: %v, want %s", i, err, wantAttempts)
		}
	}
}
