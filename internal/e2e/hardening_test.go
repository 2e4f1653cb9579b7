package e2e_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// monoliths are the deployments of tests whose behaviour is decided in one
// process (the fleet runs the same code for them).
var monoliths = []string{engineSQLite, enginePostgres}

// withFailedAttemptsLimit sets rc_login.failed_attempts.
func withFailedAttemptsLimit(perSecond, burst float64) configOption {
	return func(cfg map[string]any) {
		cfg["rc_login"].(map[string]any)["failed_attempts"] = map[string]any{"per_second": perSecond, "burst_count": burst}
	}
}

// stateEventID reads the id of a current state event as c sees it.
func stateEventID(t testing.TB, ctx context.Context, srv *server, c *mautrix.Client, roomID id.RoomID, typ, stateKey string) string {
	t.Helper()
	r := srv.do(t, ctx, "GET", clientPath("rooms", roomID.String(), "state", typ, stateKey)+"?format=event", c.AccessToken, nil)
	if r.status != 200 {
		t.Fatalf("GET state %s/%s: %d %s", typ, stateKey, r.status, truncate(r.body))
	}
	evID, _ := r.object(t)["event_id"].(string)
	if evID == "" {
		t.Fatalf("GET state %s/%s?format=event has no event_id: %s", typ, stateKey, truncate(r.body))
	}
	return evID
}

// stateContent reads the content of a current state event as c sees it.
func stateContent(t testing.TB, ctx context.Context, c *mautrix.Client, roomID id.RoomID, typ, stateKey string) map[string]any {
	t.Helper()
	var out map[string]any
	if err := c.StateEvent(ctx, roomID, event.Type{Type: typ, Class: event.StateEventType}, stateKey, &out); err != nil {
		t.Fatalf("%s: state %s/%s: %v", c.UserID, typ, stateKey, err)
	}
	return out
}

// countEvents counts the events of the room's timeline (as c sees it) that
// match.
func countEvents(t testing.TB, ctx context.Context, c *mautrix.Client, roomID id.RoomID, match func(ev *event.Event) bool) int {
	t.Helper()
	n := 0
	for _, ev := range paginate(t, ctx, c, roomID, mautrix.DirectionBackward, 50) {
		if match(ev) {
			n++
		}
	}
	return n
}

// TestTxnIDsAreScopedToTheEndpoint: a transaction id is scoped to the
// device and the endpoint (spec: "Transaction identifiers"). The same id
// used on /send with another event type, and on /redact, is a new request
// each time; the same id on the same endpoint is a retry, answered with the
// first event's id, also from another worker.
func TestTxnIDsAreScopedToTheEndpoint(t *testing.T) {
	t.Parallel()
	runDeployments(t, []string{engineSQLite, enginePostgres, engineFleet}, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		alice := srv.register(t, ctx, "alice")
		// The same device through a second client: on a fleet, another
		// generic worker.
		again := srv.client(t, alice.UserID, alice.AccessToken)
		again.DeviceID = alice.DeviceID
		room := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "private_chat"})
		target := send(t, ctx, alice, room, "redact me", "target")
		otherType := event.Type{Type: "org.example.other", Class: event.MessageEventType}

		sendMsg := func(c *mautrix.Client) id.EventID {
			t.Helper()
			resp, err := c.SendMessageEvent(ctx, room, event.EventMessage, map[string]any{"msgtype": "m.text", "body": "one"},
				mautrix.ReqSendEvent{TransactionID: "1"})
			if err != nil {
				t.Fatalf("send m.room.message txn 1: %v", err)
			}
			return resp.EventID
		}
		redact := func(c *mautrix.Client) id.EventID {
			t.Helper()
			resp, err := c.RedactEvent(ctx, room, target, mautrix.ReqRedact{TxnID: "1"})
			if err != nil {
				t.Fatalf("redact txn 1: %v", err)
			}
			return resp.EventID
		}
		sendOther := func(c *mautrix.Client) id.EventID {
			t.Helper()
			resp, err := c.SendMessageEvent(ctx, room, otherType, map[string]any{"body": "other"}, mautrix.ReqSendEvent{TransactionID: "1"})
			if err != nil {
				t.Fatalf("send %s txn 1: %v", otherType.Type, err)
			}
			return resp.EventID
		}

		msg := sendMsg(alice)
		red := redact(alice)
		if red == msg {
			t.Fatalf("PUT /redact/…/1 after PUT /send/m.room.message/1 answered the message's id %s", msg)
		}
		ev, err := alice.GetEvent(ctx, room, target)
		if err != nil {
			t.Fatalf("get redacted event: %v", err)
		}
		if _, ok := ev.Content.Raw["body"]; ok || ev.Unsigned.RedactedBecause == nil {
			t.Fatalf("target not redacted: content %v, redacted_because %v", ev.Content.Raw, ev.Unsigned.RedactedBecause)
		}
		other := sendOther(alice)
		if other == msg || other == red {
			t.Fatalf("PUT /send/%s/1 answered an earlier request's event %s", otherType.Type, other)
		}

		// Retries on each endpoint, through the other client.
		if got := sendMsg(again); got != msg {
			t.Fatalf("retried send: %s, want %s", got, msg)
		}
		if got := redact(again); got != red {
			t.Fatalf("retried redaction: %s, want %s", got, red)
		}
		if got := sendOther(again); got != other {
			t.Fatalf("retried %s send: %s, want %s", otherType.Type, got, other)
		}

		counts := map[string]int{}
		for _, ev := range paginate(t, ctx, alice, room, mautrix.DirectionBackward, 50) {
			counts[ev.Type.Type]++
		}
		if counts["m.room.message"] != 2 || counts["m.room.redaction"] != 1 || counts[otherType.Type] != 1 {
			t.Fatalf("timeline has %v; want 2 messages (target and txn 1), 1 redaction, 1 %s", counts, otherType.Type)
		}
	})
}

// TestUIAFailedAttemptsAreLimited: failed password stages of
// user-interactive auth count against rc_login.failed_attempts per user,
// as Synapse does: past the burst even the right password is refused with
// 429, so a stolen access token is no unlimited password oracle. Another
// user is not affected.
func TestUIAFailedAttemptsAreLimited(t *testing.T) {
	t.Parallel()
	runDeployments(t, monoliths, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		alice := srv.register(t, ctx, "alice")
		second := srv.mustLogin(t, ctx, "alice", password("alice"))
		path := clientPath("delete_devices")
		body := func(auth map[string]any) map[string]any {
			b := map[string]any{"devices": []string{second.DeviceID.String()}}
			if auth != nil {
				b["auth"] = auth
			}
			return b
		}
		session := wantUIAChallenge(t, srv.doJSON(t, ctx, "POST", path, alice.AccessToken, body(nil)))
		for i := range 3 {
			r := srv.doJSON(t, ctx, "POST", path, alice.AccessToken, body(passwordAuth("alice", "guess-"+itoa(i), session)))
			wantRawError(t, r, 401, "M_FORBIDDEN")
		}
		r := srv.doJSON(t, ctx, "POST", path, alice.AccessToken, body(passwordAuth("alice", password("alice"), session)))
		m := wantRawError(t, r, 429, "M_LIMIT_EXCEEDED")
		if ms, ok := m["retry_after_ms"].(float64); !ok || ms <= 0 {
			t.Fatalf("retry_after_ms = %v", m["retry_after_ms"])
		}
		// Refused before any check: a fresh request is refused too.
		wantRawError(t, srv.doJSON(t, ctx, "POST", path, alice.AccessToken, body(nil)), 429, "M_LIMIT_EXCEEDED")
		wantDevices(t, ctx, alice, alice.DeviceID, second.DeviceID)

		// Bob's bucket is his own.
		bob := srv.register(t, ctx, "bob")
		bob2 := srv.mustLogin(t, ctx, "bob", password("bob"))
		bobBody := map[string]any{"devices": []string{bob2.DeviceID.String()}}
		bobBody["auth"] = passwordAuth("bob", password("bob"), wantUIAChallenge(t, srv.doJSON(t, ctx, "POST", path, bob.AccessToken, bobBody)))
		if r := srv.doJSON(t, ctx, "POST", path, bob.AccessToken, bobBody); r.status != 200 {
			t.Fatalf("bob's delete_devices: %d %s", r.status, truncate(r.body))
		}
		wantDevices(t, ctx, bob, bob.DeviceID)
	}, withFailedAttemptsLimit(0.001, 3))
}

// TestBodyAndUIAErrors: invalid UTF-8 in a body is 400 M_NOT_JSON before
// anything else (user-interactive auth included); numbers canonical JSON
// cannot carry in event content are 400 M_BAD_JSON; authenticating as
// another user in UIA is 403 M_FORBIDDEN, whatever the password.
func TestBodyAndUIAErrors(t *testing.T) {
	t.Parallel()
	runDeployments(t, []string{engineSQLite, enginePostgres, engineFleet}, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		alice := srv.register(t, ctx, "alice")
		second := srv.mustLogin(t, ctx, "alice", password("alice"))
		bob := srv.register(t, ctx, "bob")
		room := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "private_chat"})

		invalidUTF8 := []byte("{\"devices\":[\"\xff\xfe\"]}")
		wantRawError(t, srv.do(t, ctx, "POST", clientPath("delete_devices"), alice.AccessToken, invalidUTF8), 400, "M_NOT_JSON")
		wantRawError(t, srv.do(t, ctx, "PUT", clientPath("rooms", room.String(), "send", "m.room.message", "utf8"), alice.AccessToken,
			[]byte("{\"msgtype\":\"m.text\",\"body\":\"caf\xe9\"}")), 400, "M_NOT_JSON")

		for i, n := range []string{"9007199254740992", "-9007199254740992", "1.5", "1e3", "1e400", "100000000000000000000"} {
			content := []byte(`{"msgtype":"m.text","body":"n","n":` + n + `}`)
			r := srv.do(t, ctx, "PUT", clientPath("rooms", room.String(), "send", "m.room.message", "num-"+itoa(i)), alice.AccessToken, content)
			wantRawError(t, r, 400, "M_BAD_JSON")
			r = srv.do(t, ctx, "PUT", clientPath("rooms", room.String(), "state", "org.example.num", itoa(i)), alice.AccessToken, content)
			wantRawError(t, r, 400, "M_BAD_JSON")
		}
		for _, body := range []string{
			`{"initial_state":[{"type":"org.example.num","state_key":"","content":{"n":1.5}}]}`,
			`{"creation_content":{"n":9007199254740992}}`,
			`{"power_level_content_override":{"org.example.n":1e400}}`,
		} {
			wantRawError(t, srv.do(t, ctx, "POST", clientPath("createRoom"), alice.AccessToken, []byte(body)), 400, "M_BAD_JSON")
		}
		// The largest safe integer is fine.
		if r := srv.do(t, ctx, "PUT", clientPath("rooms", room.String(), "send", "m.room.message", "num-ok"), alice.AccessToken,
			[]byte(`{"msgtype":"m.text","body":"n","n":9007199254740991}`)); r.status != 200 {
			t.Fatalf("send with 2^53-1: %d %s", r.status, truncate(r.body))
		}

		// UIA with bob's credentials on alice's request: 403, right
		// password or wrong; nothing deleted.
		path := clientPath("delete_devices")
		reqBody := map[string]any{"devices": []string{second.DeviceID.String()}}
		session := wantUIAChallenge(t, srv.doJSON(t, ctx, "POST", path, alice.AccessToken, reqBody))
		for _, pw := range []string{password("bob"), "wrong"} {
			reqBody["auth"] = passwordAuth(bob.UserID.Localpart(), pw, session)
			wantRawError(t, srv.doJSON(t, ctx, "POST", path, alice.AccessToken, reqBody), 403, "M_FORBIDDEN")
		}
		wantDevices(t, ctx, alice, alice.DeviceID, second.DeviceID)
	})
}

// TestSizeLimits: event types and state keys over 255 bytes and events
// over 65,536 bytes are 413 M_TOO_LARGE, room aliases over 255 bytes and
// user ids over 255 bytes 400 M_INVALID_PARAM, in createRoom too — where
// a refused request leaves no room behind.
func TestSizeLimits(t *testing.T) {
	t.Parallel()
	runDeployments(t, monoliths, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		alice := srv.register(t, ctx, "alice")
		room := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "private_chat"})
		roomsBefore := len(joinedRooms(t, ctx, alice))

		long := func(n int) string { return strings.Repeat("a", n) }
		// An alias of 256 bytes: "#" + local + ":" + server name.
		longLocal := long(256 - len("#:"+serverName))
		bigBody := `{"msgtype":"m.text","body":"` + long(65400) + `"}`
		cases := []struct {
			name, method, path, body string
			status                   int
			code                     string
		}{
			{"event type of 256 bytes", "PUT", clientPath("rooms", room.String(), "send", long(256), "t1"), `{}`, 413, "M_TOO_LARGE"},
			{"state type of 256 bytes", "PUT", clientPath("rooms", room.String(), "state", long(256), ""), `{}`, 413, "M_TOO_LARGE"},
			{"state key of 256 bytes", "PUT", clientPath("rooms", room.String(), "state", "org.example.k", long(256)), `{}`, 413, "M_TOO_LARGE"},
			{"event over 65536 bytes", "PUT", clientPath("rooms", room.String(), "send", "m.room.message", "t2"), bigBody, 413, "M_TOO_LARGE"},
			{"alias of 256 bytes", "PUT", clientPath("directory", "room", "#"+longLocal+":"+serverName), `{"room_id":"` + room.String() + `"}`, 400, "M_INVALID_PARAM"},
			{"invitee id of 256 bytes", "POST", clientPath("rooms", room.String(), "invite"), `{"user_id":"@` + long(256-len("@:"+serverName)) + `:` + serverName + `"}`, 400, "M_INVALID_PARAM"},
			{"createRoom alias of 256 bytes", "POST", clientPath("createRoom"), `{"room_alias_name":"` + longLocal + `"}`, 400, "M_INVALID_PARAM"},
			{"createRoom initial state type of 256 bytes", "POST", clientPath("createRoom"), `{"initial_state":[{"type":"` + long(256) + `","content":{}}]}`, 413, "M_TOO_LARGE"},
			{"createRoom initial state key of 256 bytes", "POST", clientPath("createRoom"), `{"initial_state":[{"type":"org.example.k","state_key":"` + long(256) + `","content":{}}]}`, 413, "M_TOO_LARGE"},
			{"createRoom topic event over 65536 bytes", "POST", clientPath("createRoom"), `{"topic":"` + long(65400) + `"}`, 413, "M_TOO_LARGE"},
			{"createRoom invitee id of 256 bytes", "POST", clientPath("createRoom"), `{"invite":["@` + long(256-len("@:"+serverName)) + `:` + serverName + `"]}`, 400, "M_INVALID_PARAM"},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				wantRawError(t, srv.do(t, ctx, tc.method, tc.path, alice.AccessToken, []byte(tc.body)), tc.status, tc.code)
			})
		}
		if n := len(joinedRooms(t, ctx, alice)); n != roomsBefore {
			t.Fatalf("refused createRooms left rooms behind: %d joined rooms, want %d", n, roomsBefore)
		}

		// 255 bytes is within every limit.
		if r := srv.do(t, ctx, "PUT", clientPath("rooms", room.String(), "send", long(255), "t3"), alice.AccessToken, []byte(`{}`)); r.status != 200 {
			t.Fatalf("event type of 255 bytes: %d %s", r.status, truncate(r.body))
		}
		if r := srv.do(t, ctx, "PUT", clientPath("rooms", room.String(), "state", "org.example.k", long(255)), alice.AccessToken, []byte(`{}`)); r.status != 200 {
			t.Fatalf("state key of 255 bytes: %d %s", r.status, truncate(r.body))
		}
		okLocal := longLocal[1:]
		if r := srv.do(t, ctx, "POST", clientPath("createRoom"), alice.AccessToken, []byte(`{"room_alias_name":"`+okLocal+`"}`)); r.status != 200 {
			t.Fatalf("createRoom with an alias of 255 bytes: %d %s", r.status, truncate(r.body))
		}
	})
}

// TestStateNoOpComparesCanonicalJSON: re-sending a state event with the
// same content is a no-op answered with the existing event, and "the same"
// is canonical JSON: {"v":100} and {"v":"100"} differ, key order does not
// matter.
func TestStateNoOpComparesCanonicalJSON(t *testing.T) {
	t.Parallel()
	runDeployments(t, monoliths, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		alice := srv.register(t, ctx, "alice")
		room := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "private_chat"})
		put := func(body string) string {
			t.Helper()
			r := srv.do(t, ctx, "PUT", clientPath("rooms", room.String(), "state", "org.example.v", ""), alice.AccessToken, []byte(body))
			if r.status != 200 {
				t.Fatalf("PUT state %s: %d %s", body, r.status, truncate(r.body))
			}
			return r.object(t)["event_id"].(string)
		}
		number := put(`{"v":100,"w":[1,{"x":null}]}`)
		if again := put(`{ "w" : [1, {"x": null}], "v": 100 }`); again != number {
			t.Fatalf("same content in another key order made a new event %s (first %s)", again, number)
		}
		str := put(`{"v":"100","w":[1,{"x":null}]}`)
		if str == number {
			t.Fatalf(`{"v":"100"} after {"v":100} was taken for the same content`)
		}
		if got := stateContent(t, ctx, alice, room, "org.example.v", ""); got["v"] != "100" {
			t.Fatalf("state content %v, want v = \"100\"", got)
		}
		if dropped := put(`{"v":"100","w":[1,{}]}`); dropped == str {
			t.Fatalf("content without a null member was taken for the same content")
		}
	})
}

// TestDeletedAliasLeavesCanonicalAlias: deleting an alias from the
// directory sends a new m.room.canonical_alias without it, as alias and
// among alt_aliases.
func TestDeletedAliasLeavesCanonicalAlias(t *testing.T) {
	t.Parallel()
	runDeployments(t, monoliths, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		alice := srv.register(t, ctx, "alice")
		mainAlias := id.NewRoomAlias("hardening-main", serverName)
		altAlias := id.NewRoomAlias("hardening-alt", serverName)
		keptAlias := id.NewRoomAlias("hardening-kept", serverName)
		room := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", RoomAliasName: "hardening-main"})
		for _, a := range []id.RoomAlias{altAlias, keptAlias} {
			if _, err := alice.CreateAlias(ctx, a, room); err != nil {
				t.Fatalf("create alias %s: %v", a, err)
			}
		}
		if _, err := alice.SendStateEvent(ctx, room, event.StateCanonicalAlias, "", map[string]any{
			"alias": mainAlias.String(), "alt_aliases": []string{altAlias.String(), keptAlias.String()}, "org.example.extra": 1,
		}); err != nil {
			t.Fatalf("set canonical alias: %v", err)
		}

		if _, err := alice.DeleteAlias(ctx, mainAlias); err != nil {
			t.Fatalf("delete %s: %v", mainAlias, err)
		}
		got := stateContent(t, ctx, alice, room, "m.room.canonical_alias", "")
		if _, ok := got["alias"]; ok || got["org.example.extra"] != float64(1) {
			t.Fatalf("canonical alias after deleting %s: %v; want no alias, other keys kept", mainAlias, got)
		}
		if alt, _ := json.Marshal(got["alt_aliases"]); string(alt) != `["`+altAlias.String()+`","`+keptAlias.String()+`"]` {
			t.Fatalf("alt_aliases after deleting %s: %s", mainAlias, alt)
		}

		if _, err := alice.DeleteAlias(ctx, altAlias); err != nil {
			t.Fatalf("delete %s: %v", altAlias, err)
		}
		got = stateContent(t, ctx, alice, room, "m.room.canonical_alias", "")
		if alt, _ := json.Marshal(got["alt_aliases"]); string(alt) != `["`+keptAlias.String()+`"]` {
			t.Fatalf("alt_aliases after deleting %s: %s", altAlias, alt)
		}

		// An alias the event does not name changes nothing.
		before := stateEventID(t, ctx, srv, alice, room, "m.room.canonical_alias", "")
		spare := id.NewRoomAlias("hardening-spare", serverName)
		if _, err := alice.CreateAlias(ctx, spare, room); err != nil {
			t.Fatalf("create alias %s: %v", spare, err)
		}
		if _, err := alice.DeleteAlias(ctx, spare); err != nil {
			t.Fatalf("delete %s: %v", spare, err)
		}
		if after := stateEventID(t, ctx, srv, alice, room, "m.room.canonical_alias", ""); after != before {
			t.Fatalf("deleting an alias the event does not name sent %s", after)
		}
	})
}

// TestAccessBeforeParameters: a user who may not read a room is refused
// with 403 whatever their parameters; an event the user may not see is
// 404 M_NOT_FOUND, like an event that does not exist.
func TestAccessBeforeParameters(t *testing.T) {
	t.Parallel()
	runDeployments(t, monoliths, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		alice := srv.register(t, ctx, "alice")
		eve := srv.register(t, ctx, "eve")
		room := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "private_chat"})
		msg := send(t, ctx, alice, room, "private", "private")
		base := clientPath("rooms", room.String())

		for _, q := range []string{"/messages", "/messages?dir=x", "/messages?dir=b&from=garbage", "/messages?dir=b&limit=-1",
			"/messages?dir=b&filter=%7Bnot-json", "/context/" + escape(msg.String()) + "?limit=abc",
			"/context/" + escape(msg.String()) + "?filter=%7B", "/members?at=garbage", "/members?membership=bogus"} {
			wantRawError(t, srv.do(t, ctx, "GET", base+q, eve.AccessToken, nil), 403, "M_FORBIDDEN")
		}
		// A member's bad parameters are still judged.
		wantRawError(t, srv.do(t, ctx, "GET", base+"/messages?dir=x", alice.AccessToken, nil), 400, "M_INVALID_PARAM")
		wantRawError(t, srv.do(t, ctx, "GET", base+"/members?at=garbage", alice.AccessToken, nil), 400, "M_INVALID_PARAM")

		_, err := eve.GetEvent(ctx, room, msg)
		wantMatrixError(t, err, 404, "M_NOT_FOUND")
		_, err = eve.GetEvent(ctx, room, "$doesnotexist")
		wantMatrixError(t, err, 404, "M_NOT_FOUND")
		_, err = eve.GetEvent(ctx, id.RoomID("!unknown:"+serverName), msg)
		wantMatrixError(t, err, 404, "M_NOT_FOUND")

		// A member who may not see an earlier event: 404 as well.
		if _, err := alice.SendStateEvent(ctx, room, event.StateHistoryVisibility, "", map[string]any{"history_visibility": "joined"}); err != nil {
			t.Fatalf("set history visibility: %v", err)
		}
		hidden := send(t, ctx, alice, room, "before eve", "hidden")
		invite(t, ctx, alice, room, eve.UserID)
		join(t, ctx, eve, room.String())
		_, err = eve.GetEvent(ctx, room, hidden)
		wantMatrixError(t, err, 404, "M_NOT_FOUND")
		if _, err := alice.GetEvent(ctx, room, hidden); err != nil {
			t.Fatalf("alice reads her own event: %v", err)
		}
	})
}

// TestJoinBodyAndIdempotentJoin: the keys of a /join/{roomIdOrAlias} body
// go into the member event (a per-room displayname, keys of the client's
// own), as Synapse does; joining again with the same content is answered
// with the join in place and adds no event.
func TestJoinBodyAndIdempotentJoin(t *testing.T) {
	t.Parallel()
	runDeployments(t, monoliths, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		alice := srv.register(t, ctx, "alice")
		bob := srv.register(t, ctx, "bob")
		room := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		joinPath := clientPath("join", room.String())
		body := `{"reason":"hello","org.example.flag":true,"displayname":"Bobby",` +
			`"join_authorised_via_users_server":"@alice:e2e.test","membership":"leave"}`

		r := srv.do(t, ctx, "POST", joinPath, bob.AccessToken, []byte(body))
		if r.status != 200 || r.object(t)["room_id"] != room.String() {
			t.Fatalf("join with a body: %d %s", r.status, truncate(r.body))
		}
		got := stateContent(t, ctx, alice, room, "m.room.member", bob.UserID.String())
		if got["membership"] != "join" || got["reason"] != "hello" || got["org.example.flag"] != true || got["displayname"] != "Bobby" {
			t.Fatalf("member content %v; want join, reason, org.example.flag and displayname from the body", got)
		}
		if _, ok := got["join_authorised_via_users_server"]; ok {
			t.Fatalf("member content %v carries the client's join_authorised_via_users_server", got)
		}
		first := stateEventID(t, ctx, srv, alice, room, "m.room.member", bob.UserID.String())
		isBobsMember := func(ev *event.Event) bool {
			return ev.Type == event.StateMember && ev.StateKey != nil && *ev.StateKey == bob.UserID.String()
		}
		before := countEvents(t, ctx, alice, room, isBobsMember)

		r = srv.do(t, ctx, "POST", joinPath, bob.AccessToken, []byte(body))
		if r.status != 200 {
			t.Fatalf("join again: %d %s", r.status, truncate(r.body))
		}
		if again := stateEventID(t, ctx, srv, alice, room, "m.room.member", bob.UserID.String()); again != first {
			t.Fatalf("joining again with the same content made event %s (first %s)", again, first)
		}
		if n := countEvents(t, ctx, alice, room, isBobsMember); n != before {
			t.Fatalf("joining again with the same content: %d member events of bob, want %d", n, before)
		}

		// New content is a new join.
		r = srv.do(t, ctx, "POST", joinPath, bob.AccessToken, []byte(`{"displayname":"Robert"}`))
		if r.status != 200 {
			t.Fatalf("join with a new displayname: %d %s", r.status, truncate(r.body))
		}
		if got := stateContent(t, ctx, alice, room, "m.room.member", bob.UserID.String()); got["displayname"] != "Robert" {
			t.Fatalf("member content after a new join: %v", got)
		}

		// Profile fields must be strings of bounded length.
		wantRawError(t, srv.do(t, ctx, "POST", joinPath, bob.AccessToken, []byte(`{"displayname":5}`)), 400, "M_BAD_JSON")
		wantRawError(t, srv.do(t, ctx, "POST", joinPath, bob.AccessToken,
			[]byte(`{"displayname":"`+strings.Repeat("b", 257)+`"}`)), 400, "M_BAD_JSON")
	})
}

// TestKickNeedsAMember: kicking a user who never joined, who left or who
// is banned is 403 and writes nothing; kicking a member or an invitee
// works.
func TestKickNeedsAMember(t *testing.T) {
	t.Parallel()
	runDeployments(t, monoliths, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		alice := srv.register(t, ctx, "alice")
		room := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		never := srv.register(t, ctx, "never")
		left := srv.register(t, ctx, "left")
		banned := srv.register(t, ctx, "banned")
		invited := srv.register(t, ctx, "invited")
		member := srv.register(t, ctx, "member")

		join(t, ctx, left, room.String())
		if _, err := left.LeaveRoom(ctx, room); err != nil {
			t.Fatalf("leave: %v", err)
		}
		join(t, ctx, banned, room.String())
		if _, err := alice.BanUser(ctx, room, &mautrix.ReqBanUser{UserID: banned.UserID}); err != nil {
			t.Fatalf("ban: %v", err)
		}
		invite(t, ctx, alice, room, invited.UserID)
		join(t, ctx, member, room.String())

		for _, c := range []*mautrix.Client{never, left, banned} {
			var before string
			if c != never {
				before = stateEventID(t, ctx, srv, alice, room, "m.room.member", c.UserID.String())
			}
			_, err := alice.KickUser(ctx, room, &mautrix.ReqKickUser{UserID: c.UserID})
			wantMatrixError(t, err, 403, "M_FORBIDDEN")
			if c == never {
				continue
			}
			if after := stateEventID(t, ctx, srv, alice, room, "m.room.member", c.UserID.String()); after != before {
				t.Fatalf("refused kick of %s wrote %s", c.UserID, after)
			}
		}
		wantMembership(t, ctx, alice, room, banned.UserID, event.MembershipBan)
		for _, c := range []*mautrix.Client{invited, member} {
			if _, err := alice.KickUser(ctx, room, &mautrix.ReqKickUser{UserID: c.UserID}); err != nil {
				t.Fatalf("kick %s: %v", c.UserID, err)
			}
			wantMembership(t, ctx, alice, room, c.UserID, event.MembershipLeave)
		}
	})
}
