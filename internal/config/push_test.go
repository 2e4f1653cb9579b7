package config_test

import "testing"

// push.enabled is Synapse's key: true by default; false turns evaluation
// off. The section's other Synapse keys are accepted.
func TestLoadPushEnabled(t *testing.T) {
	cfg := mustLoad(t, nil, [2]string{"homeserver.yaml", minimalMain})
	if !cfg.Push.Enabled {
		t.Errorf("push.enabled defaults to false, want true")
	}
	cfg = mustLoad(t, nil, [2]string{"homeserver.yaml", minimalMain + "push: {enabled: false, include_content: true}\n"})
	if cfg.Push.Enabled {
		t.Errorf("push.enabled: false loaded as true")
	}
	for _, k := range cfg.UnknownKeys {
		if k == "push" {
			t.Errorf("push reported as an unknown key")
		}
	}
}
