package e2e_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"strconv"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// withKey sets one top-level config key.
func withKey(key string, v any) configOption {
	return func(cfg map[string]any) { cfg[key] = v }
}

// slowLimit is a bucket of burst actions that does not refill within a test.
func slowLimit(burst int) map[string]any {
	return map[string]any{"per_second": 0.0001, "burst_count": burst}
}

// wantLimited checks a 429 M_LIMIT_EXCEEDED with a positive integer
// retry_after_ms and a Retry-After header.
func wantLimited(t testing.TB, what string, r response) {
	t.Helper()
	if r.status != http.StatusTooManyRequests {
		t.Fatalf("%s: %d %s, want 429 M_LIMIT_EXCEEDED", what, r.status, truncate(r.body))
	}
	m := wantRawError(t, r, http.StatusTooManyRequests, "M_LIMIT_EXCEEDED")
	if ms, ok := m["retry_after_ms"].(float64); !ok || ms <= 0 || ms != float64(int64(ms)) {
		t.Fatalf("%s: retry_after_ms = %v, want a positive integer", what, m["retry_after_ms"])
	}
	if ra, err := strconv.Atoi(r.header.Get("Retry-After")); err != nil || ra <= 0 {
		t.Fatalf("%s: Retry-After = %q, want a positive number of seconds", what, r.header.Get("Retry-After"))
	}
}

func wantOK(t testing.TB, what string, r response) {
	t.Helper()
	if r.status != http.StatusOK {
		t.Fatalf("%s: %d %s, want 200", what, r.status, truncate(r.body))
	}
}

func (s *server) joinRaw(t testing.TB, ctx context.Context, c *mautrix.Client, room id.RoomID) response {
	return s.doJSON(t, ctx, "POST", clientPath("join", room.String()), c.AccessToken, map[string]any{})
}

func (s *server) inviteRaw(t testing.TB, ctx context.Context, c *mautrix.Client, room id.RoomID, target id.UserID) response {
	return s.doJSON(t, ctx, "POST", clientPath("rooms", room.String(), "invite"), c.AccessToken, map[string]any{"user_id": target})
}

func (s *server) createRoomRaw(t testing.TB, ctx context.Context, c *mautrix.Client, body map[string]any) response {
	return s.doJSON(t, ctx, "POST", clientPath("createRoom"), c.AccessToken, body)
}

// TestRateLimitJoins: rc_joins.local limits one user's joins, a re-join
// while joined is not counted, and rc_joins_per_room limits joins to one
// room whoever makes them.
func TestRateLimitJoins(t *testing.T) {
	t.Parallel()
	runDeployments(t, monoliths, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		owner := srv.register(t, ctx, "owner")
		rooms := make([]id.RoomID, 3)
		for i := range rooms {
			rooms[i] = createRoom(t, ctx, owner, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		}
		joiner := srv.register(t, ctx, "joiner")
		wantOK(t, "first join", srv.joinRaw(t, ctx, joiner, rooms[0]))
		wantOK(t, "second join", srv.joinRaw(t, ctx, joiner, rooms[1]))
		wantOK(t, "re-join while joined", srv.joinRaw(t, ctx, joiner, rooms[0]))
		wantLimited(t, "third join by one user", srv.joinRaw(t, ctx, joiner, rooms[2]))

		busy := createRoom(t, ctx, owner, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		for i := range 3 {
			c := srv.register(t, ctx, "crowd"+itoa(i))
			wantOK(t, "join to the busy room", srv.joinRaw(t, ctx, c, busy))
		}
		late := srv.register(t, ctx, "late")
		wantLimited(t, "fourth join to one room", srv.joinRaw(t, ctx, late, busy))
		// The late user's own bucket is untouched by the refusal.
		wantOK(t, "the late user joins elsewhere", srv.joinRaw(t, ctx, late, rooms[2]))
	}, withKey("rc_joins", map[string]any{"local": slowLimit(2), "remote": fastLimit()}),
		withKey("rc_joins_per_room", slowLimit(3)))
}

// TestRateLimitInvites: rc_invites.per_room, per_user (the invited user)
// and per_issuer, and createRoom's invite list against per_room.
func TestRateLimitInvites(t *testing.T) {
	t.Parallel()
	runDeployments(t, monoliths, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		users := map[string]*mautrix.Client{}
		for _, name := range []string{"alice", "bob", "carol", "dan", "erin", "u1", "u2", "u3", "v", "w1", "w2", "x1", "x2", "x3"} {
			users[name] = srv.register(t, ctx, name)
		}
		uid := func(n string) id.UserID { return users[n].UserID }
		alice := users["alice"]

		// per_room (burst 2): the third invite into one room is refused.
		r1 := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "private_chat"})
		wantOK(t, "invite u1", srv.inviteRaw(t, ctx, alice, r1, uid("u1")))
		wantOK(t, "invite u2", srv.inviteRaw(t, ctx, alice, r1, uid("u2")))
		wantLimited(t, "third invite into one room", srv.inviteRaw(t, ctx, alice, r1, uid("u3")))

		// per_user (burst 2): v receives two invites, the third is refused
		// though each comes from a fresh issuer into a fresh room.
		for i, issuer := range []string{"bob", "carol", "dan"} {
			c := users[issuer]
			room := createRoom(t, ctx, c, &mautrix.ReqCreateRoom{Preset: "private_chat"})
			r := srv.inviteRaw(t, ctx, c, room, uid("v"))
			if i < 2 {
				wantOK(t, "invite v", r)
			} else {
				wantLimited(t, "third invite received by one user", r)
			}
		}

		// per_issuer (burst 3): alice has sent two invites (the refused one
		// took nothing); her third passes, her fourth is refused.
		r5 := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "private_chat"})
		wantOK(t, "alice's third invite", srv.inviteRaw(t, ctx, alice, r5, uid("w1")))
		r6 := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "private_chat"})
		wantLimited(t, "alice's fourth invite", srv.inviteRaw(t, ctx, alice, r6, uid("w2")))

		// createRoom's invite list counts against per_room as one batch.
		wantLimited(t, "createRoom inviting three", srv.createRoomRaw(t, ctx, users["erin"],
			map[string]any{"invite": []id.UserID{uid("x1"), uid("x2"), uid("x3")}}))
		wantOK(t, "createRoom inviting two", srv.createRoomRaw(t, ctx, users["erin"],
			map[string]any{"invite": []id.UserID{uid("x1"), uid("x2")}}))
	}, withKey("rc_invites", map[string]any{"per_room": slowLimit(2), "per_user": slowLimit(2), "per_issuer": slowLimit(3)}))
}

// TestRateLimitRoomCreation: rc_room_creation is per user.
func TestRateLimitRoomCreation(t *testing.T) {
	t.Parallel()
	runDeployments(t, monoliths, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		a := srv.register(t, ctx, "creator")
		wantOK(t, "first room", srv.createRoomRaw(t, ctx, a, map[string]any{}))
		wantOK(t, "second room", srv.createRoomRaw(t, ctx, a, map[string]any{}))
		wantLimited(t, "third room", srv.createRoomRaw(t, ctx, a, map[string]any{}))
		b := srv.register(t, ctx, "other")
		wantOK(t, "another user's room", srv.createRoomRaw(t, ctx, b, map[string]any{}))
	}, withKey("rc_room_creation", slowLimit(2)))
}

// TestRateLimitAdminRedaction: with rc_admin_redaction set, a server
// admin's redactions are limited by it (and not by rc_message, which
// exempts admins), through both the redact endpoint and a sent
// m.room.redaction; other users' redactions stay under rc_message.
func TestRateLimitAdminRedaction(t *testing.T) {
	t.Parallel()
	runDeployments(t, monoliths, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		admin := srv.registerAdmin(t, ctx, "root")
		room := createRoom(t, ctx, admin, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		var evs []id.EventID
		for i := range 4 {
			resp, err := admin.SendMessageEvent(ctx, room, event.EventMessage, map[string]any{"msgtype": "m.text", "body": "x" + itoa(i)})
			if err != nil {
				t.Fatalf("admin send %d: %v", i, err)
			}
			evs = append(evs, resp.EventID)
		}
		redact := func(c *mautrix.Client, room id.RoomID, ev id.EventID, txn string) response {
			return srv.doJSON(t, ctx, "PUT", clientPath("rooms", room.String(), "redact", ev.String(), txn), c.AccessToken, map[string]any{})
		}
		wantOK(t, "admin redaction 1", redact(admin, room, evs[0], "r1"))
		wantOK(t, "admin redaction 2 (sent as an event)", srv.doJSON(t, ctx, "PUT",
			clientPath("rooms", room.String(), "send", "m.room.redaction", "r2"), admin.AccessToken, map[string]any{"redacts": evs[1]}))
		wantLimited(t, "admin redaction 3", redact(admin, room, evs[2], "r3"))
		// Other events by the admin are not affected.
		if _, err := admin.SendMessageEvent(ctx, room, event.EventMessage, map[string]any{"msgtype": "m.text", "body": "still here"}); err != nil {
			t.Fatalf("admin message after refused redaction: %v", err)
		}

		user := srv.register(t, ctx, "plain")
		own := createRoom(t, ctx, user, &mautrix.ReqCreateRoom{Preset: "private_chat"})
		for i := range 3 {
			resp, err := user.SendMessageEvent(ctx, own, event.EventMessage, map[string]any{"msgtype": "m.text", "body": "y"})
			if err != nil {
				t.Fatalf("user send: %v", err)
			}
			wantOK(t, "user redaction", redact(user, own, resp.EventID, "u"+itoa(i)))
		}
	}, withKey("rc_admin_redaction", slowLimit(2)))
}

// TestRateLimitPresence: rc_presence.per_user limits PUT presence per user.
func TestRateLimitPresence(t *testing.T) {
	t.Parallel()
	runDeployments(t, monoliths, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		put := func(c *mautrix.Client, state string) response {
			return srv.doJSON(t, ctx, "PUT", clientPath("presence", c.UserID.String(), "status"), c.AccessToken,
				map[string]any{"presence": state})
		}
		a := srv.register(t, ctx, "pa")
		wantOK(t, "first presence", put(a, "online"))
		wantLimited(t, "second presence", put(a, "unavailable"))
		b := srv.register(t, ctx, "pb")
		wantOK(t, "another user's presence", put(b, "online"))
	}, withKey("rc_presence", map[string]any{"per_user": slowLimit(1)}))
}

// registerAdmin creates a server admin through shared-secret registration
// and returns a logged-in client.
func (s *server) registerAdmin(t testing.TB, ctx context.Context, localpart string) *mautrix.Client {
	t.Helper()
	r := s.do(t, ctx, http.MethodGet, "/_synapse/admin/v1/register", "", nil)
	if r.status != http.StatusOK {
		t.Fatalf("GET nonce: %d %s", r.status, truncate(r.body))
	}
	nonce, _ := r.object(t)["nonce"].(string)
	pw := password(localpart)
	mac := hmac.New(sha1.New, []byte(sharedSecret))
	mac.Write([]byte(nonce + "\x00" + localpart + "\x00" + pw + "\x00admin"))
	r = s.doJSON(t, ctx, http.MethodPost, "/_synapse/admin/v1/register", "", map[string]any{
		"nonce": nonce, "username": localpart, "password": pw, "admin": true, "mac": hex.EncodeToString(mac.Sum(nil)),
	})
	if r.status != http.StatusOK {
		t.Fatalf("admin register: %d %s", r.status, truncate(r.body))
	}
	var sess struct {
		UserID      id.UserID `json:"user_id"`
		AccessToken string    `json:"access_token"`
	}
	if err := json.Unmarshal(r.body, &sess); err != nil || sess.AccessToken == "" {
		t.Fatalf("admin register answer %s: %v", r.body, err)
	}
	return s.client(t, sess.UserID, sess.AccessToken)
}
