package e2e_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
)

// badInputCase is one request the server must refuse (or, for the
// shared-secret success row, accept) with a precise answer.
type badInputCase struct {
	name   string
	closed bool   // send to the server with registration disabled
	method string // HTTP method
	// path is under the server root; {room}, {event} and {alice} are
	// replaced with the fixture's (escaped) values.
	path string
	// who authenticates: "" (no token), "alice" (room admin), "bob"
	// (member without power), "eve" (not in the room), or "bad" (a
	// token the server never issued).
	who string
	// body is sent as is; bodyFn, if set, builds it (for requests that need
	// a fresh nonce).
	body   string
	bodyFn func(t *testing.T, ctx context.Context, srv *server) string
	status int
	// codes are the acceptable errcodes; empty for a success row. More
	// than one only where the spec and Synapse legitimately differ.
	codes []string
}

// TestBadInput sends one table of malformed, unauthorised and otherwise
// refused requests over plain net/http, checking status, errcode and that
// every answer is a JSON object.
//
// Decisions where the spec leaves room:
//   - Sending to or reading an unknown (but well-formed) room id answers 403
//     M_FORBIDDEN, as Synapse does ("Unknown room" / "not in room"): to a
//     non-member an unknown room and a private room look the same, so the
//     answer does not reveal which rooms exist. Joining an unknown room
//     answers 404 M_NOT_FOUND (no server to join through), as Synapse does.
//   - A malformed room id answers 400 M_INVALID_PARAM.
//   - A body that is valid JSON but not an object (array, string) is
//     M_BAD_JSON by the spec's definitions; Synapse says M_NOT_JSON
//     ("Content must be a JSON object"). Both are accepted.
//   - /event of an event the user may not see answers 404 M_NOT_FOUND, as
//     the spec lists, for members and non-members alike (Synapse answers a
//     non-member 403): the answer does not tell a hidden event from a
//     missing one.
func TestBadInput(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		closed := startServer(t, srv.engine, withRegistrationDisabled())

		alice := srv.register(t, ctx, "alice")
		bob := srv.register(t, ctx, "bob")
		eve := srv.register(t, ctx, "eve")
		room := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "private_chat", Name: "Guarded"})
		invite(t, ctx, alice, room, bob.UserID)
		join(t, ctx, bob, room.String())
		msg := send(t, ctx, alice, room, "secret", "fixture")
		// The preset's power levels must be the spec defaults the power rows
		// rely on: state_default 50, users_default 0.
		var pl map[string]any
		if err := alice.StateEvent(ctx, room, event.StatePowerLevels, "", &pl); err != nil {
			t.Fatalf("read power levels: %v", err)
		}
		if pl["state_default"] != float64(50) || pl["users_default"] != float64(0) {
			t.Fatalf("power levels %v: want state_default 50, users_default 0", pl)
		}

		tokens := map[string]string{
			"alice": alice.AccessToken, "bob": bob.AccessToken, "eve": eve.AccessToken,
			"bad": "syt_this_token_was_never_issued",
		}
		repl := strings.NewReplacer(
			"{room}", escape(room.String()),
			"{event}", escape(msg.String()),
			"{alice}", escape(alice.UserID.String()),
		)
		bigContent := `{"msgtype":"m.text","body":"` + strings.Repeat("x", 70000) + `"}`
		bigBody := `{"name":"huge","topic":"` + strings.Repeat("y", 1<<20+1024) + `"}`
		const (
			v3      = "/_matrix/client/v3"
			unknown = "!doesnotexist:" + serverName
		)

		cases := []badInputCase{
			// Malformed bodies.
			{name: "not JSON", method: "POST", path: v3 + "/createRoom", who: "alice", body: `{"name": "x"`, status: 400, codes: []string{"M_NOT_JSON"}},
			{name: "JSON array body", method: "POST", path: v3 + "/createRoom", who: "alice", body: `[1, 2, 3]`, status: 400, codes: []string{"M_BAD_JSON", "M_NOT_JSON"}},
			{name: "wrong type in createRoom", method: "POST", path: v3 + "/createRoom", who: "alice", body: `{"name": 5}`, status: 400, codes: []string{"M_BAD_JSON"}},
			{name: "event content is a string", method: "PUT", path: v3 + "/rooms/{room}/send/m.room.message/t-str", who: "alice", body: `"just a string"`, status: 400, codes: []string{"M_BAD_JSON", "M_NOT_JSON"}},
			{name: "event content is an array", method: "PUT", path: v3 + "/rooms/{room}/send/m.room.message/t-arr", who: "alice", body: `[]`, status: 400, codes: []string{"M_BAD_JSON", "M_NOT_JSON"}},
			{name: "oversize event content", method: "PUT", path: v3 + "/rooms/{room}/send/m.room.message/t-big", who: "alice", body: bigContent, status: 413, codes: []string{"M_TOO_LARGE"}},
			{name: "oversize request body", method: "POST", path: v3 + "/createRoom", who: "alice", body: bigBody, status: 413, codes: []string{"M_TOO_LARGE"}},

			// Authentication.
			{name: "missing token", method: "GET", path: v3 + "/joined_rooms", status: 401, codes: []string{"M_MISSING_TOKEN"}},
			{name: "unknown token", method: "GET", path: v3 + "/joined_rooms", who: "bad", status: 401, codes: []string{"M_UNKNOWN_TOKEN"}},
			{name: "publicRooms without token", method: "GET", path: v3 + "/publicRooms", status: 401, codes: []string{"M_MISSING_TOKEN"}}, // the spec needs no token here, but Synapse's allow_public_rooms_without_auth defaults to false
			{name: "missing token on send", method: "PUT", path: v3 + "/rooms/{room}/send/m.room.message/t-anon", body: `{}`, status: 401, codes: []string{"M_MISSING_TOKEN"}},

			// Non-members.
			{name: "non-member /messages", method: "GET", path: v3 + "/rooms/{room}/messages?dir=b", who: "eve", status: 403, codes: []string{"M_FORBIDDEN"}},
			{name: "non-member /state", method: "GET", path: v3 + "/rooms/{room}/state", who: "eve", status: 403, codes: []string{"M_FORBIDDEN"}},
			{name: "non-member /state/type", method: "GET", path: v3 + "/rooms/{room}/state/m.room.name", who: "eve", status: 403, codes: []string{"M_FORBIDDEN"}},
			{name: "non-member /event", method: "GET", path: v3 + "/rooms/{room}/event/{event}", who: "eve", status: 404, codes: []string{"M_NOT_FOUND"}},
			{name: "non-member /context", method: "GET", path: v3 + "/rooms/{room}/context/{event}", who: "eve", status: 403, codes: []string{"M_FORBIDDEN"}},
			{name: "non-member /members", method: "GET", path: v3 + "/rooms/{room}/members", who: "eve", status: 403, codes: []string{"M_FORBIDDEN"}},
			{name: "non-member /joined_members", method: "GET", path: v3 + "/rooms/{room}/joined_members", who: "eve", status: 403, codes: []string{"M_FORBIDDEN"}},
			{name: "non-member send", method: "PUT", path: v3 + "/rooms/{room}/send/m.room.message/t-eve", who: "eve", body: `{"msgtype":"m.text","body":"hi"}`, status: 403, codes: []string{"M_FORBIDDEN"}},
			{name: "non-member state", method: "PUT", path: v3 + "/rooms/{room}/state/m.room.topic", who: "eve", body: `{"topic":"mine"}`, status: 403, codes: []string{"M_FORBIDDEN"}},
			{name: "non-member joins invite-only room", method: "POST", path: v3 + "/rooms/{room}/join", who: "eve", body: `{}`, status: 403, codes: []string{"M_FORBIDDEN"}},

			// Power levels (state_default 50, bob has 0).
			{name: "member sets power levels", method: "PUT", path: v3 + "/rooms/{room}/state/m.room.power_levels", who: "bob",
				body: `{"users":{"@bob:e2e.test":100}}`, status: 403, codes: []string{"M_FORBIDDEN"}},
			{name: "member sets room name", method: "PUT", path: v3 + "/rooms/{room}/state/m.room.name", who: "bob", body: `{"name":"mine"}`, status: 403, codes: []string{"M_FORBIDDEN"}},
			{name: "member sets custom state", method: "PUT", path: v3 + "/rooms/{room}/state/org.example.custom/key", who: "bob", body: `{"a":1}`, status: 403, codes: []string{"M_FORBIDDEN"}},
			{name: "non-member invites", method: "POST", path: v3 + "/rooms/{room}/invite", who: "eve", body: `{"user_id":"@bob:e2e.test"}`, status: 403, codes: []string{"M_FORBIDDEN"}},
			{name: "invite without user_id", method: "POST", path: v3 + "/rooms/{room}/invite", who: "alice", body: `{}`, status: 400, codes: []string{"M_MISSING_PARAM", "M_BAD_JSON"}},
			{name: "set another user's displayname", method: "PUT", path: v3 + "/profile/{alice}/displayname", who: "bob", body: `{"displayname":"not alice"}`, status: 403, codes: []string{"M_FORBIDDEN"}},
			{name: "member kicks", method: "POST", path: v3 + "/rooms/{room}/kick", who: "bob", body: `{"user_id":"@alice:e2e.test"}`, status: 403, codes: []string{"M_FORBIDDEN"}},
			{name: "member bans", method: "POST", path: v3 + "/rooms/{room}/ban", who: "bob", body: `{"user_id":"@eve:e2e.test"}`, status: 403, codes: []string{"M_FORBIDDEN"}},

			// Routing.
			{name: "unknown endpoint", method: "GET", path: v3 + "/no/such/endpoint", who: "alice", status: 404, codes: []string{"M_UNRECOGNIZED"}},
			{name: "unknown endpoint without token", method: "POST", path: "/_matrix/client/v3/nonsense", status: 404, codes: []string{"M_UNRECOGNIZED"}},
			{name: "wrong method", method: "DELETE", path: v3 + "/createRoom", who: "alice", status: 405, codes: []string{"M_UNRECOGNIZED"}},
			{name: "wrong method on room path", method: "POST", path: v3 + "/rooms/{room}/messages", who: "alice", body: `{}`, status: 405, codes: []string{"M_UNRECOGNIZED"}},

			// Unknown and invalid rooms.
			{name: "send to unknown room", method: "PUT", path: v3 + "/rooms/" + escape(unknown) + "/send/m.room.message/t-unk", who: "alice", body: `{"msgtype":"m.text","body":"hi"}`, status: 403, codes: []string{"M_FORBIDDEN"}},
			{name: "messages of unknown room", method: "GET", path: v3 + "/rooms/" + escape(unknown) + "/messages?dir=b", who: "alice", status: 403, codes: []string{"M_FORBIDDEN"}},
			{name: "state of unknown room", method: "GET", path: v3 + "/rooms/" + escape(unknown) + "/state", who: "alice", status: 403, codes: []string{"M_FORBIDDEN"}},
			{name: "join unknown room", method: "POST", path: v3 + "/join/" + escape(unknown), who: "alice", body: `{}`, status: 404, codes: []string{"M_NOT_FOUND"}},
			{name: "send to invalid room id", method: "PUT", path: v3 + "/rooms/not-a-room-id/send/m.room.message/t-inv", who: "alice", body: `{}`, status: 400, codes: []string{"M_INVALID_PARAM"}},
			{name: "messages of invalid room id", method: "GET", path: v3 + "/rooms/not-a-room-id/messages?dir=b", who: "alice", status: 400, codes: []string{"M_INVALID_PARAM"}},
			{name: "join invalid room id", method: "POST", path: v3 + "/join/not-a-room-id", who: "alice", body: `{}`, status: 400, codes: []string{"M_INVALID_PARAM"}},

			// Query parameters.
			{name: "invalid dir", method: "GET", path: v3 + "/rooms/{room}/messages?dir=x", who: "alice", status: 400, codes: []string{"M_INVALID_PARAM"}},
			{name: "garbage from token", method: "GET", path: v3 + "/rooms/{room}/messages?dir=b&from=garbage", who: "alice", status: 400, codes: []string{"M_INVALID_PARAM"}},
			{name: "unsupported room version", method: "POST", path: v3 + "/createRoom", who: "alice", body: `{"room_version":"999"}`, status: 400, codes: []string{"M_UNSUPPORTED_ROOM_VERSION"}},

			// Registration and login.
			{name: "register taken username", method: "POST", path: v3 + "/register", body: `{"username":"alice","password":"whatever-pw","auth":{"type":"m.login.dummy"}}`, status: 400, codes: []string{"M_USER_IN_USE"}},
			{name: "register invalid username", method: "POST", path: v3 + "/register", body: `{"username":"not valid!","password":"whatever-pw","auth":{"type":"m.login.dummy"}}`, status: 400, codes: []string{"M_INVALID_USERNAME"}},
			{name: "username availability of a taken name", method: "GET", path: v3 + "/register/available?username=alice", status: 400, codes: []string{"M_USER_IN_USE"}},
			{name: "guest registration (guests disabled)", method: "POST", path: v3 + "/register?kind=guest", body: `{}`, status: 403, codes: []string{"M_GUEST_ACCESS_FORBIDDEN", "M_FORBIDDEN"}},
			{name: "login wrong password", method: "POST", path: v3 + "/login", body: `{"type":"m.login.password","identifier":{"type":"m.id.user","user":"alice"},"password":"wrong"}`, status: 403, codes: []string{"M_FORBIDDEN"}},
			{name: "login unknown user", method: "POST", path: v3 + "/login", body: `{"type":"m.login.password","identifier":{"type":"m.id.user","user":"nobody"},"password":"wrong"}`, status: 403, codes: []string{"M_FORBIDDEN"}},
			{name: "login unknown type", method: "POST", path: v3 + "/login", body: `{"type":"m.login.bogus","identifier":{"type":"m.id.user","user":"alice"}}`, status: 400, codes: []string{"M_UNKNOWN"}},
			{name: "register while registration is disabled", closed: true, method: "POST", path: v3 + "/register", body: `{"username":"newbie","password":"whatever-pw","auth":{"type":"m.login.dummy"}}`, status: 403, codes: []string{"M_FORBIDDEN"}},

			// Shared-secret admin registration.
			{name: "admin register with a wrong MAC", method: "POST", path: "/_synapse/admin/v1/register", status: 403, codes: []string{"M_FORBIDDEN"},
				bodyFn: func(t *testing.T, ctx context.Context, s *server) string {
					return adminRegisterBody(t, ctx, s, "mallory", "pw-mallory", "not the secret")
				}},
			{name: "admin register with the right MAC", closed: true, method: "POST", path: "/_synapse/admin/v1/register", status: 200,
				bodyFn: func(t *testing.T, ctx context.Context, s *server) string {
					return adminRegisterBody(t, ctx, s, "admin-made", "pw-admin-made", sharedSecret)
				}},
		}

		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				target := srv
				if tc.closed {
					target = closed
				}
				body := tc.body
				if tc.bodyFn != nil {
					body = tc.bodyFn(t, ctx, target)
				}
				var b []byte
				if body != "" {
					b = []byte(body)
				}
				r := target.do(t, ctx, tc.method, repl.Replace(tc.path), tokens[tc.who], b)
				if len(tc.codes) > 0 {
					wantRawError(t, r, tc.status, tc.codes...)
					return
				}
				if r.status != tc.status {
					t.Fatalf("status %d, want %d; body %s", r.status, tc.status, truncate(r.body))
				}
				r.object(t)
			})
		}

		// The account the shared secret created can log in on the closed server.
		if _, err := closed.login(t, ctx, "admin-made", "pw-admin-made"); err != nil {
			t.Fatalf("login as the shared-secret user: %v", err)
		}
	})
}

// escape escapes one path segment.
func escape(s string) string { return url.PathEscape(s) }

// adminRegisterBody fetches a nonce and returns a shared-secret
// registration body whose MAC is computed with secret, as Synapse's
// register_new_matrix_user does: HMAC-SHA1 over
// nonce NUL user NUL password NUL "notadmin".
func adminRegisterBody(t *testing.T, ctx context.Context, s *server, user, pw, secret string) string {
	t.Helper()
	r := s.do(t, ctx, http.MethodGet, "/_synapse/admin/v1/register", "", nil)
	if r.status != 200 {
		t.Fatalf("GET nonce: %d %s", r.status, truncate(r.body))
	}
	nonce, _ := r.object(t)["nonce"].(string)
	if nonce == "" {
		t.Fatalf("no nonce in %s", r.body)
	}
	mac := hmac.New(sha1.New, []byte(secret))
	mac.Write([]byte(nonce + "\x00" + user + "\x00" + pw + "\x00notadmin"))
	b, err := json.Marshal(map[string]any{
		"nonce": nonce, "username": user, "password": pw, "admin": false, "mac": hex.EncodeToString(mac.Sum(nil)),
	})
	if err != nil {
		t.Fatalf("encode: %v", err)
	}
	return string(b)
}
