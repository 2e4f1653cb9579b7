package client_test

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"ganglion/internal/config"
	"ganglion/internal/events"
	"ganglion/internal/federation/client"
	"ganglion/internal/federation/xmatrix"
	"ganglion/internal/mxhttp"
	"ganglion/internal/testutil/testca"
)

// oneKey is a VerifyKeyFinder knowing one server's key.
type oneKey struct {
	server string
	key    events.SigningKey
}

func (k oneKey) VerifyKey(_ context.Context, server, keyID string, _ int64) (ed25519.PublicKey, error) {
	if server != k.server || keyID != k.key.ID {
		return nil, fmt.Errorf("unknown key %s of %s", keyID, server)
	}
	return k.key.Public(), nil
}

// remote is a federation server: it authenticates requests as
// remoteName would and echoes what it saw.
type remote struct {
	hits atomic.Int64
	port int
}

type echo struct {
	Origin string          `json:"origin"`
	Host   string          `json:"host"`
	URI    string          `json:"uri"`
	Body   json.RawMessage `json:"body"`
	Auth   string          `json:"auth"`
}

func startRemote(t *testing.T, ca *testca.CA, remoteName string, ourKey events.SigningKey, certNames ...string) *remote {
	t.Helper()
	rm := &remote{}
	auth := &xmatrix.Authenticator{ServerName: remoteName, Keys: oneKey{server: "us.test", key: ourKey}}
	mux := http.NewServeMux()
	mux.Handle("/_matrix/federation/", auth.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		origin, _ := xmatrix.Origin(r.Context())
		body, _ := io.ReadAll(r.Body)
		if len(body) == 0 {
			body = []byte("null")
		}
		_ = mxhttp.WriteJSON(w, 200, echo{Origin: origin, Host: r.Host, URI: r.RequestURI, Body: body})
	})))
	mux.HandleFunc("/_matrix/key/", func(w http.ResponseWriter, r *http.Request) {
		_ = mxhttp.WriteJSON(w, 200, echo{Host: r.Host, URI: r.RequestURI, Auth: r.Header.Get("Authorization")})
	})
	mux.HandleFunc("/_matrix/test/big", func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`{"x":"` + strings.Repeat("a", 4096) + `"}`))
	})
	mux.HandleFunc("/_matrix/test/forbidden", func(w http.ResponseWriter, r *http.Request) {
		mxhttp.WriteError(w, mxhttp.Forbidden("go away"))
	})
	mux.HandleFunc("/_matrix/test/redirect", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/_matrix/test/big", http.StatusFound)
	})
	mux.HandleFunc("/_matrix/test/slow", func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done() // until the client gives up
	})
	_, rm.port = startTLS(t, ca, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rm.hits.Add(1)
		mux.ServeHTTP(w, r)
	}), certNames...)
	return rm
}

// A signed PUT reaches a server found through SRV, with the Host header and
// certificate of the server name, and passes the X-Matrix check there.
func TestSignedRequestThroughSRV(t *testing.T) {
	ca := testca.New(t)
	key := mustKey(t)
	rm := startRemote(t, ca, "remote.test", key, "remote.test")
	dns := newDNS()
	dns.addSRV("matrix-fed", "remote.test", "box.test.", uint16(rm.port), 1)
	dns.host("box.test", "127.0.0.1")
	c := newClient(t, client.Options{Key: key, DNS: dns, IPFilter: loopbackAllowed(t), RootCAs: ca.Pool(), WellKnownPort: 1})

	var got echo
	body := map[string]any{"pdus": []any{}, "edus": []any{map[string]any{"edu_type": "m.typing", "content": map[string]any{"b": 1, "a": "é"}}}}
	if err := c.SignedPutJSON(context.Background(), "remote.test", "/_matrix/federation/v1/send/t%2F1?x=1&y=%20", body, &got); err != nil {
		t.Fatal(err)
	}
	if got.Origin != "us.test" || got.Host != "remote.test" || got.URI != "/_matrix/federation/v1/send/t%2F1?x=1&y=%20" {
		t.Fatalf("remote saw %+v", got)
	}
	if string(got.Body) != `{"edus":[{"content":{"a":"é","b":1},"edu_type":"m.typing"}],"pdus":[]}` {
		t.Fatalf("body %s, want canonical JSON", got.Body)
	}
	if err := c.SignedGetJSON(context.Background(), "remote.test", "/_matrix/federation/v1/version", &got); err != nil || got.Origin != "us.test" {
		t.Fatalf("signed GET: %v, %+v", err, got)
	}
	if err := c.SignedPostJSON(context.Background(), "remote.test", "/_matrix/federation/v1/get_missing_events/!r:x", map[string]int{"limit": 1}, &got); err != nil {
		t.Fatal(err)
	}
	// The key endpoints are fetched unsigned (serverkeys.Getter/Poster).
	if err := c.GetJSON(context.Background(), "remote.test", "/_matrix/key/v2/server", &got); err != nil || got.Auth != "" {
		t.Fatalf("GetJSON: %v, Authorization %q", err, got.Auth)
	}
	if err := c.PostJSON(context.Background(), "remote.test", "/_matrix/key/v2/query", map[string]any{"server_keys": map[string]any{}}, &got); err != nil || got.Auth != "" {
		t.Fatalf("PostJSON: %v, Authorization %q", err, got.Auth)
	}
}

// Delegation: the certificate must be valid for the delegated name, and
// the Host header is the delegated name with its port.
func TestDelegatedCertificateAndHost(t *testing.T) {
	ca := testca.New(t)
	key := mustKey(t)
	rm := startRemote(t, ca, "deleg.test", key, "matrix.deleg.test")
	wk := &wellKnownServer{answers: map[string]func(http.ResponseWriter, *http.Request){}, fetches: map[string]int{}}
	_, wkPort := startTLS(t, ca, wk, "deleg.test")
	wk.json("deleg.test", fmt.Sprintf(`{"m.server":"matrix.deleg.test:%d"}`, rm.port))
	dns := newDNS()
	dns.host("deleg.test", "127.0.0.1")
	dns.host("matrix.deleg.test", "127.0.0.1")
	c := newClient(t, client.Options{Key: key, DNS: dns, IPFilter: loopbackAllowed(t), RootCAs: ca.Pool(), WellKnownPort: wkPort})
	var got echo
	if err := c.SignedGetJSON(context.Background(), "deleg.test", "/_matrix/federation/v1/version", &got); err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("matrix.deleg.test:%d", rm.port); got.Host != want || got.Origin != "us.test" {
		t.Fatalf("remote saw %+v, want Host %s", got, want)
	}
}

func TestCertificateChecks(t *testing.T) {
	ca := testca.New(t)
	key := mustKey(t)
	// The certificate names another server.
	wrong := startRemote(t, ca, "wrong.test", key, "other.test")
	// An IP literal needs an IP SAN.
	ipOK := startRemote(t, ca, fmt.Sprintf("127.0.0.1:%d", 0), key, "127.0.0.1")
	ipNoSAN := startRemote(t, ca, "x", key, "localhost")
	dns := newDNS()
	dns.host("wrong.test", "127.0.0.1")
	opts := client.Options{Key: key, DNS: dns, IPFilter: loopbackAllowed(t), RootCAs: ca.Pool(), WellKnownPort: 1}
	c := newClient(t, opts)
	ctx := context.Background()

	if err := c.GetJSON(ctx, hp("wrong.test", wrong.port), "/_matrix/key/v2/server", nil); err == nil {
		t.Error("certificate for other.test accepted for wrong.test")
	}
	if err := c.GetJSON(ctx, hp("127.0.0.1", ipOK.port), "/_matrix/key/v2/server", nil); err != nil {
		t.Errorf("IP literal with an IP SAN: %v", err)
	}
	if err := c.GetJSON(ctx, hp("127.0.0.1", ipNoSAN.port), "/_matrix/key/v2/server", nil); err == nil {
		t.Error("certificate without the IP accepted for an IP literal")
	}
	// Without the test CA (system roots), nothing verifies.
	sys := opts
	sys.RootCAs = nil
	if err := newClient(t, sys).GetJSON(ctx, hp("127.0.0.1", ipOK.port), "/_matrix/key/v2/server", nil); err == nil {
		t.Error("test CA trusted without federation_custom_ca_list")
	}
	// federation_verify_certificates: false accepts anything.
	insecure := sys
	insecure.InsecureSkipVerify = true
	if err := newClient(t, insecure).GetJSON(ctx, hp("wrong.test", wrong.port), "/_matrix/key/v2/server", nil); err != nil {
		t.Errorf("verification off: %v", err)
	}
}

// Loopback is refused by Synapse's default blacklist: no connection is
// made, however the name resolves.
func TestLoopbackRefusedByDefault(t *testing.T) {
	ca := testca.New(t)
	key := mustKey(t)
	rm := startRemote(t, ca, "remote.test", key, "remote.test", "127.0.0.1")
	wk := &wellKnownServer{answers: map[string]func(http.ResponseWriter, *http.Request){}, fetches: map[string]int{}}
	_, wkPort := startTLS(t, ca, wk, "*.test")
	wk.json("rebind.test", fmt.Sprintf(`{"m.server":"remote.test:%d"}`, rm.port))

	// The ranges of a config that sets none.
	block, allow := config.Default().FederationIPRanges()
	dns := newDNS()
	dns.host("remote.test", "127.0.0.1")
	dns.host("rebind.test", "127.0.0.1")
	dns.host("mapped.test", "::ffff:127.0.0.1")
	c := newClient(t, client.Options{Key: key, DNS: dns, IPFilter: client.IPFilter{Block: block, Allow: allow},
		RootCAs: ca.Pool(), WellKnownPort: wkPort})
	ctx := context.Background()
	for _, dest := range []string{hp("127.0.0.1", rm.port), hp("remote.test", rm.port), hp("mapped.test", rm.port), "rebind.test"} {
		err := c.GetJSON(ctx, dest, "/_matrix/key/v2/server", nil)
		if !errors.Is(err, client.ErrBlockedIP) {
			t.Errorf("%s: got %v, want ErrBlockedIP", dest, err)
		}
	}
	if rm.hits.Load() != 0 || wk.count("rebind.test") != 0 {
		t.Fatalf("blocked requests reached the servers: %d federation, %d well-known", rm.hits.Load(), wk.count("rebind.test"))
	}
	// The unspecified address is refused even with an empty blacklist.
	open := newClient(t, client.Options{Key: key, DNS: dns, RootCAs: ca.Pool(), WellKnownPort: wkPort})
	if err := open.GetJSON(ctx, hp("0.0.0.0", rm.port), "/_matrix/key/v2/server", nil); !errors.Is(err, client.ErrBlockedIP) {
		t.Errorf("0.0.0.0: got %v, want ErrBlockedIP", err)
	}
	// And with the exception for 127.0.0.1, the same request goes through.
	if err := newClient(t, client.Options{Key: key, DNS: dns, IPFilter: loopbackAllowed(t), RootCAs: ca.Pool(),
		WellKnownPort: wkPort}).GetJSON(ctx, hp("remote.test", rm.port), "/_matrix/key/v2/server", nil); err != nil {
		t.Fatalf("with 127.0.0.1 whitelisted: %v", err)
	}
}

// NewFromConfig applies the config: default blacklist, whitelisted
// loopback, the custom CA, the domain whitelist.
func TestNewFromConfig(t *testing.T) {
	ca := testca.New(t)
	key := mustKey(t)
	rm := startRemote(t, ca, "127.0.0.1", key, "127.0.0.1")
	dir := t.TempDir()
	base := "server_name: us.test\nfederation_custom_ca_list: ['" + ca.WriteCA(t, dir) + "']\n"
	load := func(extra string) *config.Config {
		t.Helper()
		path := dir + "/hs.yaml"
		if err := writeFile(path, base+extra); err != nil {
			t.Fatal(err)
		}
		cfg, err := config.Load([]string{path}, func(string) string { return "" })
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	dest := hp("127.0.0.1", rm.port)
	ctx := context.Background()
	c, err := client.NewFromConfig(load(""), key, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.GetJSON(ctx, dest, "/_matrix/key/v2/server", nil); !errors.Is(err, client.ErrBlockedIP) {
		t.Fatalf("default config: got %v, want ErrBlockedIP", err)
	}
	c, _ = client.NewFromConfig(load("ip_range_whitelist: ['127.0.0.1']\n"), key, nil)
	if err := c.GetJSON(ctx, dest, "/_matrix/key/v2/server", nil); err != nil {
		t.Fatalf("127.0.0.1 whitelisted: %v", err)
	}
	c, _ = client.NewFromConfig(load("ip_range_blacklist: []\nfederation_domain_whitelist: ['other.test']\n"), key, nil)
	if err := c.GetJSON(ctx, dest, "/_matrix/key/v2/server", nil); !errors.Is(err, client.ErrNotWhitelisted) {
		t.Fatalf("destination outside federation_domain_whitelist: got %v", err)
	}
	c, _ = client.NewFromConfig(load("ip_range_blacklist: []\nfederation_domain_whitelist: ['"+dest+"']\n"), key, nil)
	if err := c.GetJSON(ctx, dest, "/_matrix/key/v2/server", nil); err != nil {
		t.Fatalf("whitelisted destination: %v", err)
	}
}

func TestResponses(t *testing.T) {
	ca := testca.New(t)
	key := mustKey(t)
	rm := startRemote(t, ca, "127.0.0.1", key, "127.0.0.1")
	c := newClient(t, client.Options{Key: key, DNS: newDNS(), IPFilter: loopbackAllowed(t), RootCAs: ca.Pool(),
		MaxResponseBytes: 1024})
	dest := hp("127.0.0.1", rm.port)
	ctx := context.Background()

	if err := c.GetJSON(ctx, dest, "/_matrix/test/big", &map[string]any{}); !errors.Is(err, client.ErrResponseTooLarge) {
		t.Errorf("big response: got %v, want ErrResponseTooLarge", err)
	}
	if err := c.Do(ctx, client.Request{Method: "GET", Destination: dest, Path: "/_matrix/test/big", Unsigned: true,
		MaxResponseBytes: 8192, Out: &map[string]any{}}); err != nil {
		t.Errorf("big response with a larger per-request limit: %v", err)
	}
	var he *client.HTTPError
	if err := c.GetJSON(ctx, dest, "/_matrix/test/forbidden", nil); !errors.As(err, &he) || he.Status != 403 || he.Errcode != "M_FORBIDDEN" || he.Message != "go away" {
		t.Errorf("error answer: %v", err)
	}
	// Federation requests do not follow redirects.
	if err := c.GetJSON(ctx, dest, "/_matrix/test/redirect", nil); !errors.As(err, &he) || he.Status != 302 {
		t.Errorf("redirect: %v", err)
	}
	// An unsigned request to an authenticated endpoint is refused there.
	if err := c.GetJSON(ctx, dest, "/_matrix/federation/v1/version", nil); !errors.As(err, &he) || he.Status != 401 || he.Errcode != "M_UNAUTHORIZED" {
		t.Errorf("unsigned federation request: %v", err)
	}
	for _, bad := range []string{"/not/matrix", "/_matrix/a b", "/_matrix/a\r\nX: y", "/_matrix/é", "/_matrix/a#b"} {
		if err := c.GetJSON(ctx, dest, bad, nil); err == nil {
			t.Errorf("path %q was requested", bad)
		}
	}
	// Dropping the kept-alive connections does not stop later requests.
	c.CloseIdleConnections()
	if err := c.Do(ctx, client.Request{Method: "GET", Destination: dest, Path: "/_matrix/test/big", Unsigned: true,
		MaxResponseBytes: 8192}); err != nil {
		t.Errorf("after CloseIdleConnections: %v", err)
	}
	start := time.Now()
	err := c.Do(ctx, client.Request{Method: "GET", Destination: dest, Path: "/_matrix/test/slow", Unsigned: true, Timeout: 200 * time.Millisecond})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("slow server: got %v after %v, want a deadline error", err, time.Since(start))
	}
}

func TestDomainWhitelistOutbound(t *testing.T) {
	ca := testca.New(t)
	key := mustKey(t)
	rm := startRemote(t, ca, "127.0.0.1", key, "127.0.0.1")
	dest := hp("127.0.0.1", rm.port)
	c := newClient(t, client.Options{Key: key, DNS: newDNS(), IPFilter: loopbackAllowed(t), RootCAs: ca.Pool(),
		DomainWhitelist: map[string]bool{"friend.test": true}})
	if err := c.SignedGetJSON(context.Background(), dest, "/_matrix/federation/v1/version", nil); !errors.Is(err, client.ErrNotWhitelisted) {
		t.Fatalf("got %v, want ErrNotWhitelisted", err)
	}
	if rm.hits.Load() != 0 {
		t.Fatal("a request outside the whitelist reached the server")
	}
}
