package app

import (
	"context"
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"ganglion/internal/config"
)

// PUT /_matrix/federation/v1/send/{txnId} is mounted on a listener with the
// federation resource, behind X-Matrix: an unsigned transaction is refused
// with 401, not 404.
func TestFederationSendMounted(t *testing.T) {
	dir := t.TempDir()
	doc := `server_name: app.test
listeners:
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
	rec := httptest.NewRecorder()
	p.listenerHandler(cfg.Listeners()[0]).ServeHTTP(rec, httptest.NewRequest("PUT", "/_matrix/federation/v1/send/t1",
		strings.NewReader(`{"origin":"remote.test","origin_server_ts":1,"pdus":[]}`)))
	if rec.Code != 401 || !strings.Contains(rec.Body.String(), "M_UNAUTHORIZED") {
		t.Fatalf("unsigned transaction: %d %s, want 401 M_UNAUTHORIZED", rec.Code, rec.Body.String())
	}
}
