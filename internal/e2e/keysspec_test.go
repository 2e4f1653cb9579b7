package e2e_test

import (
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
)

// TestE2EKeysSpecAnswers checks spec details of the key endpoints:
//   - GET /room_keys/version without a version is the latest live one,
//     404 M_NOT_FOUND when there is none (before the first and after the
//     last is deleted);
//   - a key upload to an old version is 403 M_WRONG_ROOM_KEYS_VERSION
//     carrying current_version;
//   - /keys/query and /keys/claim with a timeout and users of other servers
//     (no federation yet) answer 200 with the local users' keys and a
//     failure under each remote server name.
func TestE2EKeysSpecAnswers(t *testing.T) {
	t.Parallel()
	runDeployments(t, []string{engineSQLite, enginePostgres, engineFleetRouter}, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		alice := srv.register(t, ctx, "alice")
		const alg = "m.megolm_backup.v1.curve25519-aes-sha2"
		version := clientPath("room_keys", "version")

		wantRawError(t, srv.do(t, ctx, "GET", version, alice.AccessToken, nil), 404, "M_NOT_FOUND")
		for _, pk := range []string{"pk1", "pk2"} {
			if r := srv.doJSON(t, ctx, "POST", version, alice.AccessToken,
				map[string]any{"algorithm": alg, "auth_data": map[string]any{"public_key": pk}}); r.status != 200 {
				t.Fatalf("create backup version: %d %s", r.status, r.body)
			}
		}
		latest := func(want string) {
			t.Helper()
			r := srv.do(t, ctx, "GET", version, alice.AccessToken, nil)
			if got, _ := r.object(t)["version"].(string); r.status != 200 || got != want {
				t.Fatalf("GET /room_keys/version: %d %s, want version %s", r.status, r.body, want)
			}
		}
		latest("2")
		key := map[string]any{"first_message_index": 0, "forwarded_count": 0, "is_verified": false,
			"session_data": map[string]any{"ciphertext": "c"}}
		r := srv.doJSON(t, ctx, "PUT", clientPath("room_keys", "keys", "!room:e2e.test", "sess")+"?version=1", alice.AccessToken, key)
		body := wantRawError(t, r, 403, "M_WRONG_ROOM_KEYS_VERSION")
		if body["current_version"] != "2" {
			t.Fatalf("M_WRONG_ROOM_KEYS_VERSION without current_version 2: %s", r.body)
		}
		if r := srv.do(t, ctx, "DELETE", version+"/2", alice.AccessToken, nil); r.status != 200 {
			t.Fatalf("delete version 2: %d %s", r.status, r.body)
		}
		latest("1")
		if r := srv.do(t, ctx, "DELETE", version+"/1", alice.AccessToken, nil); r.status != 200 {
			t.Fatalf("delete version 1: %d %s", r.status, r.body)
		}
		wantRawError(t, srv.do(t, ctx, "GET", version, alice.AccessToken, nil), 404, "M_NOT_FOUND")

		// Remote users: a failure per server, the local answer intact.
		remote1, remote2 := id.UserID("@bob:remote.example"), id.UserID("@carol:other.example")
		q, err := alice.QueryKeys(ctx, &mautrix.ReqQueryKeys{Timeout: 5000, DeviceKeys: mautrix.DeviceKeysRequest{
			alice.UserID: {}, remote1: {}, remote2: {"DEV"}}})
		if err != nil {
			t.Fatalf("keys/query with remote users: %v", err)
		}
		for _, server := range []string{"remote.example", "other.example"} {
			if _, ok := q.Failures[server]; !ok {
				t.Errorf("keys/query: no failure for %s: %v", server, q.Failures)
			}
		}
		if _, ok := q.DeviceKeys[alice.UserID]; !ok || len(q.Failures) != 2 {
			t.Errorf("keys/query: device_keys %v failures %v", q.DeviceKeys, q.Failures)
		}
		c, err := alice.ClaimKeys(ctx, &mautrix.ReqClaimKeys{Timeout: 5000, OneTimeKeys: mautrix.OneTimeKeysRequest{
			remote1: {"DEV": id.KeyAlgorithmSignedCurve25519}}})
		if err != nil {
			t.Fatalf("keys/claim with a remote user: %v", err)
		}
		if _, ok := c.Failures["remote.example"]; !ok || len(c.OneTimeKeys) != 0 {
			t.Errorf("keys/claim: one_time_keys %v failures %v", c.OneTimeKeys, c.Failures)
		}
	})
}
