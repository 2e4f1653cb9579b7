package openid_test

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"ganglion/internal/accounts"
	"ganglion/internal/mxhttp"
	"ganglion/internal/openid"
	"ganglion/internal/storage"
	"ganglion/internal/storage/storagetest"
)

// fakeAuth stands for the access token check: the X-Test-User header is
// the authenticated user, its absence a missing token.
func fakeAuth(h accounts.AuthedHandler) mxhttp.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		u := r.Header.Get("X-Test-User")
		if u == "" {
			return mxhttp.MissingToken()
		}
		return h(w, r, &accounts.Requester{UserID: u})
	}
}

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func call(t *testing.T, h http.Handler, method, uri, user, body string) (int, map[string]any) {
	t.Helper()
	req := httptest.NewRequest(method, uri, bytes.NewReader([]byte(body)))
	if user != "" {
		req.Header.Set("X-Test-User", user)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	var out map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
		t.Fatalf("%s %s: %d %q is not a JSON object", method, uri, rec.Code, rec.Body.String())
	}
	return rec.Code, out
}

func TestOpenIDTokenAndUserinfo(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		log := slog.New(slog.NewTextHandler(io.Discard, nil))
		c := &clock{time.UnixMilli(1_700_000_000_000)}
		svc := openid.New(db, "home.test", openid.Options{Now: c.now}, log)
		mux := mxhttp.NewMux()
		svc.Routes(mux, mxhttp.NewServer(log), fakeAuth)
		const alice = "@alice:home.test"
		reqPath := "/_matrix/client/v3/user/" + url.PathEscape(alice) + "/openid/request_token"

		code, body := call(t, mux, "POST", reqPath, alice, `{}`)
		tok, _ := body["access_token"].(string)
		if code != 200 || tok == "" || body["token_type"] != "Bearer" || body["matrix_server_name"] != "home.test" ||
			body["expires_in"] != float64(3600) {
			t.Fatalf("request_token: %d %v", code, body)
		}
		var stored int
		if err := db.Reader().QueryRowContext(t.Context(), `SELECT COUNT(*) FROM openid_tokens WHERE token_hash = $1 OR user_id = $1`, tok).Scan(&stored); err != nil || stored != 0 {
			t.Errorf("the token itself is in the table (%d rows, %v): only its hash may be", stored, err)
		}
		info := "/_matrix/federation/v1/openid/userinfo?access_token="
		// No X-Matrix: the userinfo endpoint is for third parties.
		code, body = call(t, mux, "GET", info+url.QueryEscape(tok), "", "")
		if code != 200 || body["sub"] != alice {
			t.Errorf("userinfo: %d %v, want sub %s", code, body, alice)
		}
		// The r0 prefix issues tokens too, each different.
		code, body = call(t, mux, "POST", strings.Replace(reqPath, "/v3/", "/r0/", 1), alice, `{}`)
		if tok2, _ := body["access_token"].(string); code != 200 || tok2 == tok || tok2 == "" {
			t.Errorf("second token over r0: %d %v", code, body)
		}

		code, body = call(t, mux, "GET", info+"nope", "", "")
		if code != 401 || body["errcode"] != "M_UNKNOWN_TOKEN" {
			t.Errorf("unknown token: %d %v", code, body)
		}
		code, body = call(t, mux, "GET", "/_matrix/federation/v1/openid/userinfo", "", "")
		if code != 401 || body["errcode"] != "M_MISSING_TOKEN" {
			t.Errorf("no token: %d %v", code, body)
		}
		code, body = call(t, mux, "POST", "/_matrix/client/v3/user/"+url.PathEscape("@bob:home.test")+"/openid/request_token", alice, `{}`)
		if code != 403 || body["errcode"] != "M_FORBIDDEN" {
			t.Errorf("token for another user: %d %v", code, body)
		}
		code, body = call(t, mux, "POST", reqPath, "", `{}`)
		if code != 401 || body["errcode"] != "M_MISSING_TOKEN" {
			t.Errorf("unauthenticated request_token: %d %v", code, body)
		}
		code, body = call(t, mux, "POST", reqPath, alice, `[1]`)
		if code != 400 || (body["errcode"] != "M_BAD_JSON" && body["errcode"] != "M_NOT_JSON") {
			t.Errorf("non-object body: %d %v", code, body)
		}

		// An hour later the token is expired, and issuing a new one
		// removes the user's expired ones.
		c.t = c.t.Add(time.Hour)
		code, body = call(t, mux, "GET", info+url.QueryEscape(tok), "", "")
		if code != 401 || body["errcode"] != "M_UNKNOWN_TOKEN" {
			t.Errorf("expired token: %d %v", code, body)
		}
		if code, body = call(t, mux, "POST", reqPath, alice, `{}`); code != 200 {
			t.Fatalf("request_token: %d %v", code, body)
		}
		var n int
		if err := db.Reader().QueryRowContext(t.Context(), `SELECT COUNT(*) FROM openid_tokens WHERE user_id = $1`, alice).Scan(&n); err != nil || n != 1 {
			t.Errorf("alice has %d stored tokens (%v), want 1 after the expired ones went", n, err)
		}
	})
}
