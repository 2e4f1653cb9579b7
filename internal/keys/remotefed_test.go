package keys_test

import (
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"

	"ganglion/internal/events"
	"ganglion/internal/federation/client"
	"ganglion/internal/mxhttp"
	"ganglion/internal/storage"
	"ganglion/internal/storage/storagetest"
	"ganglion/internal/testutil/testca"
)

// keyServer is another homeserver's user/keys endpoints over TLS on
// loopback (server name "127.0.0.1:port"). With block it answers nothing
// until the request gives up.
func keyServer(t *testing.T, ca *testca.CA, block chan struct{}) string {
	t.Helper()
	var name string
	mux := http.NewServeMux()
	mux.HandleFunc("POST /_matrix/federation/v1/user/keys/query", func(w http.ResponseWriter, r *http.Request) {
		if block != nil {
			select {
			case <-block:
			case <-r.Context().Done():
			}
			return
		}
		if !strings.HasPrefix(r.Header.Get("Authorization"), "X-Matrix ") {
			mxhttp.WriteError(w, mxhttp.WithCode(401, "M_UNAUTHORIZED", "unsigned"))
			return
		}
		user := "@carol:" + name
		_ = mxhttp.WriteJSON(w, 200, map[string]any{"device_keys": map[string]any{user: map[string]any{
			"C1": map[string]any{"user_id": user, "device_id": "C1", "algorithms": []string{"m.olm.v1.curve25519-aes-sha2"},
				"keys": map[string]string{"ed25519:C1": "k"}, "signatures": map[string]any{}}}}})
	})
	mux.HandleFunc("POST /_matrix/federation/v1/user/keys/claim", func(w http.ResponseWriter, r *http.Request) {
		_ = mxhttp.WriteJSON(w, 200, map[string]any{"one_time_keys": map[string]any{
			"@carol:" + name: map[string]any{"C1": map[string]any{"signed_curve25519:A": map[string]any{"key": "otk"}}}}})
	})
	srv := httptest.NewUnstartedServer(mux)
	srv.TLS = ca.ServerTLS(t, "127.0.0.1")
	srv.StartTLS()
	t.Cleanup(srv.Close)
	name = srv.Listener.Addr().String()
	return name
}

// POST /keys/query and /keys/claim with remote users go to their servers
// over the signed client: one answers, one is down (nothing listens), one
// does not answer within the request's timeout; the last two are failures
// under their names and the rest of the answer is intact.
func TestFederationClientKeysQueryAndClaim(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		f := newFixture(t, db)
		ca := testca.New(t)
		up := keyServer(t, ca, nil)
		block := make(chan struct{})
		defer close(block)
		slow := keyServer(t, ca, block)
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		down := ln.Addr().String()
		ln.Close()
		key, err := events.GenerateSigningKey()
		if err != nil {
			t.Fatal(err)
		}
		c, err := client.New(client.Options{ServerName: server, Key: key, RootCAs: ca.Pool(),
			IPFilter: client.IPFilter{Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}}, Log: discard})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(c.CloseIdleConnections)
		f.s.SetFederation(c)
		alice := f.register(t, "alice", "ALICE")

		carol, dan, sam := "@carol:"+up, "@dan:"+down, "@sam:"+slow
		body, _ := json.Marshal(map[string]any{"timeout": 300, "device_keys": map[string]any{carol: []string{}, dan: []string{}, sam: []string{}, alice.user: []string{}}})
		code, _, out := f.do(t, alice, "POST", "/keys/query", string(body))
		var q struct {
			DeviceKeys map[string]map[string]json.RawMessage `json:"device_keys"`
			Failures   map[string]json.RawMessage            `json:"failures"`
		}
		if code != 200 || json.Unmarshal(out, &q) != nil {
			t.Fatalf("keys/query: %d %s", code, out)
		}
		if q.DeviceKeys[carol]["C1"] == nil || len(q.Failures) != 2 || q.Failures[down] == nil || q.Failures[slow] == nil {
			t.Fatalf("keys/query answer %s", out)
		}
		if _, ok := q.DeviceKeys[alice.user]; !ok {
			t.Fatalf("keys/query lost the local user: %s", out)
		}

		body, _ = json.Marshal(map[string]any{"timeout": 300, "one_time_keys": map[string]any{
			carol: map[string]string{"C1": "signed_curve25519"}, dan: map[string]string{"D": "signed_curve25519"}}})
		code, _, out = f.do(t, alice, "POST", "/keys/claim", string(body))
		var cl struct {
			OneTimeKeys map[string]map[string]map[string]json.RawMessage `json:"one_time_keys"`
			Failures    map[string]json.RawMessage                       `json:"failures"`
		}
		if code != 200 || json.Unmarshal(out, &cl) != nil {
			t.Fatalf("keys/claim: %d %s", code, out)
		}
		if cl.OneTimeKeys[carol]["C1"]["signed_curve25519:A"] == nil || len(cl.Failures) != 1 || cl.Failures[down] == nil {
			t.Fatalf("keys/claim answer %s", out)
		}
	})
}
