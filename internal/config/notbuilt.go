package config

import "sort"

// NotBuilt maps Synapse's top-level config keys for features Ganglion does
// not have yet to the feature's name. Such keys are accepted (so Synapse
// configs load unchanged) but do nothing, and every process warns about
// each one it finds at start, rather than letting an operator believe
// that, say, SSO is configured.
//
// This is the one list to prune as features land: remove a key when the
// code reads it.
func NotBuilt() map[string]string {
	const (
		sso        = "single sign-on"
		appservice = "application services"
		media      = "the media repository's storage providers"
		federation = "federation"
		captcha    = "registration captcha"
		modules    = "modules and third-party hooks"
		threepid   = "third-party identifiers"
	)
	return map[string]string{
		"oidc_providers":     sso,
		"oidc_config":        sso,
		"saml2_config":       sso,
		"cas_config":         sso,
		"sso":                sso,
		"jwt_config":         sso,
		"password_providers": sso,

		"track_appservice_user_ips": appservice,

		"media_storage_providers": media,

		"federation_client_minimum_tls_version":         federation,
		"federation_certificate_verification_whitelist": federation,

		"enable_registration_captcha": captcha,
		"recaptcha_public_key":        captcha,
		"recaptcha_private_key":       captcha,

		"modules":                    modules,
		"spam_checker":               modules,
		"third_party_event_rules":    modules,
		"account_validity":           "account validity",
		"user_consent":               "user consent",
		"retention":                  "message retention",
		"opentracing":                "tracing",
		"limit_usage_by_mau":         "monthly active user limits",
		"max_mau_value":              "monthly active user limits",
		"auto_join_rooms":            "auto-joining rooms on registration",
		"registrations_require_3pid": threepid,
		"account_threepid_delegates": threepid,
		"enable_3pid_lookup":         threepid,
	}
}

// notBuiltKeys lists, sorted, the keys of the merged document that NotBuilt
// names.
func notBuiltKeys(m map[string]any) []string {
	nb := NotBuilt()
	var out []string
	for k := range m {
		if _, ok := nb[k]; ok {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}
