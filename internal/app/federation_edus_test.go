package app

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"testing"

	"ganglion/internal/config"
)

// A process wires the EDU handlers and lets the client API ask other
// servers: a remote user's profile is fetched over federation (here from
// a loopback address the default federation_ip_range_blacklist refuses, so
// 502 — without the wiring it was 404).
func TestFederationEDUsAndQueriesWired(t *testing.T) {
	dir := t.TempDir()
	doc := `server_name: app.test
listeners:
  - {port: 8008, type: http, bind_addresses: [127.0.0.1], resources: [{names: [client, federation]}]}
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
	if p.fed.edus == nil {
		t.Fatal("no EDU handlers")
	}
	rec := httptest.NewRecorder()
	p.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/_matrix/client/v3/profile/"+url.PathEscape("@x:127.0.0.1:1"), nil))
	var body map[string]any
	if rec.Code != 502 || json.Unmarshal(rec.Body.Bytes(), &body) != nil || body["errcode"] != "M_UNKNOWN" {
		t.Fatalf("remote profile: %d %s", rec.Code, rec.Body.String())
	}
}
