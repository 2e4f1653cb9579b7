package e2e_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestServerKeysPublished fetches /_matrix/key/v2/server from a running
// deployment (a monolith, and a fleet's generic worker, reached directly on
// its client+federation listener) and checks it without Ganglion's code: the key is the one
// in the signing key file, valid_until_ts is a day ahead (Synapse's default
// key_refresh_interval), and the ed25519 signature covers the canonical
// JSON. The notary returns the same keys, and refuses a bad query.
func TestServerKeysPublished(t *testing.T) {
	runDeployments(t, []string{engineSQLite, engineFleet}, func(t *testing.T, srv *server) {
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		dir := srv.dir
		if srv.fleet != nil {
			dir = srv.fleet.dir
		}
		keyID, pub := readSigningKeyFile(t, filepath.Join(dir, serverName+".signing.key"))

		for _, path := range []string{"/_matrix/key/v2/server", "/_matrix/key/v2/server/" + keyID} {
			resp := srv.do(t, ctx, "GET", path, "", nil)
			if resp.status != 200 {
				t.Fatalf("GET %s: %d %s", path, resp.status, resp.body)
			}
			answer := checkKeyAnswer(t, resp.body, keyID, pub)
			validUntil, _ := answer["valid_until_ts"].(json.Number).Int64()
			now := time.Now().UnixMilli()
			if validUntil < now+23*time.Hour.Milliseconds() || validUntil > now+25*time.Hour.Milliseconds() {
				t.Errorf("GET %s: valid_until_ts %d is not a day after %d", path, validUntil, now)
			}
			if _, ok := answer["old_verify_keys"].(map[string]any); !ok {
				t.Errorf("GET %s: old_verify_keys %v", path, answer["old_verify_keys"])
			}
		}

		resp := srv.do(t, ctx, "POST", "/_matrix/key/v2/query", "", []byte(`{"server_keys":{"`+serverName+`":{}}}`))
		if resp.status != 200 {
			t.Fatalf("notary query: %d %s", resp.status, resp.body)
		}
		var batch struct {
			ServerKeys []json.RawMessage `json:"server_keys"`
		}
		if err := json.Unmarshal(resp.body, &batch); err != nil || len(batch.ServerKeys) != 1 {
			t.Fatalf("notary answer %s: %v", resp.body, err)
		}
		checkKeyAnswer(t, batch.ServerKeys[0], keyID, pub)

		resp = srv.do(t, ctx, "POST", "/_matrix/key/v2/query", "", []byte(`{"server_keys":"all"}`))
		if resp.status != 400 || !strings.Contains(string(resp.body), "M_BAD_JSON") {
			t.Errorf("bad notary query: %d %s", resp.status, resp.body)
		}
	})
}

// readSigningKeyFile reads Synapse's "ed25519 <version> <seed>" format.
func readSigningKeyFile(t *testing.T, path string) (string, ed25519.PublicKey) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(data))
	if len(f) != 3 || f[0] != "ed25519" {
		t.Fatalf("signing key file %q", data)
	}
	seed, err := base64.RawStdEncoding.DecodeString(f[2])
	if err != nil || len(seed) != ed25519.SeedSize {
		t.Fatalf("seed %q: %v", f[2], err)
	}
	return "ed25519:" + f[1], ed25519.NewKeyFromSeed(seed).Public().(ed25519.PublicKey)
}

// checkKeyAnswer checks a key answer of our server: it lists pub under
// keyID and carries a valid signature over its canonical JSON (object keys
// sorted, no insignificant whitespace: what encoding/json writes for maps).
func checkKeyAnswer(t *testing.T, body []byte, keyID string, pub ed25519.PublicKey) map[string]any {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		t.Fatalf("key answer %s: %v", body, err)
	}
	if m["server_name"] != serverName {
		t.Errorf("server_name %v", m["server_name"])
	}
	vk, _ := m["verify_keys"].(map[string]any)
	entry, _ := vk[keyID].(map[string]any)
	if entry["key"] != base64.RawStdEncoding.EncodeToString(pub) {
		t.Fatalf("verify_keys %v, want %s = the signing key file's", vk, keyID)
	}
	sigs, _ := m["signatures"].(map[string]any)
	ours, _ := sigs[serverName].(map[string]any)
	sigB64, _ := ours[keyID].(string)
	sig, err := base64.RawStdEncoding.DecodeString(sigB64)
	if err != nil {
		t.Fatalf("signature %q: %v", sigB64, err)
	}
	delete(m, "signatures")
	delete(m, "unsigned")
	var canon bytes.Buffer
	enc := json.NewEncoder(&canon)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(m); err != nil {
		t.Fatal(err)
	}
	if !ed25519.Verify(pub, bytes.TrimSuffix(canon.Bytes(), []byte("\n")), sig) {
		t.Fatalf("signature does not verify over %s", canon.Bytes())
	}
	m["signatures"] = sigs
	return m
}
