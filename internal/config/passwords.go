package config

import (
	"fmt"

	"gopkg.in/yaml.v3"
)

// PasswordConfig is Synapse's password_config section, as far as Ganglion
// has its features: turning password auth off (or keeping it only for
// re-authentication) and the password policy. localdb_enabled and pepper
// are not read.
type PasswordConfig struct {
	// Enabled is true (default), false, or "only_for_reauth": passwords
	// cannot log in, but still prove who a logged-in user is in
	// user-interactive auth.
	Enabled PasswordEnabled `yaml:"enabled"`
	Policy  PasswordPolicy  `yaml:"policy"`
}

// PasswordEnabled holds password_config.enabled as written: a boolean or
// the string "only_for_reauth". Anything else is a Validate problem.
type PasswordEnabled struct {
	raw any
}

// UnmarshalYAML keeps the scalar as it is; validation judges it.
func (p *PasswordEnabled) UnmarshalYAML(n *yaml.Node) error {
	var v any
	if err := n.Decode(&v); err != nil {
		return err
	}
	p.raw = v
	return nil
}

// ForLogin reports whether /login accepts passwords.
func (p PasswordEnabled) ForLogin() bool {
	b, ok := p.raw.(bool)
	return p.raw == nil || (ok && b)
}

// ForReauth reports whether user-interactive auth offers m.login.password
// and users may change their password.
func (p PasswordEnabled) ForReauth() bool {
	return p.ForLogin() || p.raw == "only_for_reauth"
}

func (p PasswordEnabled) valid() bool {
	switch v := p.raw.(type) {
	case nil, bool:
		return true
	case string:
		return v == "only_for_reauth"
	}
	return false
}

// PasswordPolicy is password_config.policy. The rules apply only when
// Enabled is true, as in Synapse. Pointers tell a key that was set from
// one that was not: /password_policy lists only the keys set.
type PasswordPolicy struct {
	Enabled          bool  `yaml:"enabled"`
	MinimumLength    *int  `yaml:"minimum_length"`
	RequireDigit     *bool `yaml:"require_digit"`
	RequireSymbol    *bool `yaml:"require_symbol"`
	RequireLowercase *bool `yaml:"require_lowercase"`
	RequireUppercase *bool `yaml:"require_uppercase"`
}

func (c *Config) validatePasswords(ps *problems) {
	if !c.PasswordConfig.Enabled.valid() {
		ps.add("password_config.enabled", "must be true, false or \"only_for_reauth\", got %v", fmt.Sprint(c.PasswordConfig.Enabled.raw))
	}
	if ml := c.PasswordConfig.Policy.MinimumLength; ml != nil && *ml < 0 {
		ps.add("password_config.policy.minimum_length", "must not be negative, got %d", *ml)
	}
}
