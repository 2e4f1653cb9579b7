package router_test

import (
	"net/http"
	"slices"
	"strings"
	"testing"
)

// routingCases are request lines and the pool whose backends may answer
// them (see expectPool). The same table runs against the built-in router
// and against nginx with the generated config.
func routingCases() []struct {
	line reqLine
	pool string
} {
	alice := token("alice")
	type c = struct {
		line reqLine
		pool string
	}
	return []c{
		{reqLine{method: "GET", path: "/_matrix/client/v3/sync?since=s1", token: alice}, "sync"},
		{reqLine{method: "GET", path: "/_matrix/client/r0/sync?since=s1&timeout=0", token: alice}, "sync"},
		{reqLine{method: "GET", path: "/_matrix/client/v3/sync", token: alice}, "initial_sync"},
		{reqLine{method: "GET", path: "/_matrix/client/v3/sync?since=", token: alice}, "initial_sync"},
		{reqLine{method: "GET", path: "/_matrix/client/v3/sync?access_token=" + alice + "&since=s2"}, "sync"},
		{reqLine{method: "GET", path: "/_matrix/client/api/v1/events?from=s1", token: alice}, "sync"},
		{reqLine{method: "GET", path: "/_matrix/client/v3/initialSync", token: alice}, "initial_sync"},
		{reqLine{method: "GET", path: "/_matrix/client/r0/rooms/!r:x/initialSync", token: alice}, "initial_sync"},
		{reqLine{method: "PUT", path: "/_matrix/federation/v1/send/txn1", origin: "remote.example", body: "{}"}, "federation_inbound"},
		{reqLine{method: "PUT", path: "/_matrix/federation/v1/send/txn2", body: "{}"}, "federation_inbound"},
		{reqLine{method: "GET", path: "/_matrix/federation/v1/state_ids/!r:x?event_id=$e", origin: "remote.example"}, "federation"},
		{reqLine{method: "PUT", path: "/_matrix/federation/v2/send_join/!r:x/$e", body: "{}"}, "federation"},
		{reqLine{method: "POST", path: "/_matrix/key/v2/query", body: "{}"}, "federation"},
		{reqLine{method: "GET", path: "/_matrix/federation/v1/version"}, "federation"},
		{reqLine{method: "GET", path: "/_matrix/client/v3/rooms/!r:x/members", token: alice}, "client"},
		{reqLine{method: "GET", path: "/_matrix/client/versions"}, "client"},
		{reqLine{method: "POST", path: "/_matrix/client/v3/keys/query", token: alice, body: "{}"}, "client"},
		{reqLine{method: "POST", path: "/_matrix/client/v3/login", body: "{}"}, "client"},
		{reqLine{method: "POST", path: "/_matrix/client/v3/user_directory/search", token: alice, body: "{}"}, "client"},
		{reqLine{method: "GET", path: "/_matrix/client/v3/rooms/!r:x/messages?dir=b", token: alice}, "client"},
		{reqLine{method: "GET", path: "/_matrix/client/v3/pushrules/", token: alice}, "client"},
		{reqLine{method: "PUT", path: "/_matrix/client/v3/pushrules/global/override/r", token: alice, body: "{}"}, "writer"},
		{reqLine{method: "DELETE", path: "/_matrix/client/v3/pushrules/global/override/r", token: alice}, "writer"},
		{reqLine{method: "PUT", path: "/_matrix/client/v3/rooms/!r:x/send/m.room.message/t1", token: alice, body: "{}"}, "events"},
		{reqLine{method: "POST", path: "/_matrix/client/v3/join/%23alias:x", token: alice, body: "{}"}, "events"},
		{reqLine{method: "PUT", path: "/_matrix/client/v3/profile/@alice:x/displayname", token: alice, body: "{}"}, "events"},
		{reqLine{method: "PUT", path: "/_matrix/client/v3/rooms/!r:x/typing/@alice:x", token: alice, body: "{}"}, "writer"},
		{reqLine{method: "PUT", path: "/_matrix/client/v3/sendToDevice/m.x/t1", token: alice, body: "{}"}, "writer"},
		{reqLine{method: "PUT", path: "/_matrix/client/v3/user/@alice:x/account_data/m.direct", token: alice, body: "{}"}, "writer"},
		{reqLine{method: "PUT", path: "/_matrix/client/v3/user/@alice:x/rooms/!r:x/tags/u.t", token: alice, body: "{}"}, "writer"},
		{reqLine{method: "POST", path: "/_matrix/client/v3/rooms/!r:x/receipt/m.read/$e", token: alice, body: "{}"}, "writer"},
		{reqLine{method: "PUT", path: "/_matrix/client/v3/presence/@alice:x/status", token: alice, body: "{}"}, "writer"},
		{reqLine{method: "GET", path: "/_matrix/media/v3/download/x/abc"}, "media"},
		{reqLine{method: "GET", path: "/_matrix/client/v1/media/thumbnail/x/abc", token: alice}, "media"},
		{reqLine{method: "GET", path: "/_synapse/admin/v1/users/@alice:x/media", token: alice}, "media"},
		{reqLine{method: "GET", path: "/_matrix/client/v3/login/sso/redirect?redirectUrl=x"}, "sso"},
		{reqLine{method: "GET", path: "/_synapse/client/oidc/callback?code=x"}, "sso"},
		{reqLine{method: "POST", path: "/_matrix/client/v3/logout", token: alice}, "main"},
		{reqLine{method: "GET", path: "/_matrix/client/v3/devices/ABC", token: alice}, "main"},
		{reqLine{method: "GET", path: "/.well-known/matrix/client"}, "main"},
		{reqLine{method: "POST", path: "/_synapse/admin/v1/register", body: "{}"}, "main"},
	}
}

// checkRouting sends every routing case through the proxy at base.
func checkRouting(t *testing.T, base string) {
	for _, tc := range routingCases() {
		t.Run(tc.line.String(), func(t *testing.T) {
			r := send(t, base, tc.line)
			if r.status != http.StatusOK {
				t.Fatalf("status %d: %s", r.status, r.body)
			}
			if !slices.Contains(expectPool[tc.pool], r.backend) {
				t.Fatalf("answered by %q, want one of %v (pool %s)", r.backend, expectPool[tc.pool], tc.pool)
			}
			e := r.reply(t)
			wantPath, _, _ := strings.Cut(tc.line.path, "?")
			if e.Method != tc.line.method || (e.Path != wantPath && !strings.Contains(wantPath, "%")) {
				t.Errorf("backend saw %s %s, want %s %s", e.Method, e.Path, tc.line.method, wantPath)
			}
		})
	}
}

// checkStickiness: one user's syncs stay on one backend; initial and
// incremental syncs use their own pools; one origin's transactions and
// one room's sends stay on one backend.
func checkStickiness(t *testing.T, base string) {
	users := usersOn(t, base, "?since=s1", expectPool["sync"])
	for backend, tok := range users {
		for i := range 10 {
			r := send(t, base, reqLine{method: "GET", path: "/_matrix/client/v3/sync?since=s" + string(rune('0'+i)), token: tok})
			if r.backend != backend {
				t.Fatalf("sync %d of a user on %s went to %s", i, backend, r.backend)
			}
			r = send(t, base, reqLine{method: "GET", path: "/_matrix/client/v3/sync", token: tok})
			if !slices.Contains(expectPool["initial_sync"], r.backend) {
				t.Fatalf("initial sync went to %s", r.backend)
			}
		}
	}
	sticky := func(what string, lines func(i int) reqLine) {
		first := send(t, base, lines(0)).backend
		for i := 1; i < 10; i++ {
			if got := send(t, base, lines(i)).backend; got != first {
				t.Fatalf("%s: request %d went to %s, the first to %s", what, i, got, first)
			}
		}
	}
	sticky("origin", func(i int) reqLine {
		return reqLine{method: "PUT", path: "/_matrix/federation/v1/send/t" + string(rune('a'+i)), origin: "one.example", body: "{}"}
	})
	sticky("room", func(i int) reqLine {
		return reqLine{method: "PUT", path: "/_matrix/client/v3/rooms/!room:x/send/m.room.message/t" + string(rune('a'+i)), token: token("u" + string(rune('a'+i))), body: "{}"}
	})
	// Different users and rooms do spread over the pools.
	spread := map[string]bool{}
	for i := range 40 {
		spread[send(t, base, reqLine{method: "PUT", path: "/_matrix/client/v3/rooms/!r" + string(rune('a'+i%26)) + string(rune('a'+i/26)) + ":x/send/m/t", body: "{}"}).backend] = true
	}
	if len(spread) != len(expectPool["events"]) {
		t.Errorf("40 rooms used backends %v, want all of %v", spread, expectPool["events"])
	}
}

func TestRouterRoutesEveryClass(t *testing.T) {
	f := newTestFleet(t, 8008)
	_, base := startRouter(t, f)
	checkRouting(t, base)
}

func TestRouterStickiness(t *testing.T) {
	f := newTestFleet(t, 8008)
	_, base := startRouter(t, f)
	checkStickiness(t, base)
}
