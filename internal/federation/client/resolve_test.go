package client_test

import (
	"context"
	"errors"
	"net/http"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"ganglion/internal/federation/client"
	"ganglion/internal/testutil/testca"
)

// wellKnownServer answers /.well-known/matrix/server per Host and counts
// fetches per host.
type wellKnownServer struct {
	mu      sync.Mutex
	answers map[string]func(w http.ResponseWriter, r *http.Request)
	fetches map[string]int
}

func (s *wellKnownServer) set(host string, f func(w http.ResponseWriter, r *http.Request)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.answers[host] = f
}

func (s *wellKnownServer) json(host, body string, headers ...string) {
	s.set(host, func(w http.ResponseWriter, r *http.Request) {
		for i := 0; i+1 < len(headers); i += 2 {
			w.Header().Set(headers[i], headers[i+1])
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(body))
	})
}

func (s *wellKnownServer) count(host string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fetches[host]
}

func (s *wellKnownServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	host, _, _ := strings.Cut(r.Host, ":")
	s.mu.Lock()
	s.fetches[host]++
	f := s.answers[host]
	s.mu.Unlock()
	if f == nil || (r.URL.Path != "/.well-known/matrix/server" && !strings.HasPrefix(r.URL.Path, "/moved")) {
		http.NotFound(w, r)
		return
	}
	f(w, r)
}

type resolveEnv struct {
	ca    *testca.CA
	dns   *fakeDNS
	wk    *wellKnownServer
	port  int
	clock *clock
	c     *client.Client
}

// newResolveEnv: every *.test name resolves to 127.0.0.1, where one TLS
// server with a *.test certificate answers .well-known for all of them.
func newResolveEnv(t *testing.T) *resolveEnv {
	e := &resolveEnv{ca: testca.New(t), dns: newDNS(),
		wk:    &wellKnownServer{answers: map[string]func(http.ResponseWriter, *http.Request){}, fetches: map[string]int{}},
		clock: &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}}
	_, e.port = startTLS(t, e.ca, e.wk, "*.test")
	e.c = newClient(t, client.Options{DNS: e.dns, IPFilter: loopbackAllowed(t), RootCAs: e.ca.Pool(),
		WellKnownPort: e.port, Now: e.clock.now})
	return e
}

func (e *resolveEnv) host(names ...string) {
	for _, n := range names {
		e.dns.host(n, "127.0.0.1")
	}
}

func TestResolveServerNames(t *testing.T) {
	e := newResolveEnv(t)
	e.host("explicit.test", "ip.test", "ipport.test", "hostport.test", "srv.test", "legacy.test", "plain.test",
		"nowk-srv.test", "nowk-legacy.test", "nowk.test", "both.test", "prio.test", "badwk.test", "badjson.test", "noserver.test")
	e.wk.json("ip.test", `{"m.server": "5.6.7.8"}`)
	e.wk.json("ipport.test", `{"m.server": "[2001:db8::1]:9000"}`)
	e.wk.json("hostport.test", `{"m.server": "target.test:1234"}`)
	e.wk.json("srv.test", `{"m.server": "srvtarget.test"}`)
	e.dns.addSRV("matrix-fed", "srvtarget.test", "real.test.", 7777, 10)
	e.wk.json("legacy.test", `{"m.server": "legacytarget.test"}`)
	e.dns.addSRV("matrix", "legacytarget.test", "old.test.", 8000, 10)
	e.wk.json("plain.test", `{"m.server": "delegated.test"}`)
	e.dns.addSRV("matrix-fed", "nowk-srv.test", "fed.test.", 8449, 10)
	e.dns.addSRV("matrix", "nowk-legacy.test", "oldfed.test.", 8450, 10)
	// _matrix-fed wins over the deprecated _matrix.
	e.dns.addSRV("matrix-fed", "both.test", "new.test.", 1, 10)
	e.dns.addSRV("matrix", "both.test", "old.test.", 2, 10)
	e.dns.addSRV("matrix-fed", "prio.test", "second.test.", 20, 2)
	e.dns.addSRV("matrix-fed", "prio.test", "first.test.", 10, 1)
	e.wk.set("badwk.test", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(500) })
	e.wk.json("badjson.test", `{"m.server": `)
	e.wk.json("noserver.test", `{"m.server": "bad name!"}`)

	for _, tc := range []struct {
		name    string
		targets []client.Target
		host    string
		tlsName string
	}{
		{"1.2.3.4", []client.Target{{Host: "1.2.3.4", Port: 8448}}, "1.2.3.4", "1.2.3.4"},
		{"1.2.3.4:99", []client.Target{{Host: "1.2.3.4", Port: 99}}, "1.2.3.4:99", "1.2.3.4"},
		{"[2001:db8::2]", []client.Target{{Host: "2001:db8::2", Port: 8448}}, "[2001:db8::2]", "2001:db8::2"},
		{"[2001:db8::2]:99", []client.Target{{Host: "2001:db8::2", Port: 99}}, "[2001:db8::2]:99", "2001:db8::2"},
		{"explicit.test:1234", []client.Target{{Host: "explicit.test", Port: 1234}}, "explicit.test:1234", "explicit.test"},
		// 3.1: delegated to an IP literal; Host is the IP (with port if given).
		{"ip.test", []client.Target{{Host: "5.6.7.8", Port: 8448}}, "5.6.7.8", "5.6.7.8"},
		{"ipport.test", []client.Target{{Host: "2001:db8::1", Port: 9000}}, "[2001:db8::1]:9000", "2001:db8::1"},
		// 3.2: delegated hostname with port.
		{"hostport.test", []client.Target{{Host: "target.test", Port: 1234}}, "target.test:1234", "target.test"},
		// 3.3: delegated hostname, SRV _matrix-fed on it.
		{"srv.test", []client.Target{{Host: "real.test", Port: 7777}}, "srvtarget.test", "srvtarget.test"},
		// 3.4: the deprecated _matrix SRV.
		{"legacy.test", []client.Target{{Host: "old.test", Port: 8000}}, "legacytarget.test", "legacytarget.test"},
		// 3.5: no SRV: the delegated name on 8448.
		{"plain.test", []client.Target{{Host: "delegated.test", Port: 8448}}, "delegated.test", "delegated.test"},
		// 4–6: no .well-known.
		{"nowk-srv.test", []client.Target{{Host: "fed.test", Port: 8449}}, "nowk-srv.test", "nowk-srv.test"},
		{"nowk-legacy.test", []client.Target{{Host: "oldfed.test", Port: 8450}}, "nowk-legacy.test", "nowk-legacy.test"},
		{"nowk.test", []client.Target{{Host: "nowk.test", Port: 8448}}, "nowk.test", "nowk.test"},
		{"both.test", []client.Target{{Host: "new.test", Port: 1}}, "both.test", "both.test"},
		{"prio.test", []client.Target{{Host: "first.test", Port: 10}, {Host: "second.test", Port: 20}}, "prio.test", "prio.test"},
		// An invalid .well-known falls through to step 4.
		{"badwk.test", []client.Target{{Host: "badwk.test", Port: 8448}}, "badwk.test", "badwk.test"},
		{"badjson.test", []client.Target{{Host: "badjson.test", Port: 8448}}, "badjson.test", "badjson.test"},
		{"noserver.test", []client.Target{{Host: "noserver.test", Port: 8448}}, "noserver.test", "noserver.test"},
		// A host .well-known cannot reach at all (no DNS) too.
		{"unknown.test", []client.Target{{Host: "unknown.test", Port: 8448}}, "unknown.test", "unknown.test"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := e.c.Resolver().Resolve(context.Background(), tc.name)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got.Targets, tc.targets) || got.Host != tc.host || got.TLSName != tc.tlsName {
				t.Fatalf("got targets %v host %q tls %q; want %v %q %q", got.Targets, got.Host, got.TLSName, tc.targets, tc.host, tc.tlsName)
			}
		})
	}
	// Steps 1 and 2 never look for delegation.
	if n := e.wk.count("explicit.test"); n != 0 {
		t.Errorf("explicit port: %d .well-known fetches", n)
	}
	// Delegation with a port skips SRV.
	if n := e.dns.srvCount("_matrix-fed._tcp.target.test"); n != 0 {
		t.Errorf("delegated host:port: %d SRV lookups", n)
	}
}

func TestResolveSRVServiceUnavailable(t *testing.T) {
	e := newResolveEnv(t)
	e.dns.addSRV("matrix-fed", "none.test", ".", 0, 0)
	if _, err := e.c.Resolver().Resolve(context.Background(), "none.test"); !errors.Is(err, client.ErrServiceUnavailable) {
		t.Fatalf("got %v, want ErrServiceUnavailable", err)
	}
}

func TestResolveRefusesInvalidNames(t *testing.T) {
	e := newResolveEnv(t)
	for _, n := range []string{"", "a b", "x.test:0", "[::1"} {
		if _, err := e.c.Resolver().Resolve(context.Background(), n); err == nil {
			t.Errorf("%q resolved", n)
		}
	}
}

func TestWellKnownCaching(t *testing.T) {
	e := newResolveEnv(t)
	e.host("a.test", "b.test", "c.test", "d.test")
	e.wk.json("a.test", `{"m.server": "x.test:1"}`, "Cache-Control", "public, max-age=7200")
	e.wk.json("b.test", `{"m.server": "x.test:1"}`)                                // default 24 h
	e.wk.json("c.test", `{"m.server": "x.test:1"}`, "Cache-Control", "max-age=10") // raised to 1 h
	e.wk.json("d.test", `{"m.server": "x.test:1"}`, "Cache-Control", "max-age=9999999")
	resolve := func(name string) {
		t.Helper()
		if _, err := e.c.Resolver().Resolve(context.Background(), name); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []string{"a.test", "b.test", "c.test", "d.test"} {
		resolve(n)
		resolve(n)
	}
	want := func(host string, n int) {
		t.Helper()
		if got := e.wk.count(host); got != n {
			t.Fatalf("%s: %d fetches, want %d", host, got, n)
		}
	}
	// Answers are refreshed after 80% of their cache period, so that a
	// failed refresh can fall back on the answer still valid.
	want("a.test", 1)
	e.clock.advance(47 * time.Minute)
	resolve("c.test")
	want("c.test", 1)
	e.clock.advance(2 * time.Minute) // 49 min: 80% of c's 1 h minimum
	resolve("a.test")
	resolve("c.test")
	want("a.test", 1)
	want("c.test", 2)
	e.clock.advance(47 * time.Minute) // 96 min: 80% of a's 2 h
	resolve("a.test")
	want("a.test", 2)
	e.clock.advance(17*time.Hour + 37*time.Minute) // 19 h 13 min: past 80% of b's 24 h
	resolve("b.test")
	want("b.test", 2)
	e.clock.advance(19 * time.Hour) // 38 h 13 min
	resolve("d.test")
	want("d.test", 1)
	e.clock.advance(time.Hour) // 39 h 13 min: past 80% of the 48 h cap
	resolve("d.test")
	want("d.test", 2)
}

// A delegation whose refresh fails is kept until it expires; after that
// the server is resolved as undelegated.
func TestWellKnownKeptWhileRefreshFails(t *testing.T) {
	e := newResolveEnv(t)
	e.host("flaky.test")
	e.wk.json("flaky.test", `{"m.server": "x.test:1"}`)
	host := func() string {
		t.Helper()
		r, err := e.c.Resolver().Resolve(context.Background(), "flaky.test")
		if err != nil {
			t.Fatal(err)
		}
		return r.Host
	}
	if h := host(); h != "x.test:1" {
		t.Fatalf("Host %s", h)
	}
	e.wk.set("flaky.test", func(w http.ResponseWriter, r *http.Request) {
		hj, _ := w.(http.Hijacker)
		conn, _, _ := hj.Hijack()
		conn.Close()
	})
	e.clock.advance(20 * time.Hour) // past the refresh point, before expiry
	// (net/http retries a GET once when a reused connection drops, so one
	// refresh may reach the server twice.)
	if h := host(); h != "x.test:1" || e.wk.count("flaky.test") < 2 {
		t.Fatalf("failed refresh: Host %s after %d fetches, want the old delegation after a refresh", h, e.wk.count("flaky.test"))
	}
	fetched := e.wk.count("flaky.test")
	e.clock.advance(time.Minute)
	if h := host(); h != "x.test:1" || e.wk.count("flaky.test") != fetched {
		t.Fatalf("within the backoff: Host %s after %d fetches (%d before)", h, e.wk.count("flaky.test"), fetched)
	}
	e.clock.advance(4*time.Hour + time.Minute) // past the 24 h expiry
	if h := host(); h != "flaky.test" {
		t.Fatalf("expired delegation still used: Host %s", h)
	}
	// A host that now answers "no delegation" is believed at once.
	e.host("gone.test")
	e.wk.json("gone.test", `{"m.server": "x.test:1"}`)
	e.c.Resolver().Resolve(context.Background(), "gone.test")
	e.wk.set("gone.test", func(w http.ResponseWriter, r *http.Request) { http.NotFound(w, r) })
	e.clock.advance(20 * time.Hour)
	if r, _ := e.c.Resolver().Resolve(context.Background(), "gone.test"); r.Host != "gone.test" {
		t.Fatalf("delegation kept after a 404: Host %s", r.Host)
	}
}

func TestWellKnownErrorCaching(t *testing.T) {
	e := newResolveEnv(t)
	e.host("missing.test")
	e.wk.set("missing.test", func(w http.ResponseWriter, r *http.Request) { http.NotFound(w, r) })
	resolve := func(name string) {
		t.Helper()
		if _, err := e.c.Resolver().Resolve(context.Background(), name); err != nil {
			t.Fatal(err)
		}
	}
	// An invalid answer is cached for an hour.
	resolve("missing.test")
	e.clock.advance(59 * time.Minute)
	resolve("missing.test")
	if n := e.wk.count("missing.test"); n != 1 {
		t.Fatalf("404 refetched within the hour: %d fetches", n)
	}
	e.clock.advance(2 * time.Minute)
	resolve("missing.test")
	if n := e.wk.count("missing.test"); n != 2 {
		t.Fatalf("404 not refetched after the hour: %d fetches", n)
	}
	// A host that does not answer backs off: 2, 4, 8 … minutes.
	e.dns.host("down.test", "127.0.0.1")
	e.wk.set("down.test", func(w http.ResponseWriter, r *http.Request) {
		// A server that drops the connection: no answer at all.
		hj, _ := w.(http.Hijacker)
		conn, _, _ := hj.Hijack()
		conn.Close()
	})
	resolve("down.test")
	attempts := func() int { return e.wk.count("down.test") }
	if attempts() != 1 {
		t.Fatalf("%d attempts", attempts())
	}
	e.clock.advance(2*time.Minute + time.Second)
	resolve("down.test")
	if attempts() != 2 {
		t.Fatalf("no retry after 2 minutes: %d attempts", attempts())
	}
	e.clock.advance(2*time.Minute + time.Second)
	resolve("down.test")
	if attempts() != 2 {
		t.Fatalf("retried 2 minutes after the second failure (want 4): %d attempts", attempts())
	}
	e.clock.advance(2 * time.Minute)
	resolve("down.test")
	if attempts() != 3 {
		t.Fatalf("no retry 4 minutes after the second failure: %d attempts", attempts())
	}
	// The backoff stops growing at an hour.
	for i := 0; i < 8; i++ {
		e.clock.advance(time.Hour + time.Second)
		resolve("down.test")
	}
	if attempts() != 11 {
		t.Fatalf("backoff past an hour: %d attempts, want 11", attempts())
	}
}

func TestWellKnownRedirectsAndLimits(t *testing.T) {
	e := newResolveEnv(t)
	e.host("moved.test", "loop.test", "big.test", "far.test", "plainhttp.test")
	e.wk.set("moved.test", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/.well-known/matrix/server" {
			http.Redirect(w, r, "/moved/1", http.StatusFound)
			return
		}
		if r.URL.Path == "/moved/1" {
			http.Redirect(w, r, "/moved/2", http.StatusMovedPermanently)
			return
		}
		_, _ = w.Write([]byte(`{"m.server":"target.test:443"}`))
	})
	e.wk.set("loop.test", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/.well-known/matrix/server" {
			http.Redirect(w, r, "/moved/a", http.StatusFound)
			return
		}
		http.Redirect(w, r, "/.well-known/matrix/server", http.StatusFound)
	})
	e.wk.set("far.test", func(w http.ResponseWriter, r *http.Request) {
		n := len(r.URL.Path)
		http.Redirect(w, r, "/moved/"+strings.Repeat("x", n), http.StatusFound)
	})
	e.wk.set("plainhttp.test", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "http://plainhttp.test/x", http.StatusFound)
	})
	e.wk.json("big.test", `{"m.server":"target.test:443","pad":"`+strings.Repeat("a", 50<<10)+`"}`)
	for name, wantHost := range map[string]string{
		"moved.test": "target.test:443", "loop.test": "loop.test", "far.test": "far.test",
		"plainhttp.test": "plainhttp.test", "big.test": "big.test",
	} {
		got, err := e.c.Resolver().Resolve(context.Background(), name)
		if err != nil {
			t.Fatal(err)
		}
		if got.Host != wantHost {
			t.Errorf("%s: Host %q, want %q", name, got.Host, wantHost)
		}
	}
	if n := e.wk.count("far.test"); n != 10 {
		t.Errorf("far.test: %d requests, want 10 (the first and 9 redirects; the 10th redirect is refused)", n)
	}
}
