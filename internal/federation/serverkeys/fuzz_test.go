package serverkeys_test

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"testing"

	"ganglion/internal/federation/serverkeys"
	"ganglion/internal/storage"
	"ganglion/internal/storage/storagetest"
)

// Key answers come from any server on the internet: parsing and signature
// checks must refuse garbage without panicking.
func FuzzParseResponse(f *testing.F) {
	c := newClock()
	good, _ := newLocal(f, "remote.test", mustKey(f), c, nil).Response()
	f.Add(good)
	f.Add([]byte(`{"server_name":"a","valid_until_ts":1,"verify_keys":{"ed25519:a":{"key":"AAAA"}},"signatures":{"a":{"ed25519:a":"x"}}}`))
	f.Add([]byte(`{"server_name":"a","valid_until_ts":1,"old_verify_keys":{"ed25519:a":{"key":"","expired_ts":null}}}`))
	f.Add([]byte(`{"signatures":[]}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		r, err := serverkeys.ParseResponse(raw)
		if err != nil {
			return
		}
		_ = r.CheckSelfSigned()
	})
}

// The notary's batch query is unauthenticated: any body gets a JSON answer,
// never a panic or a 500. The keyring has no sources, so nothing is fetched.
func FuzzNotaryQuery(f *testing.F) {
	db := storagetest.NewDB(f, storage.SQLite)
	h := handler(newKeyring(f, db, newClock(), serverkeys.Options{}))
	f.Add([]byte(`{"server_keys":{"remote.test":{"ed25519:a":{"minimum_valid_until_ts":5}},"ours.test":{}}}`))
	f.Add([]byte(`{"server_keys":{"remote.test":{"ed25519:a":{"minimum_valid_until_ts":"x"}}}}`))
	f.Add([]byte(`{"server_keys":{"":{}}}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, body []byte) {
		req := httptest.NewRequest("POST", serverkeys.PathQuery, bytes.NewReader(body))
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code >= http.StatusInternalServerError {
			t.Fatalf("%q: %d %s", body, rec.Code, rec.Body)
		}
		if !bytes.HasPrefix(rec.Body.Bytes(), []byte("{")) {
			t.Fatalf("%q: answer %q", body, rec.Body)
		}
	})
}
