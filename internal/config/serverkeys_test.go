package config_test

import (
	"slices"
	"testing"
	"time"
)

const testPubKey = "l8Hft5qXKn1vfHrg3p4+W8gELQVo8N13JkluMfmn2sQ" // 32 bytes, unpadded base64

// Synapse's defaults: a day's key validity, matrix.org as the notary
// (without verify_keys) with the start-up warning, no old keys.
func TestServerKeysDefaults(t *testing.T) {
	cfg := mustLoad(t, nil, [2]string{"hs.yaml", minimalMain})
	if got := cfg.KeyRefreshIntervalValue(); got != 24*time.Hour {
		t.Errorf("key_refresh_interval %v, want 24h", got)
	}
	ks := cfg.KeyServers()
	if len(ks) != 1 || ks[0].ServerName != "matrix.org" || len(ks[0].VerifyKeys) != 0 || !cfg.KeyServersDefaulted() {
		t.Errorf("default trusted_key_servers %+v (defaulted %v)", ks, cfg.KeyServersDefaulted())
	}
	if len(cfg.OldVerifyKeys()) != 0 {
		t.Errorf("old keys %v", cfg.OldVerifyKeys())
	}
	empty := mustLoad(t, nil, [2]string{"hs.yaml", minimalMain + "trusted_key_servers: []\n"})
	if len(empty.KeyServers()) != 0 || empty.KeyServersDefaulted() {
		t.Errorf("empty trusted_key_servers: %+v", empty.KeyServers())
	}
	if slices.Contains(empty.NotBuiltKeys, "trusted_key_servers") {
		t.Error("trusted_key_servers still listed as not built")
	}
}

func TestServerKeysParsed(t *testing.T) {
	cfg := mustLoad(t, nil, [2]string{"hs.yaml", minimalMain + `
key_refresh_interval: 2h
suppress_key_server_warning: true
old_signing_keys:
  "ed25519:old": {key: "` + testPubKey + `", expired_ts: 1700000000000}
trusted_key_servers:
  - server_name: notary.example
    verify_keys:
      "ed25519:auto": "` + testPubKey + `"
  - server_name: other.example
    accept_keys_insecurely: true
`})
	if got := cfg.KeyRefreshIntervalValue(); got != 2*time.Hour {
		t.Errorf("key_refresh_interval %v", got)
	}
	if old := cfg.OldVerifyKeys()["ed25519:old"]; len(old.Key) != 32 || old.ExpiredTS != 1700000000000 {
		t.Errorf("old_signing_keys %+v", cfg.OldVerifyKeys())
	}
	ks := cfg.KeyServers()
	if len(ks) != 2 || ks[0].ServerName != "notary.example" || len(ks[0].VerifyKeys["ed25519:auto"]) != 32 ||
		ks[1].ServerName != "other.example" || !ks[1].AcceptKeysInsecurely || ks[1].VerifyKeys != nil {
		t.Errorf("trusted_key_servers %+v", ks)
	}
	if !cfg.SuppressKeyServerWarning || cfg.KeyServersDefaulted() {
		t.Error("suppress_key_server_warning / defaulted")
	}
}

func TestServerKeysValidation(t *testing.T) {
	paths := loadProblems(t, [2]string{"hs.yaml", minimalMain + `
key_refresh_interval: 10s
old_signing_keys:
  "ed25519:old": {key: "short", expired_ts: 0}
  "rsa:x": {key: "` + testPubKey + `", expired_ts: 5}
trusted_key_servers:
  - server_name: "bad name/"
  - {verify_keys: {}}
  - server_name: notary.example
    verify_keys: {"ed25519:auto": "not base64!"}
  - server_name: ok.example
    accept_keys_insecurely: "yes"
`})
	want := []string{
		"key_refresh_interval",
		"old_signing_keys.ed25519:old.key",
		"old_signing_keys.ed25519:old.expired_ts",
		"old_signing_keys.rsa:x.key",
		"trusted_key_servers[0].server_name",
		"trusted_key_servers[1].server_name",
		"trusted_key_servers[2].verify_keys.ed25519:auto",
		"trusted_key_servers[3].accept_keys_insecurely",
	}
	if !slices.Equal(paths, want) {
		t.Errorf("problems\n%v\nwant\n%v", paths, want)
	}
}
