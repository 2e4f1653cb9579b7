package config_test

import (
	"slices"
	"testing"
)

func TestPasswordConfig(t *testing.T) {
	cfg := mustLoad(t, nil, [2]string{"hs.yaml", minimalMain + `
registration_requires_token: true
password_config:
  enabled: only_for_reauth
  policy:
    enabled: true
    minimum_length: 12
    require_digit: true
`})
	pc := cfg.PasswordConfig
	if !cfg.RegistrationRequiresToken || pc.Enabled.ForLogin() || !pc.Enabled.ForReauth() || !pc.Policy.Enabled ||
		pc.Policy.MinimumLength == nil || *pc.Policy.MinimumLength != 12 || pc.Policy.RequireDigit == nil || !*pc.Policy.RequireDigit ||
		pc.Policy.RequireSymbol != nil {
		t.Fatalf("password_config loaded as %+v", pc)
	}
	if d := mustLoad(t, nil, [2]string{"hs.yaml", minimalMain}).PasswordConfig; !d.Enabled.ForLogin() || !d.Enabled.ForReauth() || d.Policy.Enabled {
		t.Fatalf("default password_config %+v: passwords on, policy off", d)
	}
	if off := mustLoad(t, nil, [2]string{"hs.yaml", minimalMain + "password_config: {enabled: false}\n"}).PasswordConfig; off.Enabled.ForLogin() || off.Enabled.ForReauth() {
		t.Fatalf("password_config.enabled false: %+v", off)
	}
	paths := loadProblems(t, [2]string{"hs.yaml", minimalMain + "password_config:\n  enabled: sometimes\n  policy: {minimum_length: -1}\n"})
	if !slices.Equal(paths, []string{"password_config.enabled", "password_config.policy.minimum_length"}) {
		t.Fatalf("problems %v", paths)
	}
	paths = loadProblems(t, [2]string{"hs.yaml", minimalMain + "password_config:\n  policy: {require_digit: maybe}\n"})
	if len(paths) != 1 {
		t.Fatalf("a non-boolean require_digit: problems %v", paths)
	}
}
