package config

import (
	"gopkg.in/yaml.v3"
)

// RateLimit is a token bucket: PerSecond tokens refill each second, up to
// BurstCount. BurstCount is a float because Synapse configs write "10.0".
// PerSecond 0 turns the limit off.
type RateLimit struct {
	PerSecond  float64 `yaml:"per_second"`
	BurstCount float64 `yaml:"burst_count"`
}

// LoginRateLimits is rc_login.
type LoginRateLimits struct {
	Address        RateLimit `yaml:"address"`
	Account        RateLimit `yaml:"account"`
	FailedAttempts RateLimit `yaml:"failed_attempts"`
}

// JoinsRateLimits is rc_joins: local joins (rooms this server is already
// in) and remote joins (over federation), per user.
type JoinsRateLimits struct {
	Local  RateLimit `yaml:"local"`
	Remote RateLimit `yaml:"remote"`
}

// InvitesRateLimits is rc_invites: per room, per invited user (the
// receiver) and per inviting user (the issuer).
type InvitesRateLimits struct {
	PerRoom   RateLimit `yaml:"per_room"`
	PerUser   RateLimit `yaml:"per_user"`
	PerIssuer RateLimit `yaml:"per_issuer"`
}

// PresenceRateLimits is rc_presence.
type PresenceRateLimits struct {
	PerUser RateLimit `yaml:"per_user"`
}

// FederationRateLimits is rc_federation, Synapse's per-origin limiter for
// inbound federation requests (counts and milliseconds, not a bucket).
type FederationRateLimits struct {
	WindowSize  int `yaml:"window_size"`
	SleepLimit  int `yaml:"sleep_limit"`
	SleepDelay  int `yaml:"sleep_delay"`
	RejectLimit int `yaml:"reject_limit"`
	Concurrent  int `yaml:"concurrent"`
}

// OptionalRateLimit is a rate limit that has no value until it is set, as
// rc_admin_redaction: unset, admins' redactions fall under rc_message.
// Sub-keys missing from a set value take Synapse's generic defaults
// (0.17/s, burst 3).
type OptionalRateLimit struct {
	Set bool
	RateLimit
}

// UnmarshalYAML marks the limit set and decodes it over the generic
// defaults. An explicit null leaves it unset.
func (o *OptionalRateLimit) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		*o = OptionalRateLimit{}
		return nil
	}
	rl := genericRateLimit()
	if err := n.Decode(&rl); err != nil {
		return err
	}
	*o = OptionalRateLimit{Set: true, RateLimit: rl}
	return nil
}

// genericRateLimit is what Synapse uses for an rc_* key without defaults
// of its own.
func genericRateLimit() RateLimit { return RateLimit{PerSecond: 0.17, BurstCount: 3} }

// defaultRateLimits sets every rc_* key to Synapse's current default
// (synapse/config/ratelimiting.py and the "Ratelimiting" section of its
// config documentation).
func defaultRateLimits(c *Config) {
	c.RCMessage = RateLimit{PerSecond: 0.2, BurstCount: 10}
	c.RCRegistration = genericRateLimit()
	c.RCRegistrationTokenValidity = RateLimit{PerSecond: 0.1, BurstCount: 5}
	c.RCLogin = LoginRateLimits{
		Address:        RateLimit{PerSecond: 0.003, BurstCount: 5},
		Account:        RateLimit{PerSecond: 0.003, BurstCount: 5},
		FailedAttempts: genericRateLimit(),
	}
	c.RCJoins = JoinsRateLimits{
		Local:  RateLimit{PerSecond: 0.1, BurstCount: 10},
		Remote: RateLimit{PerSecond: 0.01, BurstCount: 10},
	}
	c.RCJoinsPerRoom = RateLimit{PerSecond: 1, BurstCount: 10}
	c.RCInvites = InvitesRateLimits{
		PerRoom:   RateLimit{PerSecond: 0.3, BurstCount: 10},
		PerUser:   RateLimit{PerSecond: 0.003, BurstCount: 5},
		PerIssuer: RateLimit{PerSecond: 0.3, BurstCount: 10},
	}
	c.RCThirdPartyInvite = RateLimit{PerSecond: 0.0025, BurstCount: 5}
	c.RCRoomCreation = RateLimit{PerSecond: 0.016, BurstCount: 10}
	c.RC3PIDValidation = RateLimit{PerSecond: 0.003, BurstCount: 5}
	c.RCFederation = FederationRateLimits{WindowSize: 1000, SleepLimit: 10, SleepDelay: 500, RejectLimit: 50, Concurrent: 3}
	c.RCPresence = PresenceRateLimits{PerUser: RateLimit{PerSecond: 0.1, BurstCount: 1}}
	c.RCDelayedEventMgmt = RateLimit{PerSecond: 1, BurstCount: 5}
	c.RCReports = RateLimit{PerSecond: 1, BurstCount: 5}
	c.RCMediaCreate = RateLimit{PerSecond: 10, BurstCount: 50}
	c.RCUserDirectory = RateLimit{PerSecond: 0.016, BurstCount: 200}
	c.RCKeyRequests = RateLimit{PerSecond: 20, BurstCount: 100}
}

// RateLimitKey is one rc_* token bucket setting with its key path, and
// whether Ganglion enforces it yet. Keys for features Ganglion does not have
// (federation, third-party ids, media, reports, the user directory, delayed
// events) are accepted and validated so a Synapse config works unchanged,
// and take effect when the feature arrives.
type RateLimitKey struct {
	Path     string
	Limit    RateLimit
	Enforced bool
	// Applies says where an enforced limit is checked and what it is keyed
	// by; for the others, what it will govern.
	Applies string
}

// RateLimitKeys lists every rc_* bucket setting. It is the one list of
// which limits Ganglion enforces; README.md and the config docs quote it,
// and a test keeps them in step.
func (c *Config) RateLimitKeys() []RateLimitKey {
	keys := []RateLimitKey{
		{"rc_message", c.RCMessage, true, "sending events, state, membership changes, room creation and redactions; per user; server admins are exempt"},
		{"rc_registration", c.RCRegistration, true, "POST /register, GET /register/available and GET /_synapse/admin/v1/register (nonces); per client IP"},
		{"rc_registration_token_validity", c.RCRegistrationTokenValidity, true, "GET /_matrix/client/v1/register/m.login.registration_token/validity; per client IP"},
		{"rc_login.address", c.RCLogin.Address, true, "POST /login; per client IP"},
		{"rc_login.account", c.RCLogin.Account, true, "POST /login; per account"},
		{"rc_login.failed_attempts", c.RCLogin.FailedAttempts, true, "failed POST /login; per account"},
		{"rc_joins.local", c.RCJoins.Local, true, "joining a room this server is in; per user (re-joins while joined are not counted)"},
		{"rc_joins.remote", c.RCJoins.Remote, true, "joining a room through another server (make_join/send_join); per user"},
		{"rc_joins_per_room", c.RCJoinsPerRoom, true, "joins to one room; per room"},
		{"rc_invites.per_room", c.RCInvites.PerRoom, true, "invites, including createRoom's invite list; per room"},
		{"rc_invites.per_user", c.RCInvites.PerUser, true, "invites; per invited user"},
		{"rc_invites.per_issuer", c.RCInvites.PerIssuer, true, "invites; per inviting user"},
		{"rc_third_party_invite", c.RCThirdPartyInvite, false, "third-party invites (not implemented)"},
		{"rc_room_creation", c.RCRoomCreation, true, "POST /createRoom; per user"},
		{"rc_3pid_validation", c.RC3PIDValidation, false, "third-party id validation (not implemented)"},
		{"rc_presence.per_user", c.RCPresence.PerUser, true, "PUT /presence/{userId}/status; per user"},
		{"rc_delayed_event_mgmt", c.RCDelayedEventMgmt, false, "delayed event management (not implemented)"},
		{"rc_reports", c.RCReports, true, "POST /rooms/{roomId}/report/{eventId} and POST /rooms/{roomId}/report; per user; server admins are exempt"},
		{"rc_media_create", c.RCMediaCreate, false, "POST /media/v1/create (bounded by max_pending_media_uploads, not yet by this limit)"},
		{"rc_user_directory", c.RCUserDirectory, true, "POST /user_directory/search; per user"},
		{"rc_key_requests", c.RCKeyRequests, false, "cross-user room key requests (to-device m.room_key_request)"},
	}
	if c.RCAdminRedaction.Set {
		keys = append(keys, RateLimitKey{"rc_admin_redaction", c.RCAdminRedaction.RateLimit, true,
			"redactions by server admins, instead of rc_message; per user"})
	}
	return keys
}

func (c *Config) validateRateLimits(ps *problems) {
	for _, k := range c.RateLimitKeys() {
		if k.Limit.PerSecond < 0 {
			ps.add(k.Path+".per_second", "must not be negative, got %g", k.Limit.PerSecond)
		}
		switch {
		case k.Limit.BurstCount < 0:
			ps.add(k.Path+".burst_count", "must not be negative, got %g", k.Limit.BurstCount)
		case k.Limit.BurstCount < 1 && k.Limit.PerSecond > 0:
			// A bucket that holds less than one action refuses every
			// action forever, which is never what was meant.
			ps.add(k.Path+".burst_count", "must be at least 1, got %g (set per_second: 0 to turn the limit off)", k.Limit.BurstCount)
		}
	}
	f := c.RCFederation
	for _, v := range []struct {
		key string
		n   int
		min int
	}{
		{"window_size", f.WindowSize, 1},
		{"sleep_limit", f.SleepLimit, 0},
		{"sleep_delay", f.SleepDelay, 0},
		{"reject_limit", f.RejectLimit, 0},
		{"concurrent", f.Concurrent, 1},
	} {
		if v.n < v.min {
			ps.add("rc_federation."+v.key, "must be at least %d, got %d", v.min, v.n)
		}
	}
}
