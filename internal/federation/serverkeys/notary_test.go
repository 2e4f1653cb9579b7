package serverkeys_test

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"ganglion/internal/events"
	"ganglion/internal/federation/serverkeys"
	"ganglion/internal/storage"
	"ganglion/internal/storage/storagetest"
)

// notarySetup is an origin server (remote.test), a Ganglion notary
// (notary.test, its own database) that can reach it, and the router that
// connects them.
type notarySetup struct {
	c         *clock
	rt        *router
	rkey      events.SigningKey
	notary    *serverkeys.Keyring
	notaryKey events.SigningKey
	origin    *serverkeys.Local
}

func newNotarySetup(t *testing.T, engine storage.Engine) *notarySetup {
	t.Helper()
	s := &notarySetup{c: newClock(), rt: newRouter(), rkey: mustKey(t), notaryKey: mustKey(t)}
	s.origin = newLocal(t, "remote.test", s.rkey, s.c, nil)
	s.rt.add(t, "remote.test", keyServer(s.origin))
	s.notary = serverkeys.NewKeyring(newLocal(t, "notary.test", s.notaryKey, s.c, nil),
		serverkeys.NewStore(storagetest.NewDB(t, engine)),
		serverkeys.Options{Getter: s.rt, Now: s.c.Now, MinRefetchInterval: time.Millisecond}, quietLog())
	s.rt.add(t, "notary.test", handler(s.notary))
	return s
}

// Keys fetched through a notary: the notary's signature is checked with its
// configured keys, and the origin's own signature too.
func TestKeyringThroughNotary(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		s := newNotarySetup(t, db.Engine())
		ctx := t.Context()

		k := newKeyring(t, db, s.c, serverkeys.Options{Poster: s.rt, Notaries: []serverkeys.Notary{
			{ServerName: "notary.test", VerifyKeys: map[string]ed25519.PublicKey{s.notaryKey.ID: s.notaryKey.Public()}}}})
		pub, err := k.VerifyKey(ctx, "remote.test", s.rkey.ID, s.c.MS())
		if err != nil || !pub.Equal(s.rkey.Public()) {
			t.Fatalf("through the notary: %v %v", pub, err)
		}
		sk, ok, err := serverkeys.NewStore(db).Key(ctx, "remote.test", s.rkey.ID)
		if err != nil || !ok || sk.FromServer != "notary.test" {
			t.Fatalf("stored %+v %v %v", sk, ok, err)
		}
		if n := s.rt.count("notary.test", serverkeys.PathQuery); n != 1 {
			t.Errorf("%d notary queries, want 1", n)
		}

		// The wrong notary key: its answers are refused.
		other := mustKey(t)
		bad := newKeyring(t, storagetest.NewDB(t, db.Engine()), s.c, serverkeys.Options{Poster: s.rt, Notaries: []serverkeys.Notary{
			{ServerName: "notary.test", VerifyKeys: map[string]ed25519.PublicKey{s.notaryKey.ID: other.Public()}}}})
		if _, err := bad.VerifyKey(ctx, "remote.test", s.rkey.ID, s.c.MS()); !errors.Is(err, serverkeys.ErrKeyNotFound) {
			t.Errorf("wrong notary key: %v, want ErrKeyNotFound", err)
		}
		// No verify_keys configured: believed (as Synapse), origin signature checked.
		open := newKeyring(t, storagetest.NewDB(t, db.Engine()), s.c, serverkeys.Options{Poster: s.rt,
			Notaries: []serverkeys.Notary{{ServerName: "notary.test"}}})
		if _, err := open.VerifyKey(ctx, "remote.test", s.rkey.ID, s.c.MS()); err != nil {
			t.Errorf("notary without configured keys: %v", err)
		}
	})
}

// A notary that alters the origin's answer is caught by the origin's
// signature; a notary that answers about another server is ignored; when
// the notary fails, the server itself is asked.
func TestKeyringNotaryTamperingAndFallback(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		c := newClock()
		rkey, nkey, evil := mustKey(t), mustKey(t), mustKey(t)
		genuine, _ := newLocal(t, "remote.test", rkey, c, nil).Response()
		altered := strings.Replace(string(genuine), events.EncodeBase64(rkey.Public()), events.EncodeBase64(evil.Public()), 1)
		aboutOther, _ := newLocal(t, "other.test", rkey, c, nil).Response()
		for name, entry := range map[string]string{"altered key": altered, "another server": string(aboutOther)} {
			signed, err := events.SignJSON([]byte(entry), "notary.test", nkey)
			if err != nil {
				t.Fatal(err)
			}
			rt := newRouter()
			rt.add(t, "notary.test", rawServer([]byte(`{"server_keys":[`+string(signed)+`]}`)))
			k := newKeyring(t, storagetest.NewDB(t, db.Engine()), c, serverkeys.Options{Poster: rt, Notaries: []serverkeys.Notary{
				{ServerName: "notary.test", VerifyKeys: map[string]ed25519.PublicKey{nkey.ID: nkey.Public()}}}})
			if _, err := k.VerifyKey(t.Context(), "remote.test", rkey.ID, c.MS()); !errors.Is(err, serverkeys.ErrKeyNotFound) {
				t.Errorf("%s: %v, want ErrKeyNotFound", name, err)
			}
		}

		rt := newRouter() // notary.test unreachable
		rt.add(t, "remote.test", rawServer(genuine))
		k := newKeyring(t, db, c, serverkeys.Options{Getter: rt, Poster: rt,
			Notaries: []serverkeys.Notary{{ServerName: "notary.test"}}})
		if _, err := k.VerifyKey(t.Context(), "remote.test", rkey.ID, c.MS()); err != nil {
			t.Fatalf("fallback to the server: %v", err)
		}
		if rt.count("notary.test", serverkeys.PathQuery) != 1 || rt.count("remote.test", serverkeys.PathServer) != 1 {
			t.Errorf("want the notary asked, then the server")
		}
	})
}

func doJSON(t *testing.T, h http.Handler, method, path, body string) (int, map[string]any) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req := httptest.NewRequest(method, path, rd)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	var out map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
		t.Fatalf("%s %s: %d %q: %v", method, path, rec.Code, rec.Body.String(), err)
	}
	return rec.Code, out
}

// answers splits a notary answer into its entries by server name, each
// checked to be signed by its server and by the notary.
func answers(t *testing.T, body map[string]any, notary events.SigningKey, keys map[string]events.SigningKey) map[string]*serverkeys.Response {
	t.Helper()
	list, ok := body["server_keys"].([]any)
	if !ok {
		t.Fatalf("no server_keys list in %v", body)
	}
	out := map[string]*serverkeys.Response{}
	for _, e := range list {
		raw, _ := json.Marshal(e)
		r, err := serverkeys.ParseResponse(raw)
		if err != nil {
			t.Fatal(err)
		}
		if err := r.CheckSelfSigned(); err != nil {
			t.Errorf("%s: %v", r.ServerName, err)
		}
		if k, ok := keys[r.ServerName]; ok {
			if err := events.VerifyJSON(raw, r.ServerName, k.ID, k.Public()); err != nil {
				t.Errorf("%s: origin signature: %v", r.ServerName, err)
			}
		}
		if err := events.VerifyJSON(raw, "notary.test", notary.ID, notary.Public()); err != nil {
			t.Errorf("%s: notary signature: %v", r.ServerName, err)
		}
		out[r.ServerName] = r
	}
	return out
}

// The notary endpoints: batch and single queries, our own keys, servers
// that cannot be reached left out, refetching when the cached answer is
// older than asked, and the spec's errors for bad queries.
func TestNotaryEndpoints(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		s := newNotarySetup(t, db.Engine())
		h := handler(s.notary)
		keys := map[string]events.SigningKey{"remote.test": s.rkey, "notary.test": s.notaryKey}

		code, body := doJSON(t, h, "POST", serverkeys.PathQuery, fmt.Sprintf(
			`{"server_keys":{"remote.test":{%q:{"minimum_valid_until_ts":%d}},"notary.test":{},"unreachable.test":{}}}`, s.rkey.ID, s.c.MS()))
		if code != 200 {
			t.Fatalf("batch: %d %v", code, body)
		}
		got := answers(t, body, s.notaryKey, keys)
		if len(got) != 2 || got["remote.test"] == nil || got["notary.test"] == nil {
			t.Fatalf("batch answered about %v, want remote.test and notary.test", got)
		}
		if !got["remote.test"].VerifyKeys[s.rkey.ID].Equal(s.rkey.Public()) {
			t.Errorf("remote key %v", got["remote.test"].VerifyKeys)
		}
		fetches := s.rt.count("remote.test", serverkeys.PathServer)

		// Cached and fresh: no fetch.
		code, body = doJSON(t, h, "GET", serverkeys.PathQuery+"/remote.test", "")
		if got := answers(t, body, s.notaryKey, keys); code != 200 || got["remote.test"] == nil {
			t.Fatalf("single: %d %v", code, body)
		}
		code, body = doJSON(t, h, "GET", serverkeys.PathQuery+"/remote.test/"+s.rkey.ID, "")
		if got := answers(t, body, s.notaryKey, keys); code != 200 || got["remote.test"] == nil {
			t.Fatalf("single with key id: %d %v", code, body)
		}
		if n := s.rt.count("remote.test", serverkeys.PathServer); n != fetches {
			t.Errorf("fresh cache refetched (%d fetches, want %d)", n, fetches)
		}

		// Asking for a later validity than cached refetches; the origin's
		// answer is newer by then.
		old := got["remote.test"].ValidUntilTS
		s.c.Advance(13 * time.Hour)
		code, body = doJSON(t, h, "GET", fmt.Sprintf("%s/remote.test/%s?minimum_valid_until_ts=%d", serverkeys.PathQuery, s.rkey.ID, old+1), "")
		fresh := answers(t, body, s.notaryKey, keys)["remote.test"]
		if code != 200 || fresh == nil || fresh.ValidUntilTS <= old {
			t.Fatalf("after asking for a later validity: %d %v", code, body)
		}
		if n := s.rt.count("remote.test", serverkeys.PathServer); n != fetches+1 {
			t.Errorf("%d fetches, want %d", n, fetches+1)
		}

		// Our own key server on the same routes, with the deprecated key id form.
		for _, p := range []string{serverkeys.PathServer, serverkeys.PathServer + "/" + s.notaryKey.ID} {
			code, body = doJSON(t, h, "GET", p, "")
			raw, _ := json.Marshal(body)
			if code != 200 || events.VerifyJSON(raw, "notary.test", s.notaryKey.ID, s.notaryKey.Public()) != nil {
				t.Errorf("GET %s: %d %v", p, code, body)
			}
		}

		many := map[string]any{}
		for i := range 101 {
			many[fmt.Sprintf("s%d.test", i)] = map[string]any{}
		}
		manyBody, _ := json.Marshal(map[string]any{"server_keys": many})
		bad := []struct {
			method, path, body string
			status             int
			errcode            string
		}{
			{"POST", serverkeys.PathQuery, `not json`, 400, "M_NOT_JSON"},
			{"POST", serverkeys.PathQuery, `{}`, 400, "M_BAD_JSON"},
			{"POST", serverkeys.PathQuery, `{"server_keys":[]}`, 400, "M_BAD_JSON"},
			{"POST", serverkeys.PathQuery, `{"server_keys":{"remote.test":{"ed25519:a":{"minimum_valid_until_ts":"soon"}}}}`, 400, "M_BAD_JSON"},
			{"POST", serverkeys.PathQuery, `{"server_keys":{"bad/name":{}}}`, 400, "M_BAD_JSON"},
			{"POST", serverkeys.PathQuery, string(manyBody), 400, "M_BAD_JSON"},
			{"GET", serverkeys.PathQuery + "/remote.test/" + s.rkey.ID + "?minimum_valid_until_ts=x", "", 400, "M_INVALID_PARAM"},
			{"GET", serverkeys.PathQuery + "/bad%20name", "", 400, "M_INVALID_PARAM"},
		}
		for _, b := range bad {
			code, body := doJSON(t, h, b.method, b.path, b.body)
			if code != b.status || body["errcode"] != b.errcode {
				t.Errorf("%s %s %q: %d %v, want %d %s", b.method, b.path, b.body, code, body, b.status, b.errcode)
			}
		}
	})
}

// A batch is bounded in bytes too.
func TestNotaryRefusesHugeBody(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		k := newKeyring(t, db, newClock(), serverkeys.Options{})
		body := bytes.Repeat([]byte(" "), 1<<20)
		req := httptest.NewRequest("POST", serverkeys.PathQuery, bytes.NewReader(body))
		rec := httptest.NewRecorder()
		handler(k).ServeHTTP(rec, req)
		if rec.Code != http.StatusRequestEntityTooLarge {
			t.Fatalf("%d %s", rec.Code, rec.Body)
		}
	})
}
