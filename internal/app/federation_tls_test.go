package app_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"ganglion/internal/app"
	"ganglion/internal/config"
	"ganglion/internal/events"
	"ganglion/internal/federation/client"
	"ganglion/internal/testutil/testca"
	"ganglion/internal/version"
)

// Another server's federation client reaches a running process's TLS
// federation listener, trusting the test CA, and reads its version: the
// path the federation end-to-end tests take.
func TestFederationVersionOverTLS(t *testing.T) {
	dir := t.TempDir()
	ca := testca.New(t)
	cert, key := ca.WriteServerCert(t, dir, "127.0.0.1", "localhost")
	port := freePort(t)
	doc := fmt.Sprintf(`server_name: app.test
listeners:
  - {port: %d, type: http, tls: true, bind_addresses: [127.0.0.1], resources: [{names: [federation]}]}
tls_certificate_path: %s
tls_private_key_path: %s
database: {name: sqlite3, args: {database: %s}}
signing_key_path: %s
media_store_path: %s
`, port, cert, key, filepath.Join(dir, "hs.db"), filepath.Join(dir, "key"), filepath.Join(dir, "media"))
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

	ourKey, err := events.GenerateSigningKey()
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.New(client.Options{ServerName: "other.test", Key: ourKey, RootCAs: ca.Pool(),
		IPFilter: client.IPFilter{Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}}})
	if err != nil {
		t.Fatal(err)
	}
	var out struct {
		Server struct{ Name, Version string } `json:"server"`
	}
	if err := c.SignedGetJSON(ctx, fmt.Sprintf("127.0.0.1:%d", port), "/_matrix/federation/v1/version", &out); err != nil {
		t.Fatal(err)
	}
	if out.Server.Name != version.Name || out.Server.Version != version.String() {
		t.Fatalf("version answer %+v", out)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
