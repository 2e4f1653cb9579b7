package e2e_test

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"ganglion/internal/canonicaljson"
	"ganglion/internal/events"
	"ganglion/internal/testutil"
)

const dehydratedPath = "/_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device"

func withMSC3814() configOption {
	return func(cfg map[string]any) {
		cfg["experimental_features"] = map[string]any{"msc3814_enabled": true}
	}
}

// signedDeviceKeys is a device_keys object for user's deviceID, signed by
// a fresh ed25519 key of the device.
func signedDeviceKeys(t *testing.T, user id.UserID, deviceID string) map[string]any {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	obj := map[string]any{
		"user_id": user, "device_id": deviceID,
		"algorithms": []string{"m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"},
		"keys":       map[string]string{"ed25519:" + deviceID: events.EncodeBase64(pub), "curve25519:" + deviceID: "curve-" + deviceID},
	}
	msg, err := canonicaljson.Marshal(obj)
	if err != nil {
		t.Fatal(err)
	}
	obj["signatures"] = map[string]any{user.String(): map[string]string{"ed25519:" + deviceID: events.EncodeBase64(ed25519.Sign(priv, msg))}}
	return obj
}

// TestE2EDehydratedDevice: MSC3814 behind experimental_features.
// msc3814_enabled: a user stores a dehydrated device with its keys; other
// users see its keys and send it to-device messages, which the user
// fetches in batches (next_batch acknowledges); uploading another replaces
// it (the old device is deleted); deleting it leaves none. Off by default.
func TestE2EDehydratedDevice(t *testing.T) {
	t.Parallel()
	t.Run("off by default", func(t *testing.T) {
		srv := startServer(t, engineSQLite)
		ctx := testContext(t)
		alice := srv.register(t, ctx, "alice")
		wantRawError(t, srv.do(t, ctx, "GET", dehydratedPath, alice.AccessToken, nil), 404, "M_UNRECOGNIZED")
	})
	runDeployments(t, []string{engineSQLite, enginePostgres, engineFleetRouter}, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		alice := srv.register(t, ctx, "alice")
		bob := srv.register(t, ctx, "bob")
		wantRawError(t, srv.do(t, ctx, "GET", dehydratedPath, alice.AccessToken, nil), 404, "M_NOT_FOUND")
		wantRawError(t, srv.do(t, ctx, "DELETE", dehydratedPath, alice.AccessToken, nil), 404, "M_NOT_FOUND")

		put := func(deviceID string) response {
			return srv.doJSON(t, ctx, "PUT", dehydratedPath, alice.AccessToken, map[string]any{
				"device_id":                   deviceID,
				"device_data":                 map[string]any{"algorithm": "m.dehydration.v1.olm", "device_pickle": "p-" + deviceID},
				"initial_device_display_name": "dehydrated",
				"device_keys":                 signedDeviceKeys(t, alice.UserID, deviceID),
				"one_time_keys":               map[string]any{"signed_curve25519:k1": map[string]any{"key": "otk-" + deviceID}},
			})
		}
		if r := put("DEHYD1"); r.status != 200 || r.object(t)["device_id"] != "DEHYD1" {
			t.Fatalf("PUT dehydrated_device: %d %s", r.status, r.body)
		}
		r := srv.do(t, ctx, "GET", dehydratedPath, alice.AccessToken, nil)
		got := r.object(t)
		if data, _ := got["device_data"].(map[string]any); r.status != 200 || got["device_id"] != "DEHYD1" || data["device_pickle"] != "p-DEHYD1" {
			t.Fatalf("GET dehydrated_device: %d %s", r.status, r.body)
		}
		// Other users encrypt to it.
		q, err := bob.QueryKeys(ctx, &mautrix.ReqQueryKeys{DeviceKeys: mautrix.DeviceKeysRequest{alice.UserID: {}}})
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := q.DeviceKeys[alice.UserID]["DEHYD1"]; !ok {
			t.Fatalf("the dehydrated device's keys are not in /keys/query: %v", q.DeviceKeys)
		}
		for i := range 2 {
			if _, err := bob.SendToDevice(ctx, event.NewEventType("org.example.test"), &mautrix.ReqSendToDevice{
				Messages: map[id.UserID]map[id.DeviceID]*event.Content{alice.UserID: {"DEHYD1": {Raw: map[string]any{"n": i}}}},
			}); err != nil {
				t.Fatalf("to-device to the dehydrated device: %v", err)
			}
		}
		evs := func(next string) (n int, nextBatch string) {
			t.Helper()
			body := map[string]any{}
			if next != "" {
				body["next_batch"] = next
			}
			r := srv.doJSON(t, ctx, "POST", dehydratedPath+"/DEHYD1/events", alice.AccessToken, body)
			var resp struct {
				Events    []json.RawMessage `json:"events"`
				NextBatch string            `json:"next_batch"`
			}
			if r.status != 200 || json.Unmarshal(r.body, &resp) != nil || resp.Events == nil {
				t.Fatalf("dehydrated device events: %d %s", r.status, r.body)
			}
			return len(resp.Events), resp.NextBatch
		}
		var next string
		testutil.Eventually(t, waitLimit, "the dehydrated device's two messages", func() bool {
			var n int
			n, next = evs("")
			return n == 2
		})
		if n, _ := evs(next); n != 0 {
			t.Fatalf("after next_batch %s: %d messages, want 0", next, n)
		}
		if n, _ := evs(""); n != 0 {
			t.Fatalf("acknowledged messages handed out again: %d", n)
		}
		wantRawError(t, srv.doJSON(t, ctx, "POST", dehydratedPath+"/"+alice.DeviceID.String()+"/events", alice.AccessToken,
			map[string]any{}), 403, "M_FORBIDDEN")
		wantRawError(t, srv.doJSON(t, ctx, "POST", dehydratedPath+"/DEHYD1/events", alice.AccessToken,
			map[string]any{"next_batch": "garbage"}), 400, "M_INVALID_PARAM")

		// A logged-in device cannot be taken over; a new dehydrated
		// device replaces the old one.
		wantRawError(t, put(alice.DeviceID.String()), 400, "M_INVALID_PARAM")
		if r := put("DEHYD2"); r.status != 200 {
			t.Fatalf("replace the dehydrated device: %d %s", r.status, r.body)
		}
		devices := func() map[id.DeviceID]bool {
			t.Helper()
			resp, err := alice.GetDevicesInfo(ctx)
			if err != nil {
				t.Fatal(err)
			}
			out := map[id.DeviceID]bool{}
			for _, d := range resp.Devices {
				out[d.DeviceID] = true
			}
			return out
		}
		if d := devices(); d["DEHYD1"] || !d["DEHYD2"] || !d[alice.DeviceID] {
			t.Fatalf("devices after the replacement: %v", d)
		}
		q, err = bob.QueryKeys(ctx, &mautrix.ReqQueryKeys{DeviceKeys: mautrix.DeviceKeysRequest{alice.UserID: {}}})
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := q.DeviceKeys[alice.UserID]["DEHYD1"]; ok {
			t.Fatalf("the replaced device's keys are still served")
		}
		if r := srv.do(t, ctx, "DELETE", dehydratedPath, alice.AccessToken, nil); r.status != 200 || r.object(t)["device_id"] != "DEHYD2" {
			t.Fatalf("DELETE dehydrated_device: %d %s", r.status, r.body)
		}
		if d := devices(); d["DEHYD2"] || !d[alice.DeviceID] {
			t.Fatalf("devices after the deletion: %v", d)
		}
		wantRawError(t, srv.do(t, ctx, "GET", dehydratedPath, alice.AccessToken, nil), 404, "M_NOT_FOUND")

		// Deleted as an ordinary device, it is gone as a dehydrated one.
		if r := put("DEHYD3"); r.status != 200 {
			t.Fatalf("PUT dehydrated_device: %d %s", r.status, r.body)
		}
		r = srv.doJSON(t, ctx, "POST", clientPath("delete_devices"), alice.AccessToken, map[string]any{
			"devices": []string{"DEHYD3"},
			"auth":    map[string]any{"type": "m.login.password", "password": password("alice"), "identifier": map[string]any{"type": "m.id.user", "user": "alice"}},
		})
		if r.status != 200 {
			t.Fatalf("delete_devices: %d %s", r.status, r.body)
		}
		wantRawError(t, srv.do(t, ctx, "GET", dehydratedPath, alice.AccessToken, nil), 404, "M_NOT_FOUND")
	}, withMSC3814())
}
