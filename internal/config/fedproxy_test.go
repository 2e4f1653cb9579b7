package config_test

import (
	"slices"
	"testing"
)

// outbound_federation_restricted_to is read now (the outbound proxy,
// internal/federation/fedproxy): a good list loads, "master" is main, and
// the key is no longer reported as not built. The refusals are in
// TestValidateReportsKeyPaths.
func TestLoadOutboundFederationRestrictedTo(t *testing.T) {
	cfg := mustLoad(t, nil, [2]string{"hs.yaml", validFleet + "worker_replication_secret: s3cret\noutbound_federation_restricted_to: [master, persister1]\n"})
	if got := []string(cfg.OutboundFederationRestrictedTo); !slices.Equal(got, []string{"main", "persister1"}) {
		t.Errorf("outbound_federation_restricted_to = %v, want [main persister1]", got)
	}
	if slices.Contains(cfg.NotBuiltKeys, "outbound_federation_restricted_to") {
		t.Errorf("NotBuiltKeys = %v: the key is read now", cfg.NotBuiltKeys)
	}
}
