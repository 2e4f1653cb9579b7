package routes_test

import (
	"regexp"
	"slices"
	"strings"
	"testing"

	"ganglion/internal/config"
	"ganglion/internal/routes"
)

// classCases are request lines and the class they belong to; "" means an
// unknown path (404) and a leading "!" a known path with a method the
// class does not take (405). Every pattern of the workers document is
// exercised with each version prefix it lists at least once.
var classCases = []struct {
	method, path, want string
}{
	// Sync.
	{"GET", "/_matrix/client/v3/sync", "sync"},
	{"GET", "/_matrix/client/r0/sync", "sync"},
	{"HEAD", "/_matrix/client/v3/sync", "sync"},
	{"OPTIONS", "/_matrix/client/v3/sync", "sync"},
	{"POST", "/_matrix/client/v3/sync", "!sync"},
	{"GET", "/_matrix/client/unstable/sync", "main_only"}, // not in Synapse's list
	{"GET", "/_matrix/client/v3/sync/extra", "main_only"},
	{"GET", "/_matrix/client/api/v1/events", "legacy_sync"},
	{"GET", "/_matrix/client/r0/events", "legacy_sync"},
	{"GET", "/_matrix/client/v3/events", "legacy_sync"},
	{"PUT", "/_matrix/client/v3/events", "!legacy_sync"},
	{"GET", "/_matrix/client/api/v1/initialSync", "legacy_initial_sync"},
	{"GET", "/_matrix/client/v3/initialSync", "legacy_initial_sync"},
	{"GET", "/_matrix/client/r0/rooms/!r:x/initialSync", "legacy_initial_sync"},

	// Federation.
	{"GET", "/_matrix/federation/v1/event/$ev", "federation_read"},
	{"GET", "/_matrix/federation/v1/state/!r:x", "federation_read"},
	{"GET", "/_matrix/federation/v1/state_ids/!r:x", "federation_read"},
	{"GET", "/_matrix/federation/v1/backfill/!r:x", "federation_read"},
	{"POST", "/_matrix/federation/v1/get_missing_events/!r:x", "federation_read"},
	{"GET", "/_matrix/federation/v1/publicRooms", "federation_read"},
	{"GET", "/_matrix/federation/v1/query/profile", "federation_read"},
	{"GET", "/_matrix/federation/v1/make_join/!r:x/@u:y", "federation_read"},
	{"GET", "/_matrix/federation/v1/make_leave/!r:x/@u:y", "federation_read"},
	{"PUT", "/_matrix/federation/v1/send_join/!r:x/$e", "federation_read"},
	{"PUT", "/_matrix/federation/v2/send_join/!r:x/$e", "federation_read"},
	{"PUT", "/_matrix/federation/v2/send_leave/!r:x/$e", "federation_read"},
	{"PUT", "/_matrix/federation/v2/invite/!r:x/$e", "federation_read"},
	{"GET", "/_matrix/federation/v1/event_auth/!r:x/$e", "federation_read"},
	{"GET", "/_matrix/federation/v1/timestamp_to_event/!r:x", "federation_read"},
	{"PUT", "/_matrix/federation/v1/exchange_third_party_invite/!r:x", "federation_read"},
	{"GET", "/_matrix/federation/v1/user/devices/@u:x", "federation_read"},
	{"POST", "/_matrix/key/v2/query", "federation_read"},
	{"GET", "/_matrix/federation/v1/hierarchy/!r:x", "federation_read"},
	{"GET", "/_matrix/federation/v1/openid/userinfo", "federation_read"},
	{"GET", "/_matrix/federation/v1/openid/userinfo/x", "main_only"},
	{"PUT", "/_matrix/federation/v1/3pid/onbind", "federation_read"},
	{"POST", "/_matrix/client/v3/user/@u:x/openid/request_token", "main_only"},
	{"PUT", "/_matrix/federation/v1/send/txn1", "federation_inbound"},
	{"POST", "/_matrix/federation/v1/send/txn1", "!federation_inbound"},
	{"GET", "/_matrix/federation/v1/version", "federation_read"},
	{"GET", "/_matrix/federation/v1/versions", "main_only"},
	{"GET", "/_matrix/key/v2/server", "key_server"},
	{"GET", "/_matrix/key/v2/server/ed25519:a", "key_server"},
	{"POST", "/_matrix/key/v2/server", "!key_server"},
	{"GET", "/_matrix/key/v2/query/remote.example", "federation_read"},
	{"GET", "/_matrix/key/v2/serverx", "main_only"},

	// Client reads.
	{"POST", "/_matrix/client/v3/createRoom", "client_read"},
	{"POST", "/_matrix/client/api/v1/createRoom", "client_read"},
	{"GET", "/_matrix/client/unstable/publicRooms", "client_read"},
	{"GET", "/_matrix/client/v3/rooms/!r:x/joined_members", "client_read"},
	{"GET", "/_matrix/client/v3/rooms/!r:x/context/$ev", "client_read"},
	{"GET", "/_matrix/client/r0/rooms/!r:x/members", "client_read"},
	{"GET", "/_matrix/client/v3/rooms/!r:x/state", "client_read"},
	{"GET", "/_matrix/client/v1/rooms/!r:x/hierarchy", "client_read"},
	{"GET", "/_matrix/client/v1/rooms/!r:x/relations/$ev", "client_read"},
	{"GET", "/_matrix/client/unstable/rooms/!r:x/relations/$ev/m.thread", "client_read"},
	{"GET", "/_matrix/client/v1/rooms/!r:x/threads", "client_read"},
	{"POST", "/_matrix/client/unstable/org.matrix.msc2716/rooms/!r:x/batch_send", "client_read"},
	{"GET", "/_matrix/client/unstable/im.nheko.summary/rooms/!r:x/summary", "client_read"},
	{"GET", "/_matrix/client/unstable/im.nheko.summary/summary/#a:x", "client_read"},
	{"GET", "/_matrix/client/v1/room_summary/!r:x", "client_read"},
	// Reports, their admin API and server notices are main's in v1.83.
	{"POST", "/_matrix/client/v3/rooms/!r:x/report/$ev", "main_only"},
	{"POST", "/_matrix/client/v3/rooms/!r:x/report", "main_only"},
	{"GET", "/_synapse/admin/v1/event_reports", "main_only"},
	{"POST", "/_synapse/admin/v1/send_server_notice", "main_only"},
	{"GET", "/_matrix/client/v3/rooms/!r:x/initialSync", "legacy_initial_sync"},
	{"GET", "/_matrix/client/v3/account/3pid", "client_read"},
	{"GET", "/_matrix/client/v3/account/whoami", "client_read"},
	{"GET", "/_matrix/client/r0/devices", "client_read"},
	{"GET", "/_matrix/client/v3/voip/turnServer", "client_read"},
	{"GET", "/_matrix/client/v3/rooms/!r:x/event/$ev", "client_read"},
	{"GET", "/_matrix/client/v3/joined_rooms", "client_read"},
	{"GET", "/_matrix/client/v1/rooms/!r:x/timestamp_to_event", "client_read"},
	{"GET", "/_matrix/client/v3/rooms/!r:x/aliases", "client_read"},
	{"GET", "/_matrix/client/unstable/org.matrix.msc2432/rooms/!r:x/aliases", "client_read"},
	{"POST", "/_matrix/client/v3/search", "client_read"},
	{"POST", "/_matrix/client/v3/user/@u:x/filter", "client_read"},
	{"GET", "/_matrix/client/v3/user/@u:x/filter/12", "client_read"},
	{"PUT", "/_matrix/client/v3/directory/room/#a:x", "client_read"},
	{"GET", "/_matrix/client/v3/capabilities", "client_read"},
	{"GET", "/_matrix/client/versions", "versions"},

	// Encryption.
	{"POST", "/_matrix/client/v3/keys/query", "encryption"},
	{"GET", "/_matrix/client/r0/keys/changes", "encryption"},
	{"POST", "/_matrix/client/unstable/keys/claim", "encryption"},
	{"GET", "/_matrix/client/v3/room_keys/version", "encryption"},
	{"POST", "/_matrix/client/v3/keys/upload/DEVICE", "encryption"},
	{"POST", "/_matrix/client/v3/keys/upload", "main_only"}, // Synapse lists only keys/upload/
	{"POST", "/_matrix/client/v3/keys/device_signing/upload", "main_only"},

	// Registration and login.
	{"POST", "/_matrix/client/v3/login", "registration"},
	{"GET", "/_matrix/client/api/v1/login", "registration"},
	{"POST", "/_matrix/client/v3/register", "registration"},
	{"GET", "/_matrix/client/r0/register/available", "registration"},
	{"GET", "/_matrix/client/v1/register/m.login.registration_token/validity", "registration"},
	{"GET", "/_matrix/client/v3/password_policy", "registration"},
	{"GET", "/_matrix/client/unstable/password_policy", "registration"},
	// The rest of the 3PID endpoints and the registration token admin API
	// are not in the workers document: main only.
	{"POST", "/_matrix/client/v3/account/3pid/delete", "main_only"},
	{"POST", "/_matrix/client/v3/account/3pid/email/requestToken", "main_only"},
	{"POST", "/_synapse/admin/v1/registration_tokens/new", "main_only"},
	{"POST", "/_matrix/client/v3/knock/!r:x", "event_send"},
	{"POST", "/_matrix/client/v3/refresh", "registration"},
	{"POST", "/_matrix/client/v1/refresh", "registration"},
	{"POST", "/_matrix/client/v3/logout", "main_only"},

	// Event sending.
	{"POST", "/_matrix/client/v3/rooms/!r:x/redact/$ev/txn", "event_send"},
	{"PUT", "/_matrix/client/v3/rooms/!r:x/send/m.room.message/txn1", "event_send"},
	{"POST", "/_matrix/client/v3/rooms/!r:x/upgrade", "event_send"},
	{"POST", "/_matrix/client/r0/rooms/!r:x/upgrade", "event_send"},
	{"PUT", "/_matrix/client/api/v1/rooms/!r:x/send/m.room.message/txn1", "event_send"},
	{"PUT", "/_matrix/client/v3/rooms/!r:x/send/m.room.message/typing", "event_send"},
	{"PUT", "/_matrix/client/v3/rooms/!r:x/state/m.room.name/", "event_send"},
	{"GET", "/_matrix/client/v3/rooms/!r:x/state/m.typing/", "event_send"},
	{"POST", "/_matrix/client/v3/rooms/!r:x/join", "event_send"},
	{"POST", "/_matrix/client/v3/rooms/!r:x/invite", "event_send"},
	{"POST", "/_matrix/client/v3/rooms/!r:x/leave", "event_send"},
	{"POST", "/_matrix/client/r0/rooms/!r:x/ban", "event_send"},
	{"POST", "/_matrix/client/v3/rooms/!r:x/unban", "event_send"},
	{"POST", "/_matrix/client/unstable/rooms/!r:x/kick", "event_send"},
	{"POST", "/_matrix/client/v3/join/#a:x", "event_send"},
	{"POST", "/_matrix/client/v3/knock/!r:x", "event_send"},
	{"PUT", "/_matrix/client/v3/profile/@u:x/displayname", "event_send"},
	{"GET", "/_matrix/client/v3/profile/@u:x", "event_send"},

	// Stream writers.
	{"PUT", "/_matrix/client/v3/rooms/!r:x/typing/@u:x", "typing"},
	{"PUT", "/_matrix/client/api/v1/rooms/!r:x/typing/@u:x", "typing"},
	{"PUT", "/_matrix/client/v3/sendToDevice/m.room_key/txn", "to_device"},
	{"PUT", "/_matrix/client/r0/sendToDevice/m.room_key/txn", "to_device"},
	{"POST", "/_matrix/client/v3/sendToDevice/m.room_key/txn", "!to_device"},
	{"PUT", "/_matrix/client/v3/user/@u:x/account_data/m.direct", "account_data"},
	{"GET", "/_matrix/client/v3/user/@u:x/rooms/!r:x/account_data/t", "account_data"},
	{"PUT", "/_matrix/client/r0/user/@u:x/rooms/!r:x/tags/m.favourite", "account_data"},
	{"GET", "/_matrix/client/v3/user/@u:x/rooms/!r:x/tags", "account_data"},
	{"POST", "/_matrix/client/v3/rooms/!r:x/receipt/m.read/$ev", "receipts"},
	{"POST", "/_matrix/client/v3/rooms/!r:x/read_markers", "receipts"},
	{"PUT", "/_matrix/client/v3/presence/@u:x/status", "presence"},
	{"GET", "/_matrix/client/api/v1/presence/@u:x/status", "presence"},

	// User directory, push rules, pagination.
	{"POST", "/_matrix/client/v3/user_directory/search", "user_directory"},
	{"GET", "/_matrix/client/v3/pushrules/", "push_rules"},
	{"GET", "/_matrix/client/api/v1/pushrules/global/", "push_rules"},
	{"PUT", "/_matrix/client/v3/pushrules/global/override/rule", "push_rules_write"},
	{"DELETE", "/_matrix/client/v3/pushrules/global/override/rule", "push_rules_write"},
	{"GET", "/_matrix/client/v3/rooms/!r:x/messages", "pagination"},
	{"GET", "/_matrix/client/api/v1/rooms/!r:x/messages", "pagination"},

	// SSO.
	{"GET", "/_matrix/client/v3/login/sso/redirect", "sso"},
	{"GET", "/_matrix/client/r0/login/sso/redirect/oidc-github", "sso"},
	{"GET", "/_synapse/client/pick_idp", "sso"},
	{"POST", "/_synapse/client/pick_username/account", "sso"},
	{"GET", "/_synapse/client/new_user_consent", "sso"},
	{"POST", "/_synapse/client/sso_register", "sso"},
	{"GET", "/_synapse/client/oidc/callback", "sso"},
	{"POST", "/_synapse/client/saml2/authn_response", "sso"},
	{"GET", "/_matrix/client/v3/login/cas/ticket", "sso"},

	// Media.
	{"POST", "/_matrix/media/v3/upload", "media"},
	{"GET", "/_matrix/media/r0/download/x/abc", "media"},
	{"GET", "/_matrix/client/v1/media/thumbnail/x/abc", "media"},
	{"GET", "/_matrix/federation/v1/media/download/abc", "media"},
	{"POST", "/_synapse/admin/v1/purge_media_cache", "admin_media"},
	{"GET", "/_synapse/admin/v1/room/!r:x/media", "admin_media"},
	{"POST", "/_synapse/admin/v1/user/@u:x/media/quarantine", "admin_media"},
	{"DELETE", "/_synapse/admin/v1/media/x/abc", "admin_media"},
	{"POST", "/_synapse/admin/v1/quarantine_media/x/abc", "admin_media"},
	{"GET", "/_synapse/admin/v1/users/@u:x/media", "admin_media"},

	// Main only and unknown.
	{"POST", "/_synapse/admin/v1/register", "main_only"},
	{"GET", "/_synapse/client/password_reset/email/submit_token", "main_only"},
	{"GET", "/.well-known/matrix/client", "main_only"},
	{"GET", "/_matrix/client/v3/devices/ABC", "main_only"},
	{"GET", "/", ""},
	{"GET", "/health", ""},
	{"GET", "/metrics", ""},
	{"POST", "/_synapse/replication/send_events/x", ""},
	{"GET", "/_matrix", ""},
	{"GET", "/index.html", ""},
}

func TestClassify(t *testing.T) {
	for _, tc := range classCases {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			c, ok := routes.Classify(tc.method, tc.path)
			switch {
			case tc.want == "":
				if c != nil {
					t.Fatalf("got class %s, want none", c.Name)
				}
			case strings.HasPrefix(tc.want, "!"):
				if c == nil || ok || c.Name != tc.want[1:] {
					t.Fatalf("got %v ok=%v, want method refused by %s", c, ok, tc.want[1:])
				}
			default:
				if c == nil || !ok || c.Name != tc.want {
					t.Fatalf("got %v ok=%v, want %s", c, ok, tc.want)
				}
			}
		})
	}
}

// Every class and every pattern of the table is exercised by classCases,
// so a pattern cannot be added or mistyped without a test noticing.
func TestEveryPatternHasACase(t *testing.T) {
	for _, c := range routes.Classes() {
		for _, p := range c.Patterns {
			re := regexp.MustCompile(p)
			found := false
			for _, tc := range classCases {
				if strings.TrimPrefix(tc.want, "!") == c.Name && re.MatchString(tc.path) {
					found = true
					break
				}
			}
			if !found {
				t.Errorf("class %s: pattern %s has no test case", c.Name, p)
			}
		}
	}
}

func TestTableIsWellFormed(t *testing.T) {
	pools := routes.PoolNames()
	seen := map[string]bool{}
	for _, c := range routes.Classes() {
		if seen[c.Name] {
			t.Errorf("duplicate class %s", c.Name)
		}
		seen[c.Name] = true
		for _, p := range c.Patterns {
			if !strings.HasPrefix(p, "^/") {
				t.Errorf("class %s: pattern %s is not anchored at the start", c.Name, p)
			}
		}
		if (c.Policy == routes.ToStreamWriter) != (c.Stream != "") {
			t.Errorf("class %s: stream %q with policy %s", c.Name, c.Stream, c.Policy)
		}
		if c.Else != "" {
			if _, ok := routes.ByName(c.Else); !ok {
				t.Errorf("class %s: else class %s does not exist", c.Name, c.Else)
			}
		}
		if c.Name != routes.MainOnly && len(c.Pools) == 0 {
			t.Errorf("class %s has no pool", c.Name)
		}
		for _, p := range c.Pools {
			if !slices.Contains(pools, p) {
				t.Errorf("class %s: pool %s missing from PoolNames", c.Name, p)
			}
		}
	}
	if last := routes.Classes()[len(routes.Classes())-1]; last.Name != routes.MainOnly {
		t.Errorf("the last class is %s; the main-only fallback must come last", last.Name)
	}
}

func TestAllowed(t *testing.T) {
	cases := []struct {
		role, method, path string
		want               bool
	}{
		{config.RoleMain, "PUT", "/_matrix/client/v3/pushrules/global/override/x", true},
		{config.RoleMain, "GET", "/_matrix/media/v3/download/x/y", true},
		{config.RoleGenericWorker, "GET", "/_matrix/client/v3/sync", true},
		{config.RoleGenericWorker, "PUT", "/_matrix/client/v3/rooms/!r:x/typing/@u:x", true},
		{config.RoleGenericWorker, "GET", "/_matrix/client/v3/pushrules/", true},
		{config.RoleGenericWorker, "PUT", "/_matrix/client/v3/pushrules/global/override/x", true},
		{config.RoleGenericWorker, "POST", "/_matrix/client/v3/logout", false},
		{config.RoleGenericWorker, "POST", "/_synapse/admin/v1/register", false},
		{config.RoleGenericWorker, "GET", "/_matrix/client/v3/login/sso/redirect", true},
		{config.RoleGenericWorker, "POST", "/_matrix/client/v3/sync", true}, // the endpoint answers 405
		{config.RoleGenericWorker, "POST", "/_synapse/replication/send_events/x", true},
		{config.RoleGenericWorker, "GET", "/health", true},
		{config.RoleMediaRepository, "GET", "/_matrix/media/v3/download/x/y", true},
		{config.RoleMediaRepository, "GET", "/_synapse/admin/v1/users/@u:x/media", true},
		{config.RoleMediaRepository, "GET", "/_matrix/client/versions", true},
		{config.RoleMediaRepository, "GET", "/_matrix/client/v3/sync", false},
		{config.RoleMediaRepository, "POST", "/_matrix/client/v3/login", false},
		{config.RoleUserDir, "POST", "/_matrix/client/v3/user_directory/search", true},
		{config.RoleUserDir, "GET", "/_matrix/client/v3/sync", false},
		{config.RolePusher, "GET", "/_matrix/client/v3/sync", false},
		{config.RolePusher, "GET", "/health", true},
		{config.RoleFederationSender, "PUT", "/_matrix/federation/v1/send/t", false},
		{config.RoleFederationSender, "GET", "/_matrix/client/versions", true},
	}
	for _, tc := range cases {
		if got := routes.Allowed(tc.role, tc.method, tc.path); got != tc.want {
			t.Errorf("Allowed(%s, %s %s) = %v, want %v", tc.role, tc.method, tc.path, got, tc.want)
		}
	}
}

func TestRoomKey(t *testing.T) {
	cases := map[string]string{
		"/_matrix/client/v3/rooms/!r:x/send/m.room.message/t": "!r:x",
		"/_matrix/client/v3/rooms/!r:x/join":                  "!r:x",
		"/_matrix/client/v3/join/#a:x":                        "#a:x",
		"/_matrix/client/v3/knock/!k:x":                       "!k:x",
		"/_matrix/client/v3/profile/@u:x/displayname":         "/_matrix/client/v3/profile/@u:x/displayname",
		"/_matrix/client/v3/rooms//send":                      "/_matrix/client/v3/rooms//send",
	}
	for path, want := range cases {
		if got := routes.RoomKey(path); got != want {
			t.Errorf("RoomKey(%s) = %q, want %q", path, got, want)
		}
	}
}

func TestOriginOf(t *testing.T) {
	cases := map[string]string{
		`X-Matrix origin="a.example",destination="b",key="ed25519:1",sig="x"`: "a.example",
		`X-Matrix destination="b", origin=c.example, key="ed25519:1"`:         "c.example",
		`x-matrix origin=d.example`:                                           "d.example",
		`Bearer syt_abc_def_ghi`:                                              "",
		``:                                                                    "",
	}
	for h, want := range cases {
		if got := routes.OriginOf(h); got != want {
			t.Errorf("OriginOf(%q) = %q, want %q", h, got, want)
		}
	}
}

func BenchmarkClassify(b *testing.B) {
	paths := []string{
		"/_matrix/client/v3/sync",
		"/_matrix/client/v3/rooms/!r:x/send/m.room.message/txn1",
		"/_matrix/client/v3/devices/ABC",
	}
	for i := 0; b.Loop(); i++ {
		routes.Classify("GET", paths[i%len(paths)])
	}
}

// The literal prefilter must never change an answer: Match agrees with the
// plain regexes on every test path and on variations of them.
func TestMatchAgreesWithRegexes(t *testing.T) {
	var paths []string
	for _, tc := range classCases {
		p := tc.path
		paths = append(paths, p, p+"/", p+"x", strings.ToUpper(p), strings.Replace(p, "v3", "r0", 1),
			strings.Replace(p, "/_matrix/client/", "/_matrix/client/unstable/org.x/", 1))
		for i := 1; i < len(p); i += 7 {
			paths = append(paths, p[:i], p[i:])
		}
	}
	for _, c := range routes.Classes() {
		res := make([]*regexp.Regexp, len(c.Patterns))
		for i, p := range c.Patterns {
			res[i] = regexp.MustCompile(p)
		}
		for _, p := range paths {
			want := slices.ContainsFunc(res, func(re *regexp.Regexp) bool { return re.MatchString(p) })
			if got := c.Match(p); got != want {
				t.Errorf("class %s: Match(%q) = %v, regexes say %v", c.Name, p, got, want)
			}
		}
	}
}

func TestReplayable(t *testing.T) {
	for _, c := range []struct {
		method, path string
		want         bool
	}{
		{"GET", "/_matrix/client/v3/sync", true},
		{"PUT", "/_matrix/client/v3/rooms/!r:x/send/m.room.message/txn1", true},
		{"PUT", "/_matrix/client/v3/rooms/!r:x/redact/$e/txn1", true},
		{"PUT", "/_matrix/client/v3/sendToDevice/m.test/txn1", true},
		{"PUT", "/_matrix/federation/v1/send/1234", true},
		{"PUT", "/_matrix/client/v3/rooms/!r:x/state/m.room.name/", false},
		{"PUT", "/_matrix/client/v3/directory/room/%23a:x", false},
		{"PUT", "/_matrix/client/v3/rooms/!r:x/send/m.room.message", false},
		{"DELETE", "/_matrix/client/v3/devices/D", false},
		{"POST", "/_matrix/client/v3/rooms/!r:x/receipt/m.read/$e", false},
	} {
		if got := routes.Replayable(c.method, c.path); got != c.want {
			t.Errorf("Replayable(%s %s) = %v, want %v", c.method, c.path, got, c.want)
		}
	}
}
