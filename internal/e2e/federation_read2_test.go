package e2e_test

import (
	"net/http"
	"net/url"
	"testing"

	"maunium.net/go/mautrix"

	"ganglion/internal/testutil/testca"
)

// TestFederationInboundDevicesAndDirectoryThroughRouter: through the
// fleet's router, a remote server reads a local user's device list (from a
// generic worker), queries and claims its keys (main process, as in
// Synapse's workers document) and lists the public room directory, which
// allow_public_rooms_over_federation opens to it.
func TestFederationInboundDevicesAndDirectoryThroughRouter(t *testing.T) {
	ca := testca.New(t)
	remote := startReadingRemote(t, ca)
	srv := startFrontServer(t, engineFleetRouter, "router",
		withKey("federation_custom_ca_list", []string{ca.WriteCA(t, t.TempDir())}),
		withKey("ip_range_whitelist", []string{"127.0.0.1"}),
		withKey("allow_public_rooms_over_federation", true),
	)
	ctx := testContext(t)
	base := srv.fleet.front.url

	alice := srv.register(t, ctx, "fedkeys-alice")
	roomID := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", Visibility: "public", Name: "Fedkeys lobby"})

	user := alice.UserID.String()
	code, out := remote.request(t, ctx, base, "GET", "/_matrix/federation/v1/user/devices/"+url.PathEscape(user), nil, true)
	devs, _ := out["devices"].([]any)
	if code != http.StatusOK || out["user_id"] != user || len(devs) != 1 {
		t.Fatalf("user/devices: %d %v", code, out)
	}
	if d, _ := devs[0].(map[string]any); d["device_id"] != alice.DeviceID.String() {
		t.Errorf("devices = %v, want alice's device %s", devs, alice.DeviceID)
	}
	// The remote shares no room with alice, so no update was sent to it:
	// the next one it gets will name no prev_id.
	if sid, ok := out["stream_id"].(float64); !ok || sid != 0 {
		t.Errorf("stream_id = %v, want 0 (no device list update was sent to this server)", out["stream_id"])
	}
	code, out = remote.request(t, ctx, base, "GET", "/_matrix/federation/v1/user/devices/"+url.PathEscape("@x:"+remote.name), nil, true)
	if code != http.StatusBadRequest {
		t.Errorf("user/devices of a remote user: %d %v", code, out)
	}

	code, out = remote.request(t, ctx, base, "POST", "/_matrix/federation/v1/user/keys/query",
		map[string]any{"device_keys": map[string]any{user: []string{}}}, true)
	if dk, _ := out["device_keys"].(map[string]any); code != http.StatusOK || dk[user] == nil {
		t.Errorf("user/keys/query: %d %v", code, out)
	}
	code, out = remote.request(t, ctx, base, "POST", "/_matrix/federation/v1/user/keys/claim",
		map[string]any{"one_time_keys": map[string]any{user: map[string]string{alice.DeviceID.String(): "signed_curve25519"}}}, true)
	if code != http.StatusOK || out["one_time_keys"] == nil {
		t.Errorf("user/keys/claim: %d %v", code, out)
	}

	code, out = remote.request(t, ctx, base, "POST", "/_matrix/federation/v1/publicRooms",
		map[string]any{"filter": map[string]any{"generic_search_term": "fedkeys"}}, true)
	chunk, _ := out["chunk"].([]any)
	if code != http.StatusOK || len(chunk) != 1 {
		t.Fatalf("publicRooms: %d %v", code, out)
	}
	if r, _ := chunk[0].(map[string]any); r["room_id"] != roomID.String() {
		t.Errorf("publicRooms chunk = %v, want %s", chunk, roomID)
	}
	code, out = remote.request(t, ctx, base, "GET", "/_matrix/federation/v1/publicRooms", nil, false)
	if code != http.StatusUnauthorized {
		t.Errorf("unsigned publicRooms: %d %v", code, out)
	}
}
