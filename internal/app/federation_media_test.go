package app_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"ganglion/internal/app"
	"ganglion/internal/config"
	"ganglion/internal/testutil/testca"
)

// fedServer is a running monolith whose one TLS listener serves the client,
// media and federation resources, named by its address.
type fedServer struct {
	name string // 127.0.0.1:port
	hc   *http.Client
	stop func()
}

func startFedServer(t *testing.T, ca *testca.CA, port int) *fedServer {
	t.Helper()
	dir := t.TempDir()
	cert, key := ca.WriteServerCert(t, dir, "127.0.0.1")
	doc := fmt.Sprintf(`server_name: "127.0.0.1:%d"
listeners:
  - {port: %d, type: http, tls: true, bind_addresses: [127.0.0.1], resources: [{names: [client, federation]}]}
tls_certificate_path: %s
tls_private_key_path: %s
database: {name: sqlite3, args: {database: %s}}
signing_key_path: %s
media_store_path: %s
report_stats: false
enable_registration: true
enable_registration_without_verification: true
trusted_key_servers: []
federation_custom_ca_list: [%s]
ip_range_whitelist: [127.0.0.1]
`, port, port, cert, key, filepath.Join(dir, "hs.db"), filepath.Join(dir, "key"), filepath.Join(dir, "media"),
		ca.WriteCA(t, dir))
	path := filepath.Join(dir, "homeserver.yaml")
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load([]string{path}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p, err := app.New(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if err := p.Listen(); err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Error(err)
			}
		})
	}
	t.Cleanup(stop)
	return &fedServer{name: fmt.Sprintf("127.0.0.1:%d", port), stop: stop,
		hc: &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool()}}}}
}

func (s *fedServer) do(t *testing.T, method, path, token, contentType string, body []byte) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, "https://"+s.name+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := s.hc.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, data
}

func (s *fedServer) register(t *testing.T, user string) string {
	t.Helper()
	body := fmt.Sprintf(`{"username":%q,"password":"a long password","auth":{"type":"m.login.dummy"}}`, user)
	resp, data := s.do(t, "POST", "/_matrix/client/v3/register", "", "application/json", []byte(body))
	var out struct {
		AccessToken string `json:"access_token"`
	}
	if resp.StatusCode != 200 || json.Unmarshal(data, &out) != nil || out.AccessToken == "" {
		t.Fatalf("register %s on %s: %d %s", user, s.name, resp.StatusCode, data)
	}
	return out.AccessToken
}

// Media uploaded on one server is downloaded by a user of another, which
// fetches it over the authenticated federation media endpoint (signed,
// checked with its key fetched from it), caches it and makes thumbnails
// of it; unknown remote media is 404.
func TestFederationMediaBetweenServers(t *testing.T) {
	ca := testca.New(t)
	ports := freePorts(t, 2)
	a, b := startFedServer(t, ca, ports[0]), startFedServer(t, ca, ports[1])
	alice, bob := a.register(t, "alice"), b.register(t, "bob")

	var img bytes.Buffer
	img.Write(pngOf(t, 100, 60))
	resp, data := b.do(t, "POST", "/_matrix/media/v3/upload?filename=pic.png", bob, "image/png", img.Bytes())
	var up struct {
		ContentURI string `json:"content_uri"`
	}
	if resp.StatusCode != 200 || json.Unmarshal(data, &up) != nil {
		t.Fatalf("upload: %d %s", resp.StatusCode, data)
	}
	mxc := strings.TrimPrefix(up.ContentURI, "mxc://")
	if !strings.HasPrefix(mxc, b.name+"/") {
		t.Fatalf("content_uri %q", up.ContentURI)
	}

	resp, data = a.do(t, "GET", "/_matrix/client/v1/media/download/"+mxc, alice, "", nil)
	if resp.StatusCode != 200 || !bytes.Equal(data, img.Bytes()) {
		t.Fatalf("remote download: %d, %d bytes (want %d): %.200s", resp.StatusCode, len(data), img.Len(), data)
	}
	if cd := resp.Header.Get("Content-Disposition"); cd != `inline; filename="pic.png"` {
		t.Errorf("Content-Disposition = %q", cd)
	}
	resp, data = a.do(t, "GET", "/_matrix/client/v1/media/thumbnail/"+mxc+"?width=32&height=32&method=crop", alice, "", nil)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "image/png" {
		t.Errorf("remote thumbnail: %d %s", resp.StatusCode, data)
	}
	resp, data = a.do(t, "GET", "/_matrix/client/v1/media/download/"+b.name+"/nosuchmedia", alice, "", nil)
	if resp.StatusCode != 404 || !strings.Contains(string(data), "M_NOT_FOUND") {
		t.Errorf("unknown remote media: %d %s", resp.StatusCode, data)
	}

	// With the other server gone, the cached copy is still served.
	b.stop()
	resp, data = a.do(t, "GET", "/_matrix/client/v1/media/download/"+mxc, alice, "", nil)
	if resp.StatusCode != 200 || !bytes.Equal(data, img.Bytes()) {
		t.Errorf("cached download with the remote down: %d %.200s", resp.StatusCode, data)
	}
}

func pngOf(t *testing.T, w, h int) []byte {
	t.Helper()
	m := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			m.Set(x, y, color.RGBA{uint8(x), uint8(y), 100, 255})
		}
	}
	var b bytes.Buffer
	if err := png.Encode(&b, m); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}
