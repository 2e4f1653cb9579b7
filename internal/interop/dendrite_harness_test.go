// Package interop_test runs Ganglion against a homeserver nobody here
// wrote: Dendrite, built from the Go module proxy at a fixed release and
// started on loopback next to an in-process Ganglion. Both federate over
// TLS with certificates from a throw-away CA, with server names that are
// IP literals with ports, so neither needs DNS or .well-known.
package interop_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"ganglion/internal/app"
	"ganglion/internal/config"
	"ganglion/internal/events"
	"ganglion/internal/testutil"
	"ganglion/internal/testutil/testca"
)

// testTimeout bounds each test's requests.
const testTimeout = 3 * time.Minute

// startTimeout bounds a server's start, up to its first answer.
const startTimeout = 60 * time.Second

// federationWait bounds waits for something to cross from one server to
// the other (a join, a message, an invite): transactions are sent at once,
// so this is only a ceiling for a loaded machine.
const federationWait = 60 * time.Second

// sharedSecret is both servers' registration_shared_secret.
const sharedSecret = "interop-shared-secret-not-for-production"

// testContext bounds all of one test's requests.
func testContext(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// password is the password users are registered with on either server.
func password(localpart string) string { return "pw-" + localpart + "-correct-horse" }

// homeserver is what the tests need of either server.
type homeserver struct {
	kind       string // "ganglion" or "dendrite", for messages
	serverName string
	clientURL  string
	http       *http.Client
}

func (h *homeserver) userID(localpart string) id.UserID { return id.NewUserID(localpart, h.serverName) }

// register creates localpart through /register (m.login.dummy, both
// servers have open registration) and returns a logged-in mautrix client.
func (h *homeserver) register(t testing.TB, ctx context.Context, localpart string) *mautrix.Client {
	t.Helper()
	c, err := mautrix.NewClient(h.clientURL, "", "")
	if err != nil {
		t.Fatalf("mautrix client for %s: %v", h.kind, err)
	}
	c.Client = h.http
	resp, err := c.RegisterDummy(ctx, &mautrix.ReqRegister[any]{
		Username:                 localpart,
		Password:                 password(localpart),
		InitialDeviceDisplayName: "interop " + localpart,
	})
	if err != nil {
		t.Fatalf("register %s on %s: %v", localpart, h.kind, err)
	}
	if resp.UserID != h.userID(localpart) {
		t.Fatalf("register %s on %s: user_id %q, want %q", localpart, h.kind, resp.UserID, h.userID(localpart))
	}
	c.SetCredentials(resp.UserID, resp.AccessToken)
	c.DeviceID = resp.DeviceID
	return c
}

// getJSON fetches url with h's HTTP client and decodes a JSON object.
func getJSON(t testing.TB, ctx context.Context, c *http.Client, url string) (int, map[string]any, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: read body: %v", url, err)
	}
	var out map[string]any
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatalf("GET %s: %d %q is not a JSON object", url, resp.StatusCode, truncate(raw))
	}
	return resp.StatusCode, out, raw
}

// tlsClient is an HTTP client trusting only the test CA.
func tlsClient(ca *testca.CA) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: ca.Pool(), MinVersion: tls.VersionTLS12}
	return &http.Client{Timeout: 60 * time.Second, Transport: tr}
}

// freePort returns a loopback port nothing listened on a moment ago.
// Someone may take it before the server binds; starters retry.
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

// logBuffer collects a server's log; it is shown only when the test fails.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
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

func truncate(b []byte) string {
	if len(b) > 600 {
		return string(b[:600]) + "…"
	}
	return string(b)
}

// ganglion is an in-process Ganglion monolith (SQLite) whose one TLS
// listener serves client and federation.
type ganglion struct {
	homeserver
	dir string
	key events.SigningKey
}

// startGanglion starts Ganglion with server_name 127.0.0.1:PORT, a
// certificate from ca for 127.0.0.1, ca trusted for outbound federation
// (federation_custom_ca_list), loopback allowed (ip_range_whitelist: the
// default ip_range_blacklist covers 127.0.0.0/8), no notary
// (trusted_key_servers: keys come from the servers themselves) and its
// public room directory open to other servers.
func startGanglion(t *testing.T, ca *testca.CA) *ganglion {
	t.Helper()
	dir := t.TempDir()
	certPath, keyPath := ca.WriteServerCert(t, dir, "127.0.0.1")
	caPath := ca.WriteCA(t, dir)
	logs := &logBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	fast := map[string]any{"per_second": 1000, "burst_count": 1000}
	for attempt := 1; ; attempt++ {
		port := freePort(t)
		name := fmt.Sprintf("127.0.0.1:%d", port)
		doc := map[string]any{
			"server_name":    name,
			"public_baseurl": "https://" + name + "/",
			"listeners": []any{map[string]any{
				"port":           port,
				"bind_addresses": []string{"127.0.0.1"},
				"type":           "http",
				"tls":            true,
				"x_forwarded":    false,
				"resources":      []any{map[string]any{"names": []string{"client", "federation"}, "compress": false}},
			}},
			"tls_certificate_path":      certPath,
			"tls_private_key_path":      keyPath,
			"federation_custom_ca_list": []string{caPath},
			"ip_range_whitelist":        []string{"127.0.0.1"},
			"trusted_key_servers":       []any{},
			// Dendrite's users list Ganglion's public rooms.
			"allow_public_rooms_over_federation": true,
			"database": map[string]any{"name": "sqlite3",
				"args": map[string]any{"database": filepath.Join(dir, "homeserver.db")}},
			"signing_key_path":                         filepath.Join(dir, "signing.key"),
			"media_store_path":                         filepath.Join(dir, "media_store"),
			"enable_registration":                      true,
			"enable_registration_without_verification": true,
			"registration_shared_secret":               sharedSecret,
			"bcrypt_rounds":                            4,
			"report_stats":                             false,
			"rc_message":                               fast,
			"rc_registration":                          fast,
			"rc_login":                                 map[string]any{"address": fast, "account": fast, "failed_attempts": fast},
			"rc_joins":                                 map[string]any{"local": fast, "remote": fast},
			"rc_joins_per_room":                        fast,
			"rc_invites":                               map[string]any{"per_room": fast, "per_user": fast, "per_issuer": fast},
			"rc_room_creation":                         fast,
		}
		data, err := json.MarshalIndent(doc, "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, "homeserver.yaml")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		cfg, err := config.Load([]string{path}, nil)
		if err != nil {
			t.Fatalf("load Ganglion config: %v", err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		p, err := app.New(ctx, cfg, log)
		if err != nil {
			cancel()
			t.Fatalf("start Ganglion: %v\n%s", err, logs)
		}
		if err := p.Listen(); err != nil {
			cancel()
			_ = p.Run(ctx) // releases what New opened
			if errors.Is(err, syscall.EADDRINUSE) && attempt < 5 {
				continue
			}
			t.Fatalf("Ganglion listen: %v", err)
		}
		done := make(chan error, 1)
		go func() { done <- p.Run(ctx) }()
		t.Cleanup(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Ganglion Run: %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Errorf("Ganglion did not stop within 30s")
			}
			if t.Failed() {
				t.Logf("Ganglion log:\n%s", tail(logs.String(), 24<<10))
			}
		})
		raw, err := os.ReadFile(filepath.Join(dir, "signing.key"))
		if err != nil {
			t.Fatalf("read Ganglion's signing key: %v", err)
		}
		key, err := events.ParseSigningKeyFile(raw)
		if err != nil {
			t.Fatalf("parse Ganglion's signing key: %v", err)
		}
		return &ganglion{
			homeserver: homeserver{kind: "ganglion", serverName: name, clientURL: "https://" + name, http: tlsClient(ca)},
			dir:        dir,
			key:        key,
		}
	}
}

// dendrite is a running Dendrite process.
type dendrite struct {
	homeserver
	// fedURL is its TLS listener (federation and client), at serverName.
	fedURL string
	dir    string
}

// startDendrite builds Dendrite if needed and starts it: signing key from
// its generate-keys, config from its generate-config (SQLite, in-memory
// NATS) with the changes dendriteConfig lists, plain HTTP for the test's
// clients and TLS with a certificate from ca on the port its server name
// carries.
func startDendrite(t *testing.T, ca *testca.CA) *dendrite {
	t.Helper()
	bin := buildDendrite(t)
	for attempt := 1; ; attempt++ {
		d, retry := tryStartDendrite(t, ca, bin)
		if d != nil {
			return d
		}
		if !retry || attempt == 5 {
			t.Fatalf("Dendrite did not start")
		}
		t.Logf("Dendrite did not start (a port was taken?); retrying on new ports")
	}
}

func tryStartDendrite(t *testing.T, ca *testca.CA, bin string) (_ *dendrite, retry bool) {
	t.Helper()
	dir := t.TempDir()
	httpPort, tlsPort := freePort(t), freePort(t)
	if httpPort == tlsPort {
		return nil, true
	}
	name := fmt.Sprintf("127.0.0.1:%d", tlsPort)

	run := func(tool string, args ...string) []byte {
		t.Helper()
		cmd := exec.Command(filepath.Join(bin, tool), args...)
		cmd.Dir = dir
		out, err := cmd.Output()
		if err != nil {
			var stderr []byte
			if ee, ok := err.(*exec.ExitError); ok {
				stderr = ee.Stderr
			}
			t.Fatalf("Dendrite %s %v: %v\n%s%s", tool, args, err, out, stderr)
		}
		return out
	}
	keyPath := filepath.Join(dir, "matrix_key.pem")
	run("generate-keys", "--private-key", keyPath)
	generated := run("generate-config", "-ci", "-server", name, "-dir", dir)
	cfg := dendriteConfig(t, generated, keyPath)
	cfgPath := filepath.Join(dir, "dendrite.yaml")
	if err := os.WriteFile(cfgPath, cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	certPath, certKeyPath := ca.WriteServerCert(t, dir, "127.0.0.1")

	logs := &logBuffer{}
	cmd := exec.Command(filepath.Join(bin, "dendrite"),
		"-config", cfgPath,
		"-http-bind-address", fmt.Sprintf("127.0.0.1:%d", httpPort),
		"-https-bind-address", name,
		"-tls-cert", certPath,
		"-tls-key", certKeyPath,
		// Open registration without a captcha: Dendrite wants this flag as
		// well as the config the -ci generator writes.
		"-really-enable-open-registration",
	)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = logs, logs
	setDeathSignal(cmd)
	if err := cmd.Start(); err != nil {
		t.Fatalf("start Dendrite: %v", err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	stop := func() {
		select {
		case <-exited:
			return
		default:
		}
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	}

	d := &dendrite{
		homeserver: homeserver{kind: "dendrite", serverName: name,
			clientURL: fmt.Sprintf("http://127.0.0.1:%d", httpPort),
			http:      &http.Client{Timeout: 60 * time.Second}},
		fedURL: "https://" + name,
		dir:    dir,
	}
	fed := tlsClient(ca)
	ready := func() bool {
		for _, u := range []string{d.clientURL + "/_matrix/client/versions", d.fedURL + "/_matrix/federation/v1/version"} {
			c := d.http
			if strings.HasPrefix(u, "https:") {
				c = fed
			}
			resp, err := c.Get(u)
			if err != nil {
				return false
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return false
			}
		}
		return true
	}
	deadline := time.Now().Add(startTimeout)
	for !ready() {
		select {
		case <-exited:
			out := logs.String()
			if strings.Contains(out, "address already in use") {
				return nil, true
			}
			t.Fatalf("Dendrite exited during start (%v):\n%s", waitErr, tail(out, 16<<10))
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			stop()
			t.Fatalf("Dendrite did not answer within %v:\n%s", startTimeout, tail(logs.String(), 16<<10))
		}
	}
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			t.Logf("Dendrite log:\n%s", tail(logs.String(), 24<<10))
		}
	})
	return d, false
}

// dendriteConfig edits the config Dendrite's generate-config -ci wrote.
// Each change, and why:
//
//   - global.private_key: the key generate-keys made (the generated
//     config names a relative matrix_key.pem).
//   - global.presence.enable_inbound/enable_outbound false: presence is
//     not what this suite tests, and presence EDUs would be extra traffic
//     in every transaction.
//   - global.server_notices.enabled false: no server notices user and room
//     made at start.
//   - global.trusted_third_party_id_servers []: nothing leaves the machine.
//   - federation_api.disable_tls_validation true: Dendrite v0.13.8 has no
//     setting for extra CA certificates, so it cannot be told to trust the
//     test CA; it skips validation instead (Ganglion's side does verify).
//   - federation_api.key_perspectives []: keys are fetched from the
//     servers themselves, never from matrix.org (the -ci config already
//     clears them; set here so it does not depend on that).
//   - client_api.registration_disabled false, registration_shared_secret:
//     open registration for the test users (with the -really-enable-open-
//     registration flag), the shared secret for admin registration.
//   - client_api.rate_limiting.enabled false: tests send bursts.
//   - mscs.mscs []: no experimental features.
//   - sync_api.search.enabled false: no full-text index to build.
//   - logging: to stderr (which the test collects), level info.
//
// Dendrite v0.13.8 has no outbound IP range deny list for federation, so
// nothing is needed to let it reach Ganglion on loopback.
func dendriteConfig(t testing.TB, generated []byte, keyPath string) []byte {
	t.Helper()
	var doc map[string]any
	if err := yaml.Unmarshal(generated, &doc); err != nil {
		t.Fatalf("parse Dendrite's generated config: %v\n%s", err, generated)
	}
	section := func(name string) map[string]any {
		t.Helper()
		s, ok := doc[name].(map[string]any)
		if !ok {
			t.Fatalf("Dendrite's generated config has no %s section:\n%s", name, generated)
		}
		return s
	}
	global := section("global")
	global["private_key"] = keyPath
	global["presence"] = map[string]any{"enable_inbound": false, "enable_outbound": false}
	global["server_notices"] = map[string]any{"enabled": false}
	global["trusted_third_party_id_servers"] = []any{}
	fed := section("federation_api")
	fed["disable_tls_validation"] = true
	fed["key_perspectives"] = []any{}
	clientAPI := section("client_api")
	clientAPI["registration_disabled"] = false
	clientAPI["registration_shared_secret"] = sharedSecret
	clientAPI["rate_limiting"] = map[string]any{"enabled": false}
	section("mscs")["mscs"] = []any{}
	if search, ok := section("sync_api")["search"].(map[string]any); ok {
		search["enabled"] = false
	}
	doc["logging"] = []any{map[string]any{"type": "std", "level": "info"}}
	out, err := yaml.Marshal(doc)
	if err != nil {
		t.Fatalf("encode Dendrite's config: %v", err)
	}
	return out
}

// eventually is testutil.EventuallyState with the suite's federation
// ceiling.
func eventually(t testing.TB, cond func() (bool, string)) {
	t.Helper()
	testutil.EventuallyState(t, federationWait, cond)
}
