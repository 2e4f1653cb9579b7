package e2e_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// The smaller endpoints of issue 14 (part 6, first half): registration
// tokens, the password policy, timestamp_to_event, knocking and
// restricted joins, and the /account/3pid endpoints. One deployment per
// engine serves every subtest; its registration needs a token and its
// passwords a policy, so every user is registered with a token made by
// an admin (shared-secret registration is exempt from both, as in
// Synapse).

// smallDeployments: the monoliths and the fleet through its router, which
// sends the token admin API and /account/3pid/* to main, /password_policy
// and the token validity check to the registration pool, knocks by room
// and timestamp_to_event to the client readers.
var smallDeployments = []string{engineSQLite, enginePostgres, engineFleetRouter}

func smallOptions() []configOption {
	return []configOption{
		withKey("registration_requires_token", true),
		withKey("password_config", map[string]any{"policy": map[string]any{
			"enabled": true, "minimum_length": 12, "require_symbol": true, "require_lowercase": true,
		}}),
		withKey("rc_registration_token_validity", fastLimit()),
	}
}

// mxRaw makes a request mautrix has no call for with its MakeFullRequest.
func mxRaw(ctx context.Context, c *mautrix.Client, method string, path mautrix.PrefixableURLPath, query map[string]string, body, out any) error {
	_, err := c.MakeFullRequest(ctx, mautrix.FullRequest{Method: method, URL: c.BuildURLWithQuery(path, query),
		RequestJSON: body, ResponseJSON: out, MaxAttempts: 1})
	return err
}

type regToken struct {
	Token       string `json:"token"`
	UsesAllowed *int   `json:"uses_allowed"`
	Pending     int    `json:"pending"`
	Completed   int    `json:"completed"`
	ExpiryTime  *int64 `json:"expiry_time"`
}

func newRegToken(t testing.TB, ctx context.Context, admin *mautrix.Client, body map[string]any) regToken {
	t.Helper()
	var tok regToken
	if err := mxRaw(ctx, admin, http.MethodPost, mautrix.SynapseAdminURLPath{"v1", "registration_tokens", "new"}, nil, body, &tok); err != nil {
		t.Fatalf("create registration token %v: %v", body, err)
	}
	return tok
}

func getRegToken(t testing.TB, ctx context.Context, admin *mautrix.Client, token string) regToken {
	t.Helper()
	var tok regToken
	if err := mxRaw(ctx, admin, http.MethodGet, mautrix.SynapseAdminURLPath{"v1", "registration_tokens", token}, nil, nil, &tok); err != nil {
		t.Fatalf("get registration token %s: %v", token, err)
	}
	return tok
}

// registerWithToken registers local (password: password(local)) through
// the flows a token-requiring server offers: the token stage, then dummy.
func registerWithToken(t testing.TB, ctx context.Context, srv *server, local, pw, token string) (*mautrix.Client, error) {
	t.Helper()
	c := srv.client(t, "", "")
	req := &mautrix.ReqRegister[any]{Username: local, Password: pw}
	_, uia, err := c.Register(ctx, req)
	if uia == nil {
		return nil, err
	}
	want := []mautrix.AuthType{"m.login.registration_token", mautrix.AuthTypeDummy}
	if len(uia.Flows) != 1 || !slices.Equal(uia.Flows[0].Stages, want) {
		t.Fatalf("registration flows %+v, want one flow %v", uia.Flows, want)
	}
	req.Auth = map[string]any{"type": "m.login.registration_token", "token": token, "session": uia.Session}
	if _, next, err := c.Register(ctx, req); next == nil {
		return nil, err
	} else if !slices.Contains(next.Completed, "m.login.registration_token") {
		t.Fatalf("token stage: completed %v", next.Completed)
	}
	req.Auth = map[string]any{"type": mautrix.AuthTypeDummy, "session": uia.Session}
	resp, _, err := c.Register(ctx, req)
	if err != nil {
		return nil, err
	}
	c.SetCredentials(resp.UserID, resp.AccessToken)
	c.DeviceID = resp.DeviceID
	return c, nil
}

// tokenUser registers local with a fresh one-use token.
func tokenUser(t testing.TB, ctx context.Context, srv *server, admin *mautrix.Client, local string) *mautrix.Client {
	t.Helper()
	tok := newRegToken(t, ctx, admin, map[string]any{"uses_allowed": 1})
	c, err := registerWithToken(t, ctx, srv, local, password(local), tok.Token)
	if err != nil {
		t.Fatalf("register %s with a token: %v", local, err)
	}
	return c
}

func TestSmallEndpoints(t *testing.T) {
	runDeployments(t, smallDeployments, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		admin := srv.registerAdmin(t, ctx, "tokadmin")
		t.Run("registration_tokens", func(t *testing.T) { testRegistrationTokens(t, ctx, srv, admin) })
		t.Run("password_policy", func(t *testing.T) { testPasswordPolicy(t, ctx, srv, admin) })
		alice := tokenUser(t, ctx, srv, admin, "alice")
		bob := tokenUser(t, ctx, srv, admin, "bob")
		carol := tokenUser(t, ctx, srv, admin, "carol")
		t.Run("timestamp_to_event", func(t *testing.T) { testTimestampToEvent(t, ctx, alice, bob) })
		t.Run("knock", func(t *testing.T) { testKnock(t, ctx, alice, bob, carol) })
		t.Run("threepid", func(t *testing.T) { testThreepid(t, ctx, srv, carol) })
	}, smallOptions()...)
}

func testRegistrationTokens(t *testing.T, ctx context.Context, srv *server, admin *mautrix.Client) {
	anon := srv.client(t, "", "")
	validity := func(token string) bool {
		t.Helper()
		var out struct {
			Valid bool `json:"valid"`
		}
		if err := mxRaw(ctx, anon, http.MethodGet, mautrix.ClientURLPath{"v1", "register", "m.login.registration_token", "validity"},
			map[string]string{"token": token}, nil, &out); err != nil {
			t.Fatalf("validity of %q: %v", token, err)
		}
		return out.Valid
	}
	tok := newRegToken(t, ctx, admin, map[string]any{"uses_allowed": 2})
	if len(tok.Token) != 16 || tok.UsesAllowed == nil || *tok.UsesAllowed != 2 || tok.Pending != 0 || tok.Completed != 0 {
		t.Fatalf("new token %+v", tok)
	}
	if !validity(tok.Token) || validity("nosuchtoken") {
		t.Fatal("validity: a new token invalid, or an unknown one valid")
	}
	for _, u := range []string{"tok1", "tok2"} {
		if _, err := registerWithToken(t, ctx, srv, u, password(u), tok.Token); err != nil {
			t.Fatalf("register %s: %v", u, err)
		}
	}
	if got := getRegToken(t, ctx, admin, tok.Token); got.Completed != 2 || got.Pending != 0 {
		t.Fatalf("token after two registrations: %+v", got)
	}
	if validity(tok.Token) {
		t.Fatal("a used-up token is still valid")
	}
	_, err := registerWithToken(t, ctx, srv, "tok3", password("tok3"), tok.Token)
	wantMatrixError(t, err, http.StatusUnauthorized, "M_UNAUTHORIZED")
	_, err = registerWithToken(t, ctx, srv, "tok3", password("tok3"), "unknown-token")
	wantMatrixError(t, err, http.StatusUnauthorized, "M_UNAUTHORIZED")
	// Without the token stage there is no registering.
	c := srv.client(t, "", "")
	_, err = c.RegisterDummy(ctx, &mautrix.ReqRegister[any]{Username: "tok4", Password: password("tok4")})
	if err == nil {
		t.Fatal("dummy-only registration succeeded on a server that requires tokens")
	}

	// Registrations racing for a token's last uses, spread by the router
	// over the generic workers on the fleet: never more than it allows.
	race := newRegToken(t, ctx, admin, map[string]any{"uses_allowed": 2})
	var wg sync.WaitGroup
	errs := make([]error, 6)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			u := "racer" + strconv.Itoa(i)
			_, errs[i] = registerWithToken(t, ctx, srv, u, password(u), race.Token)
		}()
	}
	wg.Wait()
	ok := 0
	for _, err := range errs {
		if err == nil {
			ok++
		} else {
			wantMatrixError(t, err, http.StatusUnauthorized, "M_UNAUTHORIZED")
		}
	}
	if got := getRegToken(t, ctx, admin, race.Token); ok != 2 || got.Completed != 2 || got.Pending != 0 {
		t.Fatalf("%d of 6 racing registrations succeeded with a 2-use token; token %+v", ok, got)
	}

	// The admin API: list with the valid filter, update, delete.
	var list struct {
		Tokens []regToken `json:"registration_tokens"`
	}
	if err := mxRaw(ctx, admin, http.MethodGet, mautrix.SynapseAdminURLPath{"v1", "registration_tokens"},
		map[string]string{"valid": "false"}, nil, &list); err != nil {
		t.Fatal(err)
	}
	var invalid []string
	for _, x := range list.Tokens {
		invalid = append(invalid, x.Token)
	}
	if !slices.Contains(invalid, tok.Token) || !slices.Contains(invalid, race.Token) {
		t.Fatalf("valid=false lists %v, want the used-up tokens", invalid)
	}
	var updated regToken
	if err := mxRaw(ctx, admin, http.MethodPut, mautrix.SynapseAdminURLPath{"v1", "registration_tokens", tok.Token}, nil,
		map[string]any{"uses_allowed": 3}, &updated); err != nil || updated.UsesAllowed == nil || *updated.UsesAllowed != 3 {
		t.Fatalf("update: %+v %v", updated, err)
	}
	if !validity(tok.Token) {
		t.Fatal("token with a use left after update is not valid")
	}
	named := newRegToken(t, ctx, admin, map[string]any{"token": "named.Token_1", "expiry_time": time.Now().Add(time.Hour).UnixMilli()})
	if named.Token != "named.Token_1" || named.ExpiryTime == nil {
		t.Fatalf("named token %+v", named)
	}
	if err := mxRaw(ctx, admin, http.MethodDelete, mautrix.SynapseAdminURLPath{"v1", "registration_tokens", named.Token}, nil, nil, nil); err != nil {
		t.Fatal(err)
	}

	// Bad input.
	err = mxRaw(ctx, anon, http.MethodGet, mautrix.ClientURLPath{"v1", "register", "m.login.registration_token", "validity"}, nil, nil, nil)
	wantMatrixError(t, err, http.StatusBadRequest, "M_MISSING_PARAM")
	err = mxRaw(ctx, admin, http.MethodGet, mautrix.SynapseAdminURLPath{"v1", "registration_tokens", named.Token}, nil, nil, nil)
	wantMatrixError(t, err, http.StatusNotFound, "M_NOT_FOUND")
	err = mxRaw(ctx, admin, http.MethodDelete, mautrix.SynapseAdminURLPath{"v1", "registration_tokens", named.Token}, nil, nil, nil)
	wantMatrixError(t, err, http.StatusNotFound, "M_NOT_FOUND")
	for _, body := range []map[string]any{{"token": "no spaces"}, {"uses_allowed": -1}, {"length": 65},
		{"expiry_time": time.Now().Add(-time.Hour).UnixMilli()}, {"token": tok.Token}} {
		err = mxRaw(ctx, admin, http.MethodPost, mautrix.SynapseAdminURLPath{"v1", "registration_tokens", "new"}, nil, body, nil)
		wantMatrixError(t, err, http.StatusBadRequest, "M_INVALID_PARAM")
	}
	err = mxRaw(ctx, admin, http.MethodGet, mautrix.SynapseAdminURLPath{"v1", "registration_tokens"}, map[string]string{"valid": "yes"}, nil, nil)
	wantMatrixError(t, err, http.StatusBadRequest, "M_INVALID_PARAM")
	user := tokenUser(t, ctx, srv, admin, "notadmin")
	err = mxRaw(ctx, user, http.MethodGet, mautrix.SynapseAdminURLPath{"v1", "registration_tokens"}, nil, nil, nil)
	wantMatrixError(t, err, http.StatusForbidden, "M_FORBIDDEN")
	err = mxRaw(ctx, user, http.MethodPost, mautrix.SynapseAdminURLPath{"v1", "registration_tokens", "new"}, nil, map[string]any{}, nil)
	wantMatrixError(t, err, http.StatusForbidden, "M_FORBIDDEN")
}

func testPasswordPolicy(t *testing.T, ctx context.Context, srv *server, admin *mautrix.Client) {
	anon := srv.client(t, "", "")
	want := map[string]any{"m.minimum_length": float64(12), "m.require_symbol": true, "m.require_lowercase": true}
	for _, path := range []mautrix.ClientURLPath{{"v3", "password_policy"}, {"unstable", "password_policy"}} {
		var got map[string]any
		if err := mxRaw(ctx, anon, http.MethodGet, path, nil, nil, &got); err != nil {
			t.Fatalf("GET %v: %v", path, err)
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("GET %v = %v, want %v", path, got, want)
		}
	}
	tok := newRegToken(t, ctx, admin, map[string]any{})
	for _, tt := range []struct{ pw, code string }{
		{"short-pw", "M_PASSWORD_TOO_SHORT"},
		{"lowercaseonlylong", "M_PASSWORD_NO_SYMBOL"},
		{"UPPERCASE-ONLY-LONG", "M_PASSWORD_NO_LOWERCASE"},
	} {
		_, err := registerWithToken(t, ctx, srv, "weak", tt.pw, tok.Token)
		wantMatrixError(t, err, http.StatusBadRequest, tt.code)
	}
	// A refused password takes no use of the token.
	if got := getRegToken(t, ctx, admin, tok.Token); got.Pending != 0 || got.Completed != 0 {
		t.Fatalf("token after refused passwords %+v", got)
	}
	c, err := registerWithToken(t, ctx, srv, "strong", "a-strong-password", tok.Token)
	if err != nil {
		t.Fatalf("register with a good password: %v", err)
	}
	change := func(newPW string) error {
		body := map[string]any{"new_password": newPW, "logout_devices": false, "auth": map[string]any{
			"type": "m.login.password", "password": "a-strong-password",
			"identifier": map[string]any{"type": "m.id.user", "user": "strong"}}}
		return mxRaw(ctx, c, http.MethodPost, mautrix.ClientURLPath{"v3", "account", "password"}, nil, body, nil)
	}
	wantMatrixError(t, change("Short-1"), http.StatusBadRequest, "M_PASSWORD_TOO_SHORT")
	wantMatrixError(t, change("nosymbolsinthisone"), http.StatusBadRequest, "M_PASSWORD_NO_SYMBOL")
	if err := change("another-good-password"); err != nil {
		t.Fatalf("change to a good password: %v", err)
	}
	srv.mustLogin(t, ctx, "strong", "another-good-password")
}

// timeline returns the room's events in stream order, as c sees them.
func timeline(t testing.TB, ctx context.Context, c *mautrix.Client, roomID id.RoomID) []*event.Event {
	t.Helper()
	resp, err := c.Messages(ctx, roomID, "", "", mautrix.DirectionForward, nil, 1000)
	if err != nil {
		t.Fatalf("messages of %s: %v", roomID, err)
	}
	return resp.Chunk
}

func testTimestampToEvent(t *testing.T, ctx context.Context, alice, bob *mautrix.Client) {
	room := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "private_chat"})
	for i := range 3 {
		if _, err := alice.SendText(ctx, room, "m"+strconv.Itoa(i)); err != nil {
			t.Fatal(err)
		}
	}
	evs := timeline(t, ctx, alice, room)
	last := evs[len(evs)-1]
	// The oracle: the first event in stream order at or after ts, the
	// last at or before it (one room's timestamps do not go backwards).
	want := func(ts int64, forwards bool) id.EventID {
		if forwards {
			for _, e := range evs {
				if e.Timestamp >= ts {
					return e.ID
				}
			}
		} else {
			for i := len(evs) - 1; i >= 0; i-- {
				if evs[i].Timestamp <= ts {
					return evs[i].ID
				}
			}
		}
		return ""
	}
	for _, e := range evs {
		for _, dir := range []mautrix.Direction{mautrix.DirectionForward, mautrix.DirectionBackward} {
			resp, err := alice.TimestampToEvent(ctx, room, time.UnixMilli(e.Timestamp), dir)
			if err != nil {
				t.Fatalf("timestamp_to_event %d %c: %v", e.Timestamp, dir, err)
			}
			if w := want(e.Timestamp, dir == mautrix.DirectionForward); resp.EventID != w || resp.Timestamp.UnixMilli() != e.Timestamp {
				t.Fatalf("timestamp_to_event %d %c = %s at %d, want %s", e.Timestamp, dir, resp.EventID, resp.Timestamp.UnixMilli(), w)
			}
		}
	}
	_, err := alice.TimestampToEvent(ctx, room, time.UnixMilli(last.Timestamp+1), mautrix.DirectionForward)
	wantMatrixError(t, err, http.StatusNotFound, "M_NOT_FOUND")
	_, err = alice.TimestampToEvent(ctx, room, time.UnixMilli(evs[0].Timestamp-1), mautrix.DirectionBackward)
	wantMatrixError(t, err, http.StatusNotFound, "M_NOT_FOUND")
	// Bob is not in the room: he may not ask.
	_, err = bob.TimestampToEvent(ctx, room, time.UnixMilli(last.Timestamp), mautrix.DirectionBackward)
	wantMatrixError(t, err, http.StatusForbidden, "M_FORBIDDEN")
	// In a room whose history is visible to members only since they
	// joined, bob never finds a message from before he was invited: going
	// forward from it he finds his own invite.
	hidden := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "private_chat", InitialState: []*event.Event{{
		Type: event.StateHistoryVisibility, StateKey: new(string), Content: event.Content{Raw: map[string]any{"history_visibility": "joined"}}}}})
	secret, err := alice.SendText(ctx, hidden, "before bob")
	if err != nil {
		t.Fatal(err)
	}
	invite(t, ctx, alice, hidden, bob.UserID)
	join(t, ctx, bob, hidden.String())
	all := timeline(t, ctx, alice, hidden)
	bobsInvite := all[len(all)-2]
	if bobsInvite.Type != event.StateMember || bobsInvite.GetStateKey() != bob.UserID.String() {
		t.Fatalf("second to last event %s %s, want bob's invite", bobsInvite.Type, bobsInvite.ID)
	}
	var secretTS int64
	for _, e := range all {
		if e.ID == secret.EventID {
			secretTS = e.Timestamp
		}
	}
	if resp, err := bob.TimestampToEvent(ctx, hidden, time.UnixMilli(secretTS), mautrix.DirectionBackward); err == nil {
		if resp.EventID == secret.EventID {
			t.Fatal("bob found a message from before he was invited (backwards)")
		}
	} else {
		wantMatrixError(t, err, http.StatusNotFound, "M_NOT_FOUND")
	}
	resp, err := bob.TimestampToEvent(ctx, hidden, time.UnixMilli(secretTS), mautrix.DirectionForward)
	if err != nil || resp.EventID != bobsInvite.ID {
		t.Fatalf("bob going forward from a hidden message: %+v %v, want his invite %s", resp, err, bobsInvite.ID)
	}
	// Bad input.
	for _, q := range []map[string]string{{"ts": "abc", "dir": "f"}, {"ts": "1", "dir": "x"}, {"ts": "1.5", "dir": "b"}} {
		err = mxRaw(ctx, alice, http.MethodGet, mautrix.ClientURLPath{"v1", "rooms", room, "timestamp_to_event"}, q, nil, nil)
		wantMatrixError(t, err, http.StatusBadRequest, "M_INVALID_PARAM")
	}
	err = mxRaw(ctx, alice, http.MethodGet, mautrix.ClientURLPath{"v1", "rooms", room, "timestamp_to_event"}, map[string]string{"dir": "f"}, nil, nil)
	wantMatrixError(t, err, http.StatusBadRequest, "M_MISSING_PARAM")
	err = mxRaw(ctx, alice, http.MethodGet, mautrix.ClientURLPath{"v1", "rooms", "not-a-room", "timestamp_to_event"}, map[string]string{"ts": "1", "dir": "f"}, nil, nil)
	wantMatrixError(t, err, http.StatusBadRequest, "M_INVALID_PARAM")
}

func memberOf(t testing.TB, ctx context.Context, c *mautrix.Client, room id.RoomID, user id.UserID) map[string]any {
	t.Helper()
	var content map[string]any
	if err := c.StateEvent(ctx, room, event.StateMember, user.String(), &content); err != nil {
		t.Fatalf("member event of %s in %s: %v", user, room, err)
	}
	return content
}

func ptrInt(i int) *int { return &i }

func testKnock(t *testing.T, ctx context.Context, alice, bob, carol *mautrix.Client) {
	joinRules := func(rule string, allow ...id.RoomID) []*event.Event {
		c := map[string]any{"join_rule": rule}
		if len(allow) > 0 {
			var a []any
			for _, r := range allow {
				a = append(a, map[string]any{"type": "m.room_membership", "room_id": r.String()})
			}
			c["allow"] = a
		}
		return []*event.Event{{Type: event.StateJoinRules, StateKey: new(string), Content: event.Content{Raw: c}}}
	}
	// A knock room: bob knocks (by alias), alice lets him in.
	knockRoom := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "private_chat", RoomVersion: "10",
		RoomAliasName: "knockme", InitialState: joinRules("knock")})
	if _, err := bob.KnockRoom(ctx, "#knockme:"+serverName, &mautrix.ReqKnockRoom{Reason: "let me in"}); err != nil {
		t.Fatalf("knock: %v", err)
	}
	if m := memberOf(t, ctx, alice, knockRoom, bob.UserID); m["membership"] != "knock" || m["reason"] != "let me in" {
		t.Fatalf("bob's membership after knocking: %v", m)
	}
	_, err := bob.JoinRoomByID(ctx, knockRoom)
	wantMatrixError(t, err, http.StatusForbidden, "M_FORBIDDEN")
	invite(t, ctx, alice, knockRoom, bob.UserID)
	join(t, ctx, bob, knockRoom.String())
	_, err = bob.KnockRoom(ctx, knockRoom.String(), &mautrix.ReqKnockRoom{})
	wantMatrixError(t, err, http.StatusForbidden, "M_FORBIDDEN") // already joined

	// A space, and a knock_restricted room that lets its members in.
	space := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", RoomVersion: "10",
		CreationContent: map[string]any{"type": "m.space"}})
	kr := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "private_chat", RoomVersion: "10",
		InitialState: joinRules("knock_restricted", space)})
	_, err = carol.JoinRoomByID(ctx, kr)
	wantMatrixError(t, err, http.StatusForbidden, "M_FORBIDDEN")
	if _, err := carol.KnockRoom(ctx, kr.String(), &mautrix.ReqKnockRoom{}); err != nil {
		t.Fatalf("knock on a knock_restricted room: %v", err)
	}
	join(t, ctx, carol, space.String())
	join(t, ctx, carol, kr.String())
	if m := memberOf(t, ctx, carol, kr, carol.UserID); m["membership"] != "join" || m["join_authorised_via_users_server"] != alice.UserID.String() {
		t.Fatalf("carol's join of the knock_restricted room: %v", m)
	}
	// restricted (v8+): members of the space join, nobody knocks.
	restricted := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "private_chat", RoomVersion: "9",
		InitialState: joinRules("restricted", space)})
	_, err = bob.JoinRoomByID(ctx, restricted)
	wantMatrixError(t, err, http.StatusForbidden, "M_FORBIDDEN")
	_, err = carol.KnockRoom(ctx, restricted.String(), &mautrix.ReqKnockRoom{})
	wantMatrixError(t, err, http.StatusForbidden, "M_FORBIDDEN")
	join(t, ctx, carol, restricted.String())
	// Nobody here may invite, so nobody can vouch for a join.
	noVoucher := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "private_chat", RoomVersion: "10",
		InitialState: joinRules("restricted", space), PowerLevelOverride: &event.PowerLevelsEventContent{
			Users: map[id.UserID]int{alice.UserID: 100}, InvitePtr: ptrInt(101)}})
	_, err = carol.JoinRoomByID(ctx, noVoucher)
	wantMatrixError(t, err, http.StatusBadRequest, "M_UNABLE_TO_GRANT_JOIN")

	// Bad input: a public room is not knocked on, an unknown alias or
	// room is 404, a malformed id 400.
	public := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", RoomVersion: "10"})
	_, err = bob.KnockRoom(ctx, public.String(), &mautrix.ReqKnockRoom{})
	wantMatrixError(t, err, http.StatusForbidden, "M_FORBIDDEN")
	_, err = bob.KnockRoom(ctx, "#nosuchalias:"+serverName, &mautrix.ReqKnockRoom{})
	wantMatrixError(t, err, http.StatusNotFound, "M_NOT_FOUND")
	_, err = bob.KnockRoom(ctx, "!nosuchroom:"+serverName, &mautrix.ReqKnockRoom{})
	wantMatrixError(t, err, http.StatusNotFound, "M_NOT_FOUND")
	_, err = bob.KnockRoom(ctx, "not-a-room", &mautrix.ReqKnockRoom{})
	wantMatrixError(t, err, http.StatusBadRequest, "M_INVALID_PARAM")
}

func testThreepid(t *testing.T, ctx context.Context, srv *server, carol *mautrix.Client) {
	var list struct {
		Threepids []any `json:"threepids"`
	}
	if err := mxRaw(ctx, carol, http.MethodGet, mautrix.ClientURLPath{"v3", "account", "3pid"}, nil, nil, &list); err != nil || list.Threepids == nil || len(list.Threepids) != 0 {
		t.Fatalf("GET /account/3pid: %+v %v, want an empty list", list, err)
	}
	p := func(segments ...any) mautrix.ClientURLPath {
		return append(mautrix.ClientURLPath{"v3", "account", "3pid"}, segments...)
	}
	post := func(path mautrix.ClientURLPath, body any, out any) error {
		return mxRaw(ctx, carol, http.MethodPost, path, nil, body, out)
	}
	wantMatrixError(t, post(p("delete"), map[string]any{"medium": "email", "address": "carol@example.org"}, nil),
		http.StatusBadRequest, "M_THREEPID_NOT_FOUND")
	wantMatrixError(t, post(p("delete"), map[string]any{"medium": "email"}, nil), http.StatusBadRequest, "M_MISSING_PARAM")
	wantMatrixError(t, post(p("delete"), map[string]any{"medium": "pigeon", "address": "x"}, nil), http.StatusBadRequest, "M_INVALID_PARAM")
	var unbind map[string]string
	if err := post(p("unbind"), map[string]any{"medium": "email", "address": "carol@example.org"}, &unbind); err != nil || unbind["id_server_unbind_result"] != "no-support" {
		t.Fatalf("unbind: %v %v", unbind, err)
	}
	wantMatrixError(t, post(p("bind"), map[string]any{"client_secret": "abc", "id_server": "id.example.org",
		"id_access_token": "t", "sid": "s"}, nil), http.StatusBadRequest, "M_SERVER_NOT_TRUSTED")
	wantMatrixError(t, post(p("bind"), map[string]any{"client_secret": "abc"}, nil), http.StatusBadRequest, "M_MISSING_PARAM")
	// add: user-interactive auth first, then no validated session.
	err := post(p("add"), map[string]any{"client_secret": "abc", "sid": "s"}, nil)
	var he mautrix.HTTPError
	if !errors.As(err, &he) || he.Response == nil || he.Response.StatusCode != http.StatusUnauthorized {
		t.Fatalf("add without auth: %v, want 401 with flows", err)
	}
	wantMatrixError(t, post(p("add"), map[string]any{"client_secret": "abc", "sid": "s", "auth": map[string]any{
		"type": "m.login.password", "password": password("carol"),
		"identifier": map[string]any{"type": "m.id.user", "user": "carol"}}}, nil), http.StatusBadRequest, "M_THREEPID_AUTH_FAILED")
	wantMatrixError(t, post(p("add"), map[string]any{"client_secret": "bad secret!", "sid": "s"}, nil), http.StatusBadRequest, "M_INVALID_PARAM")
	// The deprecated POST /account/3pid: the same, without user-interactive auth.
	wantMatrixError(t, post(p(), map[string]any{"three_pid_creds": map[string]any{"client_secret": "abc", "sid": "s"}}, nil),
		http.StatusBadRequest, "M_THREEPID_AUTH_FAILED")
	wantMatrixError(t, post(p(), map[string]any{}, nil), http.StatusBadRequest, "M_MISSING_PARAM")
	// requestToken: checked, then refused (no email or SMS is sent).
	anon := srv.client(t, "", "")
	req := func(kind string, body map[string]any) error {
		return mxRaw(ctx, anon, http.MethodPost, p(kind, "requestToken"), nil, body, nil)
	}
	wantMatrixError(t, req("email", map[string]any{"client_secret": "abc", "email": "carol@example.org", "send_attempt": 1}),
		http.StatusForbidden, "M_THREEPID_DENIED")
	wantMatrixError(t, req("msisdn", map[string]any{"client_secret": "abc", "country": "GB", "phone_number": "07700900000", "send_attempt": 1}),
		http.StatusForbidden, "M_THREEPID_DENIED")
	wantMatrixError(t, req("email", map[string]any{"client_secret": "abc", "email": "not an address", "send_attempt": 1}),
		http.StatusBadRequest, "M_INVALID_PARAM")
	wantMatrixError(t, req("email", map[string]any{"email": "carol@example.org", "send_attempt": 1}), http.StatusBadRequest, "M_MISSING_PARAM")
	wantMatrixError(t, req("msisdn", map[string]any{"client_secret": "abc", "country": "GB", "phone_number": "1", "send_attempt": "x"}),
		http.StatusBadRequest, "M_INVALID_PARAM")
}
