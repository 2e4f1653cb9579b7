package keys_test

import (
	"encoding/json"
	"testing"

	"ganglion/internal/keys"
)

// FuzzCheckDeviceKeys: arbitrary device_keys never panic, and whatever is
// accepted is canonical JSON that passes the check again unchanged.
func FuzzCheckDeviceKeys(f *testing.F) {
	f.Add([]byte(`{"user_id":"@a:x","device_id":"D","algorithms":["m.olm.v1.curve25519-aes-sha2"],"keys":{"ed25519:D":"AAAA"},"signatures":{}}`))
	f.Add([]byte(`{"user_id":"@a:x","device_id":"D","algorithms":[],"keys":{},"signatures":{"@a:x":{"ed25519:D":"!"}},"unsigned":{"x":1}}`))
	f.Add([]byte(`[]`))
	f.Add([]byte(`{"keys":{"ed25519:D":"11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo"},"x":1e400}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		if !json.Valid(raw) {
			return
		}
		out, err := keys.CheckDeviceKeys(raw, "@a:x", "D")
		if err != nil {
			return
		}
		again, err := keys.CheckDeviceKeys(out, "@a:x", "D")
		if err != nil || string(again) != string(out) {
			t.Fatalf("accepted %s as %s, which re-checks as %s, %v", raw, out, again, err)
		}
	})
}
