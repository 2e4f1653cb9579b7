package xmatrix_test

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"ganglion/internal/events"
	"ganglion/internal/federation/xmatrix"
	"ganglion/internal/mxhttp"
)

// keyring is a VerifyKeyFinder over fixed keys, each valid until a time.
type keyring struct {
	keys  map[string]ed25519.PublicKey // "server|keyid"
	until map[string]int64
	calls atomic.Int64
	lastT atomic.Int64
}

func newKeyring() *keyring {
	return &keyring{keys: map[string]ed25519.PublicKey{}, until: map[string]int64{}}
}

func (k *keyring) add(server string, key events.SigningKey, validUntil int64) {
	k.keys[server+"|"+key.ID] = key.Public()
	k.until[server+"|"+key.ID] = validUntil
}

func (k *keyring) VerifyKey(_ context.Context, server, keyID string, atTS int64) (ed25519.PublicKey, error) {
	k.calls.Add(1)
	k.lastT.Store(atTS)
	pub, ok := k.keys[server+"|"+keyID]
	if !ok {
		return nil, fmt.Errorf("no key %s for %s", keyID, server)
	}
	if atTS > k.until[server+"|"+keyID] {
		return nil, fmt.Errorf("key %s of %s expired", keyID, server)
	}
	return pub, nil
}

func mustKey(t *testing.T) events.SigningKey {
	t.Helper()
	k, err := events.GenerateSigningKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

var now = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// signedRequest builds a request as a remote server would send it.
func signedRequest(t *testing.T, key events.SigningKey, origin, dest, method, uri, body string) *http.Request {
	t.Helper()
	var content json.RawMessage
	if body != "" {
		content = json.RawMessage(body)
	}
	p, err := xmatrix.Sign(xmatrix.Request{Method: method, URI: uri, Origin: origin, Destination: dest, Content: content}, key)
	if err != nil {
		t.Fatal(err)
	}
	r := httptest.NewRequest(method, uri, strings.NewReader(body))
	r.Header.Set("Authorization", p.Format())
	return r
}

type answer struct {
	status  int
	errcode string
	origin  string
	body    string
}

func serve(t *testing.T, a *xmatrix.Authenticator, r *http.Request) answer {
	t.Helper()
	var got answer
	h := a.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got.origin, _ = xmatrix.Origin(r.Context())
		b, _ := io.ReadAll(r.Body)
		got.body = string(b)
		w.WriteHeader(200)
	}))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, r)
	got.status = rec.Code
	if rec.Code != 200 {
		var e struct {
			Errcode string `json:"errcode"`
			Error   string `json:"error"`
		}
		if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || e.Error == "" {
			t.Fatalf("error answer %d is not Matrix JSON: %s", rec.Code, rec.Body.String())
		}
		got.errcode = e.Errcode
	}
	return got
}

func TestAuthenticator(t *testing.T) {
	remote, other := mustKey(t), mustKey(t)
	ring := newKeyring()
	ring.add("remote.example", remote, now.Add(time.Hour).UnixMilli())
	ring.add("expired.example", remote, now.Add(-time.Minute).UnixMilli())
	const body = `{"pdus":[],"edus":[{"edu_type":"m.typing","content":{"n":1.5}}]}`
	const uri = "/_matrix/federation/v1/send/txn1?a=b%20c"

	for _, tc := range []struct {
		name    string
		req     func() *http.Request
		status  int
		errcode string
	}{
		{name: "signed PUT with body and query", status: 200, req: func() *http.Request {
			return signedRequest(t, remote, "remote.example", "us.example", "PUT", uri, body)
		}},
		{name: "signed GET without body", status: 200, req: func() *http.Request {
			return signedRequest(t, remote, "remote.example", "us.example", "GET", "/_matrix/federation/v1/version", "")
		}},
		{name: "older server: no destination parameter", status: 200, req: func() *http.Request {
			r := signedRequest(t, remote, "remote.example", "us.example", "GET", "/_matrix/federation/v1/query/profile?user_id=@a:us.example", "")
			p, _ := xmatrix.ParseHeader(r.Header.Get("Authorization"))
			p.Destination = ""
			r.Header.Set("Authorization", strings.Replace(p.Format(), "X-Matrix", "x-MATRIX", 1))
			return r
		}},
		{name: "second Authorization header is X-Matrix", status: 200, req: func() *http.Request {
			r := signedRequest(t, remote, "remote.example", "us.example", "GET", "/_matrix/federation/v1/version", "")
			h := r.Header.Get("Authorization")
			r.Header.Set("Authorization", "Bearer nope")
			r.Header.Add("Authorization", h)
			return r
		}},
		{name: "missing header", status: 401, errcode: "M_UNAUTHORIZED", req: func() *http.Request {
			r := signedRequest(t, remote, "remote.example", "us.example", "GET", "/_matrix/federation/v1/version", "")
			r.Header.Del("Authorization")
			return r
		}},
		{name: "other scheme only", status: 401, errcode: "M_UNAUTHORIZED", req: func() *http.Request {
			r := signedRequest(t, remote, "remote.example", "us.example", "GET", "/_matrix/federation/v1/version", "")
			r.Header.Set("Authorization", "Bearer abc")
			return r
		}},
		{name: "malformed header", status: 401, errcode: "M_UNAUTHORIZED", req: func() *http.Request {
			r := signedRequest(t, remote, "remote.example", "us.example", "GET", "/_matrix/federation/v1/version", "")
			r.Header.Set("Authorization", `X-Matrix origin="remote.example,key="ed25519:x"`)
			return r
		}},
		{name: "invalid origin", status: 401, errcode: "M_UNAUTHORIZED", req: func() *http.Request {
			return signedRequest(t, remote, "remote example", "us.example", "GET", "/_matrix/federation/v1/version", "")
		}},
		{name: "forged: signed with another key under remote's key id", status: 401, errcode: "M_UNAUTHORIZED", req: func() *http.Request {
			forged := events.SigningKey{ID: remote.ID, Private: other.Private}
			return signedRequest(t, forged, "remote.example", "us.example", "GET", "/_matrix/federation/v1/version", "")
		}},
		{name: "unknown key id", status: 401, errcode: "M_UNAUTHORIZED", req: func() *http.Request {
			return signedRequest(t, other, "remote.example", "us.example", "GET", "/_matrix/federation/v1/version", "")
		}},
		{name: "key expired at request time", status: 401, errcode: "M_UNAUTHORIZED", req: func() *http.Request {
			return signedRequest(t, remote, "expired.example", "us.example", "GET", "/_matrix/federation/v1/version", "")
		}},
		{name: "tampered body", status: 401, errcode: "M_UNAUTHORIZED", req: func() *http.Request {
			r := signedRequest(t, remote, "remote.example", "us.example", "PUT", uri, body)
			tampered := strings.Replace(body, "1.5", "2.5", 1)
			r.Body, r.ContentLength = io.NopCloser(strings.NewReader(tampered)), int64(len(tampered))
			return r
		}},
		{name: "tampered query", status: 401, errcode: "M_UNAUTHORIZED", req: func() *http.Request {
			r := signedRequest(t, remote, "remote.example", "us.example", "PUT", uri, body)
			r2 := httptest.NewRequest("PUT", uri+"&x=1", strings.NewReader(body))
			r2.Header = r.Header
			return r2
		}},
		{name: "other method", status: 401, errcode: "M_UNAUTHORIZED", req: func() *http.Request {
			r := signedRequest(t, remote, "remote.example", "us.example", "PUT", uri, body)
			r2 := httptest.NewRequest("POST", uri, strings.NewReader(body))
			r2.Header = r.Header
			return r2
		}},
		{name: "signed for another destination", status: 401, errcode: "M_UNAUTHORIZED", req: func() *http.Request {
			return signedRequest(t, remote, "remote.example", "them.example", "GET", "/_matrix/federation/v1/version", "")
		}},
		{name: "old server signed for another destination", status: 401, errcode: "M_UNAUTHORIZED", req: func() *http.Request {
			r := signedRequest(t, remote, "remote.example", "them.example", "GET", "/_matrix/federation/v1/version", "")
			p, _ := xmatrix.ParseHeader(r.Header.Get("Authorization"))
			p.Destination = ""
			r.Header.Set("Authorization", p.Format())
			return r
		}},
		{name: "body not JSON", status: 400, errcode: "M_NOT_JSON", req: func() *http.Request {
			r := signedRequest(t, remote, "remote.example", "us.example", "PUT", uri, body)
			r.Body, r.ContentLength = io.NopCloser(strings.NewReader("{nope")), 5
			return r
		}},
		{name: "body not an object", status: 400, errcode: "M_NOT_JSON", req: func() *http.Request {
			return signedRequest(t, remote, "remote.example", "us.example", "PUT", uri, `[1]`)
		}},
		{name: "empty PUT body", status: 400, errcode: "M_NOT_JSON", req: func() *http.Request {
			return signedRequest(t, remote, "remote.example", "us.example", "PUT", uri, "")
		}},
		{name: "body too large", status: 413, errcode: "M_TOO_LARGE", req: func() *http.Request {
			return signedRequest(t, remote, "remote.example", "us.example", "PUT", uri, `{"x":"`+strings.Repeat("a", 2000)+`"}`)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := &xmatrix.Authenticator{ServerName: "us.example", Keys: ring, Now: func() time.Time { return now }, MaxBody: 1024}
			got := serve(t, a, tc.req())
			if got.status != tc.status || got.errcode != tc.errcode {
				t.Fatalf("got %d %s, want %d %s", got.status, got.errcode, tc.status, tc.errcode)
			}
			if tc.status == 200 && got.origin != "remote.example" {
				t.Fatalf("origin in context %q, want remote.example", got.origin)
			}
		})
	}
}

// The handler reads the same body the signature covered, and the key is
// asked for as valid at the request time.
func TestAuthenticatorPassesBodyAndTime(t *testing.T) {
	remote := mustKey(t)
	ring := newKeyring()
	ring.add("remote.example", remote, now.Add(time.Hour).UnixMilli())
	a := &xmatrix.Authenticator{ServerName: "us.example", Keys: ring, Now: func() time.Time { return now }}
	const body = ` {"b":1,"a":[true]} `
	got := serve(t, a, signedRequest(t, remote, "remote.example", "us.example", "POST", "/_matrix/federation/v1/get_missing_events/!r:x", body))
	if got.status != 200 || got.body != body {
		t.Fatalf("got %d with body %q, want 200 with %q", got.status, got.body, body)
	}
	if ring.lastT.Load() != now.UnixMilli() {
		t.Fatalf("key asked for at %d, want %d", ring.lastT.Load(), now.UnixMilli())
	}
}

func TestAuthenticatorDomainWhitelist(t *testing.T) {
	remote := mustKey(t)
	ring := newKeyring()
	ring.add("remote.example", remote, now.Add(time.Hour).UnixMilli())
	ring.add("friend.example", remote, now.Add(time.Hour).UnixMilli())
	a := &xmatrix.Authenticator{ServerName: "us.example", Keys: ring, Now: func() time.Time { return now },
		DomainWhitelist: map[string]bool{"friend.example": true}}
	got := serve(t, a, signedRequest(t, remote, "remote.example", "us.example", "GET", "/_matrix/federation/v1/version", ""))
	if got.status != 403 || got.errcode != "M_FORBIDDEN" {
		t.Fatalf("server outside the whitelist: got %d %s, want 403 M_FORBIDDEN", got.status, got.errcode)
	}
	if ring.calls.Load() != 0 {
		t.Fatal("keys of a server outside the whitelist were looked up")
	}
	got = serve(t, a, signedRequest(t, remote, "friend.example", "us.example", "GET", "/_matrix/federation/v1/version", ""))
	if got.status != 200 || got.origin != "friend.example" {
		t.Fatalf("whitelisted server: got %d, origin %q", got.status, got.origin)
	}
}

// A destination mismatch is refused before any key is fetched.
func TestAuthenticatorDestinationMismatchFetchesNoKey(t *testing.T) {
	remote := mustKey(t)
	ring := newKeyring()
	a := &xmatrix.Authenticator{ServerName: "us.example", Keys: ring}
	got := serve(t, a, signedRequest(t, remote, "remote.example", "them.example", "GET", "/_matrix/federation/v1/version", ""))
	if got.status != 401 || ring.calls.Load() != 0 {
		t.Fatalf("got %d after %d key lookups, want 401 after none", got.status, ring.calls.Load())
	}
}

// The signature covers the spec's JSON object: it is the signature
// events.SignJSON (the generic "Signing JSON" algorithm) puts on
// {method, uri, origin, destination, content}.
func TestSignMatchesSigningJSON(t *testing.T) {
	key := mustKey(t)
	content := `{"z":1,"a":{"y":"\u00e9","x":[1,2]}}`
	p, err := xmatrix.Sign(xmatrix.Request{Method: "PUT", URI: "/_matrix/federation/v1/send/1", Origin: "o.example",
		Destination: "d.example", Content: json.RawMessage(content)}, key)
	if err != nil {
		t.Fatal(err)
	}
	obj := `{"method":"PUT","uri":"/_matrix/federation/v1/send/1","origin":"o.example","destination":"d.example","content":` + content + `}`
	signed, err := events.SignJSON([]byte(obj), "o.example", key)
	if err != nil {
		t.Fatal(err)
	}
	var out struct {
		Signatures map[string]map[string]string `json:"signatures"`
	}
	if err := json.Unmarshal(signed, &out); err != nil {
		t.Fatal(err)
	}
	if want := out.Signatures["o.example"][key.ID]; p.Sig != want {
		t.Fatalf("sig %s, want %s", p.Sig, want)
	}
	if p.Origin != "o.example" || p.Destination != "d.example" || p.Key != key.ID {
		t.Fatalf("params %+v", p)
	}
}

func TestVerifyRejectsMalformedSignature(t *testing.T) {
	key := mustKey(t)
	ring := newKeyring()
	ring.add("o.example", key, now.Add(time.Hour).UnixMilli())
	req := xmatrix.Request{Method: "GET", URI: "/x", Origin: "o.example", Destination: "d.example"}
	p, err := xmatrix.Sign(req, key)
	if err != nil {
		t.Fatal(err)
	}
	if err := xmatrix.Verify(context.Background(), ring, p, req, now.UnixMilli()); err != nil {
		t.Fatalf("good signature: %v", err)
	}
	for _, sig := range []string{"", "!!!", "AAAA"} {
		bad := p
		bad.Sig = sig
		if err := xmatrix.Verify(context.Background(), ring, bad, req, now.UnixMilli()); !errors.Is(err, xmatrix.ErrBadSignature) {
			t.Errorf("sig %q: got %v, want ErrBadSignature", sig, err)
		}
	}
	other := p
	other.Key = "curve25519:x"
	if err := xmatrix.Verify(context.Background(), ring, other, req, now.UnixMilli()); err == nil {
		t.Error("a non-ed25519 key id verified")
	}
}

// Auth wraps error-returning handlers the same way.
func TestAuthWrapsHandlerFunc(t *testing.T) {
	remote := mustKey(t)
	ring := newKeyring()
	ring.add("remote.example", remote, now.Add(time.Hour).UnixMilli())
	a := &xmatrix.Authenticator{ServerName: "us.example", Keys: ring, Now: func() time.Time { return now }}
	h := mxhttp.NewServer(slog.New(slog.DiscardHandler)).Handle(a.Auth(func(w http.ResponseWriter, r *http.Request) error {
		origin, ok := xmatrix.Origin(r.Context())
		if !ok {
			return errors.New("no origin")
		}
		return mxhttp.WriteJSON(w, 200, map[string]string{"origin": origin})
	}))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, signedRequest(t, remote, "remote.example", "us.example", "PUT", "/_matrix/federation/v1/send/1", `{}`))
	if rec.Code != 200 || !strings.Contains(rec.Body.String(), `"origin":"remote.example"`) {
		t.Fatalf("signed: %d %s", rec.Code, rec.Body.String())
	}
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("PUT", "/_matrix/federation/v1/send/1", strings.NewReader(`{}`)))
	if rec.Code != 401 || !strings.Contains(rec.Body.String(), "M_UNAUTHORIZED") {
		t.Fatalf("unsigned: %d %s", rec.Code, rec.Body.String())
	}
}
