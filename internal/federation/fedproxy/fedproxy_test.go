package fedproxy_test

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"sync"
	"testing"
	"time"

	"ganglion/internal/config"
	"ganglion/internal/events"
	"ganglion/internal/federation/client"
	"ganglion/internal/federation/fedproxy"
	"ganglion/internal/federation/xmatrix"
	"ganglion/internal/mxhttp"
	"ganglion/internal/replication"
	"ganglion/internal/streams"
	"ganglion/internal/testutil/testca"
)

type fixedKeys map[string]ed25519.PublicKey

func (k fixedKeys) VerifyKey(_ context.Context, srv, keyID string, _ int64) (ed25519.PublicKey, error) {
	if pub, ok := k[srv+"|"+keyID]; ok {
		return pub, nil
	}
	return nil, fmt.Errorf("no key %s of %s", keyID, srv)
}

// remoteServer is another homeserver over TLS on loopback that checks
// X-Matrix (against the origin's key) and records what reached it.
type remoteServer struct {
	mu     sync.Mutex
	seen   []string // origin + " " + method + " " + request URI
	bodies []string
}

func startRemote(t *testing.T, ca *testca.CA, originKey events.SigningKey) (*remoteServer, string) {
	rs := &remoteServer{}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dest := "127.0.0.1:" + strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	auth := &xmatrix.Authenticator{ServerName: dest, Keys: fixedKeys{"origin.test|" + originKey.ID: originKey.Public()}, Log: log}
	mux := http.NewServeMux()
	mux.Handle("/_matrix/federation/v1/missing", http.NotFoundHandler())
	handle := mxhttp.NewServer(log).Handle(auth.Auth(func(w http.ResponseWriter, r *http.Request) error {
		origin, _ := xmatrix.Origin(r.Context())
		body, _ := io.ReadAll(r.Body)
		rs.mu.Lock()
		rs.seen = append(rs.seen, origin+" "+r.Method+" "+r.RequestURI)
		rs.bodies = append(rs.bodies, string(body))
		rs.mu.Unlock()
		if r.URL.Path == "/_matrix/federation/v1/query/profile" {
			return mxhttp.NotFound("no such user")
		}
		return mxhttp.WriteJSON(w, http.StatusOK, map[string]string{"answer": "from " + dest})
	}))
	mux.Handle("/", handle)
	srv := &httptest.Server{Listener: ln, Config: &http.Server{Handler: mux}}
	srv.TLS = ca.ServerTLS(t, "127.0.0.1")
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return rs, dest
}

// proxyInstance is a process named in outbound_federation_restricted_to:
// its replication listener serves the proxy endpoint, sending with a
// federation client that trusts the test CA and may reach loopback.
func proxyInstance(t *testing.T, ca *testca.CA, secret string) config.InstanceLocation {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	reg, err := streams.NewRegistry("proxy1", streams.AllDefs(), nil, streams.NewNotifier())
	if err != nil {
		t.Fatal(err)
	}
	key, err := events.GenerateSigningKey()
	if err != nil {
		t.Fatal(err)
	}
	fc, err := client.New(client.Options{ServerName: "origin.test", Key: key, RootCAs: ca.Pool(),
		IPFilter: client.IPFilter{Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}}})
	if err != nil {
		t.Fatal(err)
	}
	rs := replication.NewServer(secret, reg, log)
	fedproxy.Serve(rs, fc)
	mux := http.NewServeMux()
	mux.Handle(replication.PathPrefix, rs)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	port := srv.Listener.Addr().(*net.TCPAddr).Port
	return config.InstanceLocation{Host: "127.0.0.1", Port: port}
}

// worker is a process not in the list: its client trusts no test CA (a
// direct connection would fail), so whatever reaches the remote went
// through the proxy.
func worker(t *testing.T, key events.SigningKey, secret string, proxies map[string]config.InstanceLocation, names ...string) *client.Client {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	reg, err := streams.NewRegistry("worker1", streams.AllDefs(), nil, streams.NewNotifier())
	if err != nil {
		t.Fatal(err)
	}
	rpc := replication.NewClient(replication.InstanceLookup(proxies), secret, "worker1", reg, log)
	t.Cleanup(rpc.CloseIdleConnections)
	c, err := client.New(client.Options{ServerName: "origin.test", Key: key, Via: fedproxy.NewVia(rpc, names),
		RequestTimeout: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestOutboundFederationThroughProxy(t *testing.T) {
	ca := testca.New(t)
	key, err := events.GenerateSigningKey()
	if err != nil {
		t.Fatal(err)
	}
	remote, dest := startRemote(t, ca, key)
	const secret = "s3cret"
	proxy := proxyInstance(t, ca, secret)
	c := worker(t, key, secret, map[string]config.InstanceLocation{"proxy1": proxy}, "proxy1")
	ctx := t.Context()

	// A signed GET with a query and a signed PUT with a body: the
	// remote verified the worker's signature, so the path and body
	// arrived byte for byte as signed.
	var out map[string]string
	path := "/_matrix/federation/v1/event/%24abc%3Adef?x=1&y=%2F"
	if err := c.SignedGetJSON(ctx, dest, path, &out); err != nil {
		t.Fatalf("GET through the proxy: %v", err)
	}
	if out["answer"] != "from "+dest {
		t.Errorf("answer %v", out)
	}
	if err := c.SignedPutJSON(ctx, dest, "/_matrix/federation/v1/send/txn1", map[string]any{"pdus": []any{}, "z": "é"}, &out); err != nil {
		t.Fatalf("PUT through the proxy: %v", err)
	}
	remote.mu.Lock()
	seen, bodies := append([]string(nil), remote.seen...), append([]string(nil), remote.bodies...)
	remote.mu.Unlock()
	if len(seen) != 2 || seen[0] != "origin.test GET "+path || seen[1] != "origin.test PUT /_matrix/federation/v1/send/txn1" {
		t.Errorf("remote saw %q", seen)
	}
	if len(bodies) == 2 && bodies[1] != `{"pdus":[],"z":"é"}` {
		t.Errorf("remote got body %q", bodies[1])
	}

	// The remote's Matrix error comes back as the client's HTTPError.
	err = c.SignedGetJSON(ctx, dest, "/_matrix/federation/v1/query/profile?user_id=%40x%3Ay", &out)
	var he *client.HTTPError
	if !errors.As(err, &he) || he.Status != 404 || he.Errcode != "M_NOT_FOUND" {
		t.Errorf("remote 404 through the proxy: %v", err)
	}

	// A destination the proxy cannot reach is an error at once, not a
	// retried replication failure.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	deadDest := ln.Addr().String()
	ln.Close()
	start := time.Now()
	err = c.SignedGetJSON(ctx, deadDest, "/_matrix/federation/v1/version", &out)
	if !errors.Is(err, fedproxy.ErrProxy) {
		t.Errorf("unreachable destination: %v, want ErrProxy", err)
	}
	if d := time.Since(start); d > 15*time.Second {
		t.Errorf("unreachable destination took %s: the failure was retried", d)
	}

	// A worker with the wrong replication secret gets nothing sent.
	bad := worker(t, key, "wrong", map[string]config.InstanceLocation{"proxy1": proxy}, "proxy1")
	var me *mxhttp.Error
	if err := bad.SignedGetJSON(ctx, dest, "/_matrix/federation/v1/version", &out); !errors.As(err, &me) || me.Status != 403 {
		t.Errorf("wrong secret: %v, want the proxy's 403", err)
	}
	remote.mu.Lock()
	n := len(remote.seen)
	remote.mu.Unlock()
	if n != 3 {
		t.Errorf("remote saw %d requests, want 3 (nothing from the wrong secret)", n)
	}

	// With the first proxy down, a second one carries the request.
	ln, _ = net.Listen("tcp", "127.0.0.1:0")
	downPort := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	// The list is ordered so that the destination's shard is the dead one.
	names := []string{"proxy0", "proxy1"}
	if config.ShardFor(names, dest) != "proxy0" {
		names = []string{"proxy1", "proxy0"}
	}
	two := worker(t, key, secret, map[string]config.InstanceLocation{
		"proxy1": proxy, "proxy0": {Host: "127.0.0.1", Port: downPort}}, names...)
	if err := two.SignedGetJSON(ctx, dest, "/_matrix/federation/v1/event/failover", &out); err != nil {
		t.Errorf("with the destination's proxy down: %v", err)
	}
	remote.mu.Lock()
	last := remote.seen[len(remote.seen)-1]
	remote.mu.Unlock()
	if last != "origin.test GET /_matrix/federation/v1/event/failover" {
		t.Errorf("remote's last request %q", last)
	}
}

// The proxy endpoint refuses calls that name no request, with the
// replication RPC's Matrix error, and sends nothing.
func TestFederationProxyEndpointBadInput(t *testing.T) {
	ca := testca.New(t)
	const secret = "s3cret"
	proxy := proxyInstance(t, ca, secret)
	reg, err := streams.NewRegistry("worker1", streams.AllDefs(), nil, streams.NewNotifier())
	if err != nil {
		t.Fatal(err)
	}
	rpc := replication.NewClient(replication.InstanceLookup(map[string]config.InstanceLocation{"proxy1": proxy}), secret, "worker1", reg,
		slog.New(slog.NewTextHandler(io.Discard, nil)))
	t.Cleanup(rpc.CloseIdleConnections)
	for _, body := range []any{map[string]any{}, map[string]any{"method": "GET", "destination": "x.test"}} {
		var me *mxhttp.Error
		err := rpc.Call(t.Context(), "proxy1", fedproxy.Endpoint, nil, body, nil, replication.WithStreamPositions())
		if !errors.As(err, &me) || me.Status != 400 || me.Code != "M_MISSING_PARAM" {
			t.Errorf("body %v: %v, want 400 M_MISSING_PARAM", body, err)
		}
	}
	// A destination that is no server name is the proxy client's refusal,
	// reported in the answer.
	var out struct {
		Error string `json:"error"`
	}
	if err := rpc.Call(t.Context(), "proxy1", fedproxy.Endpoint, nil,
		client.ProxiedRequest{Method: "GET", Destination: "not a name", Path: "/_matrix/federation/v1/version"}, &out,
		replication.WithStreamPositions()); err != nil || out.Error == "" {
		t.Errorf("bad destination: %v %+v", err, out)
	}
}
