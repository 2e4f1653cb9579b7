package e2e_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"

	"ganglion/internal/testutil"
)

// Hardening: who a request comes from behind the router, what the
// listeners serve, and how the fleet behaves when a single writer is down.

// withLoginAddressLimit sets rc_login.address (the per-client-address
// login limit); the per-account limits stay out of the way.
func withLoginAddressLimit(perSecond, burst float64) configOption {
	return func(cfg map[string]any) {
		cfg["rc_login"] = map[string]any{
			"address":         map[string]any{"per_second": perSecond, "burst_count": burst},
			"account":         fastLimit(),
			"failed_attempts": fastLimit(),
		}
	}
}

// clientFrom is an HTTP client whose connections come from ip (any
// 127.0.0.0/8 address works on Linux loopback): a client on another
// machine, as far as the server can tell.
func clientFrom(t testing.TB, ip string) *http.Client {
	t.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 5 * time.Second}
	tr := &http.Transport{DialContext: d.DialContext, MaxIdleConnsPerHost: 4}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

// rawRequest sends one request with hc to base+path; body, if not nil, is
// encoded as JSON; header adds request headers.
func rawRequest(t testing.TB, ctx context.Context, hc *http.Client, method, base, path, token string, body any,
	header http.Header) response {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatalf("encode body: %v", err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, base+path, rd)
	if err != nil {
		t.Fatalf("build request: %v", err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("%s %s%s: %v", method, base, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: data}
}

func passwordLogin(localpart, pw string) map[string]any {
	return map[string]any{"type": "m.login.password", "password": pw,
		"identifier": map[string]any{"type": "m.id.user", "user": localpart}}
}

// TestLoginRateLimitPerClientBehindFront: behind the router (or nginx)
// every connection comes from the front, yet rc_login.address must count
// each client on its own: one client hammering the login with bad
// passwords is refused, and another client's correct login still works.
func TestLoginRateLimitPerClientBehindFront(t *testing.T) {
	t.Parallel()
	runDeployments(t, []string{engineFleetRouter, engineFleetNginx}, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		srv.register(t, ctx, "alice")
		srv.register(t, ctx, "bob")
		attacker := clientFrom(t, "127.0.0.2")
		limited := false
		for i := 0; i < 12 && !limited; i++ {
			r := rawRequest(t, ctx, attacker, "POST", srv.url, clientPath("login"), "", passwordLogin("alice", "wrong"), nil)
			switch r.status {
			case http.StatusForbidden:
			case http.StatusTooManyRequests:
				wantRawError(t, r, http.StatusTooManyRequests, "M_LIMIT_EXCEEDED")
				limited = true
			default:
				t.Fatalf("bad login %d: %d %s", i, r.status, truncate(r.body))
			}
		}
		if !limited {
			t.Fatalf("12 bad logins from one client were never rate limited")
		}
		other := clientFrom(t, "127.0.0.3")
		r := rawRequest(t, ctx, other, "POST", srv.url, clientPath("login"), "", passwordLogin("bob", password("bob")), nil)
		if r.status != http.StatusOK {
			t.Fatalf("bob's login from another address: %d %s, want 200", r.status, truncate(r.body))
		}
	}, withLoginAddressLimit(0.001, 2))
}

// TestForgedForwardedForIgnored: a client reaching a worker's port
// directly cannot dodge the per-address login limit with an
// X-Forwarded-For of its choosing; only the trusted proxy's header counts.
func TestForgedForwardedForIgnored(t *testing.T) {
	t.Parallel()
	srv := startServer(t, engineFleet, withLoginAddressLimit(0.001, 2))
	ctx := testContext(t)
	srv.register(t, ctx, "carol")
	worker := srv.fleet.clientURL(instWorker1)
	direct := clientFrom(t, "127.0.0.2")
	limited := false
	for i := 0; i < 8 && !limited; i++ {
		forged := http.Header{"X-Forwarded-For": {fmt.Sprintf("198.51.100.%d", i+1)}}
		r := rawRequest(t, ctx, direct, "POST", worker, clientPath("login"), "", passwordLogin("carol", "wrong"), forged)
		switch r.status {
		case http.StatusForbidden:
		case http.StatusTooManyRequests:
			limited = true
		default:
			t.Fatalf("bad login %d: %d %s", i, r.status, truncate(r.body))
		}
	}
	if !limited {
		t.Fatalf("8 bad logins from 127.0.0.2, each with a different forged X-Forwarded-For, were never rate limited")
	}
	// The trusted proxy (127.0.0.1) is believed: the same forged address
	// through it is a client of its own.
	viaProxy := http.Header{"X-Forwarded-For": {"198.51.100.1"}}
	r := rawRequest(t, ctx, clientFrom(t, "127.0.0.1"), "POST", worker, clientPath("login"), "",
		passwordLogin("carol", password("carol")), viaProxy)
	if r.status != http.StatusOK {
		t.Fatalf("login through the trusted proxy address: %d %s, want 200", r.status, truncate(r.body))
	}
}

// withListener adds a listener to the monolith's config.
func withListener(l map[string]any) configOption {
	return func(cfg map[string]any) {
		cfg["listeners"] = append(cfg["listeners"].([]any), l)
	}
}

// TestListenerResources: Go's profiles are served only on a listener that
// names the pprof resource, not with the metrics; requests for endpoints a
// listener does not serve are logged and counted.
func TestListenerResources(t *testing.T) {
	t.Parallel()
	metricsPort, pprofPort := freePort(t), freePort(t)
	srv := startServer(t, engineSQLite,
		withListener(httpListener(metricsPort, "metrics")),
		withListener(httpListener(pprofPort, "pprof")))
	ctx := testContext(t)
	metricsURL := fmt.Sprintf("http://127.0.0.1:%d", metricsPort)
	pprofURL := fmt.Sprintf("http://127.0.0.1:%d", pprofPort)
	hc := &http.Client{Timeout: 30 * time.Second}

	for _, base := range []string{srv.url, metricsURL} {
		r := rawRequest(t, ctx, hc, "GET", base, "/debug/pprof/", "", nil, nil)
		wantRawError(t, r, http.StatusNotFound, "M_UNRECOGNIZED")
	}
	if r := rawRequest(t, ctx, hc, "GET", pprofURL, "/debug/pprof/", "", nil, nil); r.status != http.StatusOK {
		t.Fatalf("/debug/pprof/ on the pprof listener: %d %s", r.status, truncate(r.body))
	}
	if r := rawRequest(t, ctx, hc, "GET", pprofURL, "/metrics", "", nil, nil); r.status != http.StatusNotFound {
		t.Fatalf("/metrics on the pprof-only listener: %d, want 404", r.status)
	}

	// Unknown endpoints: one not implemented anywhere, one on a listener
	// without its resource (the two /debug/pprof/ above), one wrong method.
	wantRawError(t, srv.do(t, ctx, "GET", "/_matrix/client/v3/no_such_endpoint?access_token=secret", "", nil),
		http.StatusNotFound, "M_UNRECOGNIZED")
	wantRawError(t, srv.do(t, ctx, "POST", "/_matrix/client/versions", "", []byte("{}")),
		http.StatusMethodNotAllowed, "M_UNRECOGNIZED")
	r := rawRequest(t, ctx, hc, "GET", metricsURL, "/metrics", "", nil, nil)
	m := regexp.MustCompile(`(?m)^ganglion_http_unrecognized_requests_total\{instance="main"\} (\d+)$`).FindSubmatch(r.body)
	if m == nil {
		t.Fatalf("no ganglion_http_unrecognized_requests_total in the metrics:\n%s", truncate(r.body))
	}
	if n, _ := strconv.Atoi(string(m[1])); n < 4 {
		t.Fatalf("ganglion_http_unrecognized_requests_total = %d, want at least 4", n)
	}
	logs := srv.logs.String()
	for _, want := range []string{`path=/_matrix/client/v3/no_such_endpoint`, `path=/debug/pprof/`, `path=/_matrix/client/versions status=405`} {
		if !strings.Contains(logs, "level=INFO msg=\"unrecognized request\" method=") || !strings.Contains(logs, want) {
			t.Errorf("the log has no INFO unrecognized request line with %s", want)
		}
	}
	if strings.Contains(logs, "access_token=secret") {
		t.Errorf("the log shows the query string's access token")
	}
}

// TestTLSListener: a listener with tls: true serves HTTPS with
// tls_certificate_path and tls_private_key_path, not plain HTTP.
func TestTLSListener(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	certPEM, certPath, keyPath := writeSelfSignedCert(t, dir)
	port := freePort(t)
	tlsListener := httpListener(port, "client")
	tlsListener["tls"] = true
	startServer(t, engineSQLite, withListener(tlsListener), func(cfg map[string]any) {
		cfg["tls_certificate_path"] = certPath
		cfg["tls_private_key_path"] = keyPath
	})
	ctx := testContext(t)
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(certPEM)
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
	base := fmt.Sprintf("https://127.0.0.1:%d", port)
	r := rawRequest(t, ctx, hc, "GET", base, "/_matrix/client/versions", "", nil, nil)
	if r.status != http.StatusOK || !strings.Contains(string(r.body), `"versions"`) {
		t.Fatalf("GET versions over TLS: %d %s", r.status, truncate(r.body))
	}
	// Plain HTTP on the TLS port gets no Matrix answer.
	plain := &http.Client{Timeout: 10 * time.Second}
	req, _ := http.NewRequestWithContext(ctx, "GET", fmt.Sprintf("http://127.0.0.1:%d/_matrix/client/versions", port), nil)
	if resp, err := plain.Do(req); err == nil {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if strings.Contains(string(body), `"versions"`) {
			t.Fatalf("the tls listener answered plain HTTP: %d %s", resp.StatusCode, truncate(body))
		}
	}
}

// writeSelfSignedCert writes a self-signed certificate for 127.0.0.1 and
// its key; it returns the certificate's PEM and both paths.
func writeSelfSignedCert(t *testing.T, dir string) (certPEM []byte, certPath, keyPath string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	certPath, keyPath = filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	if err := os.WriteFile(certPath, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certPEM, certPath, keyPath
}

// TestDeadStreamWriterFailsFast: with the typing / to-device / account
// data writer killed, writes through a generic worker fail at once with a
// retryable 503 (not after a minute), and /sync still answers; once the
// writer is back, the writes work again.
func TestDeadStreamWriterFailsFast(t *testing.T) {
	t.Parallel()
	runDeployments(t, []string{engineFleet, engineFleetRouter, engineFleetNginx}, testDeadStreamWriterFailsFast)
}

// testDeadStreamWriterFailsFast talks to worker1 directly on the plain
// fleet, and to the front otherwise (which sends the writer's endpoints to
// writer1 first, then, finding it down, to a generic worker).
func testDeadStreamWriterFailsFast(t *testing.T, srv *server) {
	f := srv.fleet
	ctx := testContext(t)
	alice := srv.register(t, ctx, "alice")
	room := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{})
	worker := f.clientURL(instWorker1)
	if f.front != nil {
		worker = srv.url
	}
	hc := &http.Client{Timeout: 60 * time.Second}
	first := rawRequest(t, ctx, hc, "GET", worker, clientPath("sync")+"?timeout=0", alice.AccessToken, nil, nil)
	if first.status != http.StatusOK {
		t.Fatalf("initial sync: %d %s", first.status, truncate(first.body))
	}
	since, _ := first.object(t)["next_batch"].(string)

	type write struct {
		name, method, path string
		body               any
	}
	writes := func(n int) []write {
		return []write{
			{"typing", "PUT", clientPath("rooms", room.String(), "typing", alice.UserID.String()),
				map[string]any{"typing": true, "timeout": 10000}},
			{"to-device", "PUT", clientPath("sendToDevice", "com.example.test", "dead-"+itoa(n)),
				map[string]any{"messages": map[string]any{alice.UserID.String(): map[string]any{"*": map[string]any{"n": n}}}}},
			{"account data", "PUT", clientPath("user", alice.UserID.String(), "account_data", "com.example.test"),
				map[string]any{"n": n}},
		}
	}

	f.killProc(t, instWriter)
	// A deadline well under the old minute of retries, and no timing
	// assertion beyond it: each answer must simply come before it.
	deadCtx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	for _, w := range writes(1) {
		r := rawRequest(t, deadCtx, hc, w.method, worker, w.path, alice.AccessToken, w.body, nil)
		wantRawError(t, r, http.StatusServiceUnavailable, "M_UNKNOWN")
		if ra, err := strconv.Atoi(r.header.Get("Retry-After")); err != nil || ra <= 0 {
			t.Fatalf("%s: Retry-After %q, want a positive number of seconds", w.name, r.header.Get("Retry-After"))
		}
	}
	for _, path := range []string{clientPath("sync") + "?timeout=0&since=" + url.QueryEscape(since), clientPath("sync") + "?timeout=0"} {
		if r := rawRequest(t, deadCtx, hc, "GET", worker, path, alice.AccessToken, nil, nil); r.status != http.StatusOK {
			t.Fatalf("GET %s with the writer down: %d %s", path, r.status, truncate(r.body))
		}
	}
	cancel()

	f.restartProc(t, instWriter)
	for _, w := range writes(2) {
		testutil.Eventually(t, 30*time.Second, w.name+" after the writer restarted", func() bool {
			return rawRequest(t, ctx, hc, w.method, worker, w.path, alice.AccessToken, w.body, nil).status == http.StatusOK
		})
	}
}

// TestPresenceAcrossWorkers: presence is the presence writer's; a worker
// must not skip a change because of what it forwarded itself earlier,
// when another worker has changed the user's presence since.
func TestPresenceAcrossWorkers(t *testing.T) {
	t.Parallel()
	srv := startServer(t, engineFleet)
	f := srv.fleet
	ctx := testContext(t)
	alice := srv.register(t, ctx, "alice")
	hc := &http.Client{Timeout: 30 * time.Second}
	w1, w2 := f.clientURL(instWorker1), f.clientURL(instWorker2)
	path := clientPath("presence", alice.UserID.String(), "status")
	put := func(base, state string) {
		t.Helper()
		r := rawRequest(t, ctx, hc, "PUT", base, path, alice.AccessToken, map[string]any{"presence": state}, nil)
		if r.status != http.StatusOK {
			t.Fatalf("PUT presence %s: %d %s", state, r.status, truncate(r.body))
		}
	}
	want := func(state string) {
		t.Helper()
		testutil.Eventually(t, 10*time.Second, "presence "+state, func() bool {
			for _, base := range []string{w1, w2} {
				r := rawRequest(t, ctx, hc, "GET", base, path, alice.AccessToken, nil, nil)
				if r.status != http.StatusOK {
					t.Fatalf("GET presence: %d %s", r.status, truncate(r.body))
				}
				if r.object(t)["presence"] != state {
					return false
				}
			}
			return true
		})
	}
	put(w1, "unavailable")
	want("unavailable")
	put(w2, "online")
	want("online")
	put(w1, "unavailable") // worker1 last forwarded this very state
	want("unavailable")

	// A sync's set_presence may be skipped when unchanged, but not after
	// another worker changed the user's presence: worker1 forwarded
	// "unavailable" last, worker2 then set "online".
	put(w2, "online")
	want("online")
	c1 := srv.client(t, alice.UserID, alice.AccessToken)
	c1.HomeserverURL, _ = url.Parse(w1)
	// srv.http waits before a sync until every worker has applied every
	// writer's rows, worker2's "online" included.
	doSync(t, ctx, c1, syncParams{timeout: 0, setPresence: "unavailable"})
	want("unavailable")
}
