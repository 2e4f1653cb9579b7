package config_test

import (
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"ganglion/internal/config"
)

// TestRateLimitDefaults pins every rc_* default to Synapse's current value.
func TestRateLimitDefaults(t *testing.T) {
	cfg := mustLoad(t, nil, [2]string{"homeserver.yaml", minimalMain})
	rl := func(p, b float64) config.RateLimit { return config.RateLimit{PerSecond: p, BurstCount: b} }
	want := map[string]config.RateLimit{
		"rc_message":                     rl(0.2, 10),
		"rc_registration":                rl(0.17, 3),
		"rc_registration_token_validity": rl(0.1, 5),
		"rc_login.address":               rl(0.003, 5),
		"rc_login.account":               rl(0.003, 5),
		"rc_login.failed_attempts":       rl(0.17, 3),
		"rc_joins.local":                 rl(0.1, 10),
		"rc_joins.remote":                rl(0.01, 10),
		"rc_joins_per_room":              rl(1, 10),
		"rc_invites.per_room":            rl(0.3, 10),
		"rc_invites.per_user":            rl(0.003, 5),
		"rc_invites.per_issuer":          rl(0.3, 10),
		"rc_third_party_invite":          rl(0.0025, 5),
		"rc_room_creation":               rl(0.016, 10),
		"rc_3pid_validation":             rl(0.003, 5),
		"rc_presence.per_user":           rl(0.1, 1),
		"rc_delayed_event_mgmt":          rl(1, 5),
		"rc_reports":                     rl(1, 5),
		"rc_media_create":                rl(10, 50),
		"rc_user_directory":              rl(0.016, 200),
		"rc_key_requests":                rl(20, 100),
	}
	got := map[string]config.RateLimit{}
	for _, k := range cfg.RateLimitKeys() {
		got[k.Path] = k.Limit
	}
	for path, w := range want {
		if got[path] != w {
			t.Errorf("%s = %+v, want %+v", path, got[path], w)
		}
	}
	if len(got) != len(want) {
		t.Errorf("RateLimitKeys has %d keys, want %d (rc_admin_redaction only when set)", len(got), len(want))
	}
	if cfg.RCAdminRedaction.Set {
		t.Error("rc_admin_redaction set by default; unset means rc_message applies")
	}
	if f := cfg.RCFederation; f != (config.FederationRateLimits{WindowSize: 1000, SleepLimit: 10, SleepDelay: 500, RejectLimit: 50, Concurrent: 3}) {
		t.Errorf("rc_federation = %+v", f)
	}
}

// TestRateLimitKeysAccepted: every Synapse rc_* key loads without being
// reported unknown, nested keys keep the defaults of their siblings, and
// rc_admin_redaction fills missing sub-keys with Synapse's generic default.
func TestRateLimitKeysAccepted(t *testing.T) {
	cfg := mustLoad(t, nil, [2]string{"homeserver.yaml", minimalMain + `
rc_joins: {local: {per_second: 2}}
rc_joins_per_room: {per_second: 3, burst_count: 4}
rc_invites: {per_issuer: {burst_count: 7}}
rc_admin_redaction: {per_second: 5}
rc_room_creation: {per_second: 0.5, burst_count: 2}
rc_3pid_validation: {per_second: 1, burst_count: 1}
rc_registration_token_validity: {per_second: 1, burst_count: 1}
rc_federation: {window_size: 2000, sleep_limit: 5, sleep_delay: 100, reject_limit: 20, concurrent: 2}
rc_presence: {per_user: {per_second: 0.5, burst_count: 2}}
rc_delayed_event_mgmt: {per_second: 1, burst_count: 1}
rc_reports: {per_second: 1, burst_count: 1}
rc_media_create: {per_second: 1, burst_count: 1}
rc_user_directory: {per_second: 1, burst_count: 1}
rc_third_party_invite: {per_second: 1, burst_count: 1}
rc_key_requests: {per_second: 1, burst_count: 1}
`})
	if len(cfg.UnknownKeys) != 0 {
		t.Fatalf("unknown keys: %v", cfg.UnknownKeys)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"rc_joins.local", cfg.RCJoins.Local, config.RateLimit{PerSecond: 2, BurstCount: 10}},
		{"rc_joins.remote keeps its default", cfg.RCJoins.Remote, config.RateLimit{PerSecond: 0.01, BurstCount: 10}},
		{"rc_joins_per_room", cfg.RCJoinsPerRoom, config.RateLimit{PerSecond: 3, BurstCount: 4}},
		{"rc_invites.per_issuer", cfg.RCInvites.PerIssuer, config.RateLimit{PerSecond: 0.3, BurstCount: 7}},
		{"rc_invites.per_room keeps its default", cfg.RCInvites.PerRoom, config.RateLimit{PerSecond: 0.3, BurstCount: 10}},
		{"rc_admin_redaction", cfg.RCAdminRedaction, config.OptionalRateLimit{Set: true, RateLimit: config.RateLimit{PerSecond: 5, BurstCount: 3}}},
		{"rc_presence.per_user", cfg.RCPresence.PerUser, config.RateLimit{PerSecond: 0.5, BurstCount: 2}},
		{"rc_federation.concurrent", cfg.RCFederation.Concurrent, 2},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %+v, want %+v", c.name, c.got, c.want)
		}
	}
}

func TestRateLimitValidation(t *testing.T) {
	tests := []struct {
		name      string
		overlay   string
		wantPaths []string
	}{
		{"negative per_second", "rc_joins: {local: {per_second: -1}}\n", []string{"rc_joins.local.per_second"}},
		{"burst below one", "rc_invites: {per_user: {burst_count: 0.5}}\n", []string{"rc_invites.per_user.burst_count"}},
		{"negative burst", "rc_room_creation: {burst_count: -1}\n", []string{"rc_room_creation.burst_count"}},
		{"admin redaction", "rc_admin_redaction: {per_second: 1, burst_count: 0}\n", []string{"rc_admin_redaction.burst_count"}},
		{"presence", "rc_presence: {per_user: {per_second: -0.5}}\n", []string{"rc_presence.per_user.per_second"}},
		{"unenforced keys are validated too", "rc_reports: {per_second: -1}\nrc_user_directory: {burst_count: 0}\n",
			[]string{"rc_reports.per_second", "rc_user_directory.burst_count"}},
		{"federation", "rc_federation: {window_size: 0, concurrent: 0, sleep_delay: -1}\n",
			[]string{"rc_federation.concurrent", "rc_federation.sleep_delay", "rc_federation.window_size"}},
		{"http limits", `http_limits:
  request_header_timeout: soon
  request_body_timeout: 0
  request_body_min_rate: fast
  max_connections: 0
  max_pending_connections_per_ip: -1
`, []string{"http_limits.max_connections", "http_limits.max_pending_connections_per_ip",
			"http_limits.request_body_min_rate", "http_limits.request_body_timeout", "http_limits.request_header_timeout"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := config.Load(writeFiles(t, [2]string{"homeserver.yaml", minimalMain + tt.overlay}), nil)
			if got := problemPaths(t, err); !slices.Equal(got, tt.wantPaths) {
				t.Errorf("problem paths = %v, want %v\n%v", got, tt.wantPaths, err)
			}
		})
	}
	// A limit turned off may have any burst.
	mustLoad(t, nil, [2]string{"homeserver.yaml", minimalMain + "rc_message: {per_second: 0, burst_count: 0}\n"})
}

func TestHTTPLimits(t *testing.T) {
	def := mustLoad(t, nil, [2]string{"homeserver.yaml", minimalMain}).HTTPLimits.Values()
	if def != (config.HTTPLimitValues{RequestHeaderTimeout: 10 * time.Second, RequestBodyTimeout: 30 * time.Second,
		RequestBodyMinRate: 16 << 10, IdleTimeout: 2 * time.Minute, MaxConnections: 4096}) {
		t.Errorf("defaults = %+v", def)
	}
	cfg := mustLoad(t, nil, [2]string{"homeserver.yaml", minimalMain + `http_limits:
  request_header_timeout: 1500
  request_body_timeout: 1m
  request_body_min_rate: 1M
  max_connections: 10
  max_pending_connections_per_ip: 3
`})
	got := cfg.HTTPLimits.Values()
	want := config.HTTPLimitValues{RequestHeaderTimeout: 1500 * time.Millisecond, RequestBodyTimeout: time.Minute,
		RequestBodyMinRate: 1 << 20, IdleTimeout: 2 * time.Minute, MaxConnections: 10, MaxPendingConnectionsPerIP: 3}
	if got != want {
		t.Errorf("values = %+v, want %+v", got, want)
	}
}

// TestEnforcedListDocumented keeps README.md's list of enforced rate limits
// in step with RateLimitKeys.
func TestEnforcedListDocumented(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	cfg := config.Default()
	cfg.RCAdminRedaction.Set = true
	for _, k := range cfg.RateLimitKeys() {
		mark := "no"
		if k.Enforced {
			mark = "yes"
		}
		row := "| `" + k.Path + "` | " + mark + " |"
		if !strings.Contains(string(readme), row) {
			t.Errorf("README.md lacks the row %q", row)
		}
	}
}
