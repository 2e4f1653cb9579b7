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
	"strings"
	"testing"

	"ganglion/internal/config"
)

// The OpenID endpoints are wired: userinfo answers on federation and
// openid listeners (Synapse's openid resource is that one endpoint) and
// not on a client listener; request_token is a client endpoint behind the
// access token.
func TestOpenIDEndpointsOnListeners(t *testing.T) {
	dir := t.TempDir()
	doc := `server_name: app.test
listeners:
  - {port: 8008, type: http, bind_addresses: [127.0.0.1], resources: [{names: [client]}]}
  - {port: 8448, type: http, bind_addresses: [127.0.0.1], resources: [{names: [federation]}]}
  - {port: 8449, type: http, bind_addresses: [127.0.0.1], resources: [{names: [openid]}]}
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
	do := func(l config.Listener, method, uri string) (int, string) {
		rec := httptest.NewRecorder()
		p.listenerHandler(l).ServeHTTP(rec, httptest.NewRequest(method, uri, strings.NewReader("{}")))
		var body struct {
			Errcode string `json:"errcode"`
		}
		_ = json.Unmarshal(rec.Body.Bytes(), &body)
		return rec.Code, body.Errcode
	}
	ls := cfg.Listeners()
	info := "/_matrix/federation/v1/openid/userinfo?access_token=nope"
	for _, l := range ls[1:] {
		if code, errcode := do(l, http.MethodGet, info); code != 401 || errcode != "M_UNKNOWN_TOKEN" {
			t.Errorf("userinfo on %v: %d %s, want 401 M_UNKNOWN_TOKEN", l.Resources, code, errcode)
		}
	}
	if code, _ := do(ls[0], http.MethodGet, info); code != 404 {
		t.Errorf("userinfo on the client listener: %d, want 404", code)
	}
	if code, _ := do(ls[2], http.MethodGet, "/_matrix/federation/v1/version"); code != 404 {
		t.Errorf("the openid listener serves other federation endpoints: %d", code)
	}
	if code, errcode := do(ls[0], http.MethodPost, "/_matrix/client/v3/user/@a:app.test/openid/request_token"); code != 401 || errcode != "M_MISSING_TOKEN" {
		t.Errorf("request_token without a token: %d %s", code, errcode)
	}
}
