package app

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	"ganglion/internal/config"
	"ganglion/internal/version"
)

// GET /_matrix/federation/v1/version answers on a listener with the
// federation resource, without authentication, and not on a client-only
// listener.
func TestFederationVersionEndpoint(t *testing.T) {
	dir := t.TempDir()
	doc := `server_name: app.test
listeners:
  - {port: 8008, type: http, bind_addresses: [127.0.0.1], resources: [{names: [client]}]}
  - {port: 8448, type: http, bind_addresses: [127.0.0.1], resources: [{names: [federation]}]}
database: {name: sqlite3, args: {database: ` + filepath.Join(dir, "hs.db") + `}}
signing_key_path: ` + filepath.Join(dir, "key") + `
media_store_path: ` + filepath.Join(dir, "media") + `
`
	path := filepath.Join(dir, "homeserver.yaml")
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load([]string{path}, nil)
	if err != nil {
		t.Fatal(err)
	}
	p, err := New(context.Background(), cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer p.db.Close()
	get := func(l config.Listener) *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		p.listenerHandler(l).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/_matrix/federation/v1/version", nil))
		return rec
	}
	rec := get(cfg.Listeners()[1])
	var body struct {
		Server struct {
			Name    string `json:"name"`
			Version string `json:"version"`
		} `json:"server"`
	}
	if rec.Code != 200 || json.Unmarshal(rec.Body.Bytes(), &body) != nil {
		t.Fatalf("federation listener: %d %s", rec.Code, rec.Body.String())
	}
	if body.Server.Name != "Ganglion" || body.Server.Version != version.String() || body.Server.Version == "" {
		t.Fatalf("version answer %+v", body)
	}
	if rec := get(cfg.Listeners()[0]); rec.Code != 404 {
		t.Fatalf("client-only listener: %d, want 404", rec.Code)
	}
}
