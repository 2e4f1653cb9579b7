package app

import (
	"ganglion/internal/accounts"
	"ganglion/internal/config"
)

// passwordPolicy turns password_config.policy into the accounts domain's
// rules, with the m.* keys /password_policy advertises (only those the
// config set, as Synapse lists them).
func passwordPolicy(pc config.PasswordConfig) accounts.PasswordPolicy {
	p := pc.Policy
	out := accounts.PasswordPolicy{Enabled: p.Enabled, Advertised: map[string]any{}}
	if p.MinimumLength != nil {
		out.MinimumLength = *p.MinimumLength
		out.Advertised["m.minimum_length"] = *p.MinimumLength
	}
	for _, b := range []struct {
		key  string
		v    *bool
		dest *bool
	}{
		{"m.require_digit", p.RequireDigit, &out.RequireDigit},
		{"m.require_symbol", p.RequireSymbol, &out.RequireSymbol},
		{"m.require_lowercase", p.RequireLowercase, &out.RequireLowercase},
		{"m.require_uppercase", p.RequireUppercase, &out.RequireUppercase},
	} {
		if b.v != nil {
			*b.dest = *b.v
			out.Advertised[b.key] = *b.v
		}
	}
	return out
}
