package routes_test

import (
	"testing"

	"ganglion/internal/config"
	"ganglion/internal/routes"
)

// TestKeysRouting pins where the E2EE endpoints go, as in Synapse's
// workers document: queries, claims, changes, key backup and the
// deprecated /keys/upload/{deviceId} to the encryption pool of generic
// workers; /keys/upload, cross-signing key and signature uploads to the
// main process (every generic worker can still answer them when a client
// reaches it directly). A media worker answers none of them.
func TestKeysRouting(t *testing.T) {
	cases := []struct{ method, path, class string }{
		{"POST", "/_matrix/client/v3/keys/query", "encryption"},
		{"POST", "/_matrix/client/r0/keys/claim", "encryption"},
		{"GET", "/_matrix/client/v3/keys/changes", "encryption"},
		{"POST", "/_matrix/client/v3/keys/upload/DEVICE", "encryption"},
		{"GET", "/_matrix/client/v3/room_keys/version", "encryption"},
		{"PUT", "/_matrix/client/v3/room_keys/keys/!r:x/sess", "encryption"},
		{"DELETE", "/_matrix/client/unstable/room_keys/version/3", "encryption"},
		{"POST", "/_matrix/client/v3/keys/upload", routes.MainOnly},
		{"POST", "/_matrix/client/v3/keys/device_signing/upload", routes.MainOnly},
		{"POST", "/_matrix/client/unstable/keys/device_signing/upload", routes.MainOnly},
		{"POST", "/_matrix/client/v3/keys/signatures/upload", routes.MainOnly},
	}
	for _, c := range cases {
		cl, ok := routes.Classify(c.method, c.path)
		if !ok || cl.Name != c.class {
			t.Errorf("%s %s: class %v (ok %v), want %s", c.method, c.path, cl, ok, c.class)
			continue
		}
		if c.class == "encryption" && !routes.Allowed(config.RoleGenericWorker, c.method, c.path) {
			t.Errorf("%s %s: not servable by a generic worker", c.method, c.path)
		}
		if routes.Allowed(config.RoleMediaRepository, c.method, c.path) {
			t.Errorf("%s %s: servable by a media worker", c.method, c.path)
		}
	}
}
