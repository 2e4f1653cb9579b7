package app_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"ganglion/internal/app"
	"ganglion/internal/config"
	"ganglion/internal/federation/serverkeys"
)

func freePorts(t *testing.T, n int) []int {
	t.Helper()
	var out []int
	var lns []net.Listener
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
		out = append(out, ln.Addr().(*net.TCPAddr).Port)
	}
	for _, ln := range lns {
		_ = ln.Close()
	}
	return out
}

// The key API is served on a listener with the keys resource (and not on a
// client-only one), with key_refresh_interval and old_signing_keys from the
// config.
func TestKeyServerListenerAndConfig(t *testing.T) {
	dir := t.TempDir()
	ports := freePorts(t, 2)
	oldKey := "l8Hft5qXKn1vfHrg3p4+W8gELQVo8N13JkluMfmn2sQ"
	doc := fmt.Sprintf(`server_name: app.test
listeners:
  - {port: %d, type: http, bind_addresses: [127.0.0.1], resources: [{names: [keys]}]}
  - {port: %d, type: http, bind_addresses: [127.0.0.1], resources: [{names: [client]}]}
database: {name: sqlite3, args: {database: %s}}
signing_key_path: %s
media_store_path: %s
report_stats: false
trusted_key_servers: []
key_refresh_interval: 2h
old_signing_keys: {"ed25519:old": {key: "%s", expired_ts: 1600000000000}}
`, ports[0], ports[1], filepath.Join(dir, "hs.db"), filepath.Join(dir, "key"), filepath.Join(dir, "media"), oldKey)
	path := filepath.Join(dir, "homeserver.yaml")
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load([]string{path}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	p, err := app.New(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Listen(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	addrs := p.Addrs()
	get := func(addr net.Addr, path string) (int, []byte) {
		resp, err := http.Get("http://" + addr.String() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}

	code, body := get(addrs[0], serverkeys.PathServer)
	if code != 200 {
		t.Fatalf("keys listener: %d %s", code, body)
	}
	r, err := serverkeys.ParseResponse(body)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.CheckSelfSigned(); err != nil || r.ServerName != "app.test" {
		t.Errorf("answer of %q: %v", r.ServerName, err)
	}
	if until := r.ValidUntilTS - time.Now().UnixMilli(); until < time.Hour.Milliseconds() || until > 2*time.Hour.Milliseconds() {
		t.Errorf("valid for %dms, want about 2h", until)
	}
	if o, ok := r.OldVerifyKeys["ed25519:old"]; !ok || o.ExpiredTS != 1600000000000 {
		t.Errorf("old_verify_keys %v", r.OldVerifyKeys)
	}
	if code, _ := get(addrs[0], "/_matrix/client/versions"); code != 404 {
		t.Errorf("keys listener served the client API: %d", code)
	}
	code, body = get(addrs[1], serverkeys.PathServer)
	var e struct{ Errcode string }
	_ = json.Unmarshal(body, &e)
	if code != 404 || e.Errcode != "M_UNRECOGNIZED" {
		t.Errorf("client listener served the key API: %d %s", code, body)
	}
}
