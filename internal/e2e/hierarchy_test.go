package e2e_test

import (
	"context"
	"net/url"
	"slices"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// addChild makes child a child of space (m.space.child with via).
func addChild(t testing.TB, ctx context.Context, c *mautrix.Client, space, child id.RoomID, order string, suggested bool) {
	t.Helper()
	content := map[string]any{"via": []string{serverName}, "suggested": suggested}
	if order != "" {
		content["order"] = order
	}
	if _, err := c.SendStateEvent(ctx, space, event.StateSpaceChild, child.String(), content); err != nil {
		t.Fatalf("add child %s to %s: %v", child, space, err)
	}
}

// hierarchyIDs are the room ids of a /hierarchy answer.
func hierarchyIDs(m map[string]any) []string {
	var out []string
	rooms, _ := m["rooms"].([]any)
	for _, r := range rooms {
		if room, ok := r.(map[string]any); ok {
			id, _ := room["room_id"].(string)
			out = append(out, id)
		}
	}
	return out
}

func TestSpaceHierarchy(t *testing.T) {
	runDeployments(t, relationDeployments, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		alice := srv.register(t, ctx, "alice")
		bob := srv.register(t, ctx, "bob")
		eve := srv.register(t, ctx, "eve")
		space := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "private_chat", Name: "Space",
			CreationContent: map[string]any{"type": "m.space"}})
		invite(t, ctx, alice, space, bob.UserID)
		join(t, ctx, bob, space.String())
		a := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "A", Topic: "room a"})
		b := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "private_chat", Name: "B"})
		c := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "private_chat", Name: "C",
			InitialState: []*event.Event{{Type: event.StateJoinRules, StateKey: new(string), Content: event.Content{Raw: map[string]any{
				"join_rule": "restricted", "allow": []any{map[string]any{"type": "m.room_membership", "room_id": space.String()}}}}}},
			RoomVersion: "10"})
		d := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "D"})
		addChild(t, ctx, alice, space, a, "a", true)
		addChild(t, ctx, alice, space, b, "b", false)
		addChild(t, ctx, alice, space, c, "c", false)
		addChild(t, ctx, alice, a, d, "", false)
		// A removed child (no via) is no child.
		gone := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		if _, err := alice.SendStateEvent(ctx, space, event.StateSpaceChild, gone.String(), map[string]any{}); err != nil {
			t.Fatal(err)
		}

		path := v1Path("rooms", space.String(), "hierarchy")
		all := getJSON(t, ctx, srv, alice.AccessToken, path)
		if got, want := hierarchyIDs(all), []string{space.String(), a.String(), b.String(), c.String(), d.String()}; !slices.Equal(got, want) {
			t.Fatalf("alice's hierarchy %v, want %v", got, want)
		}
		root := all["rooms"].([]any)[0].(map[string]any)
		if root["room_type"] != "m.space" || root["name"] != "Space" || root["num_joined_members"] != float64(2) {
			t.Fatalf("space summary %v", root)
		}
		if cs, _ := root["children_state"].([]any); len(cs) != 3 {
			t.Fatalf("space children_state has %d entries, want 3: %v", len(cs), cs)
		}
		ra := all["rooms"].([]any)[1].(map[string]any)
		if ra["topic"] != "room a" || ra["join_rule"] != "public" || ra["guest_can_join"] != false || ra["world_readable"] != false {
			t.Fatalf("room A summary %v", ra)
		}

		// Bob: B is private and he is not in it; C lets members of the space in.
		got := hierarchyIDs(getJSON(t, ctx, srv, bob.AccessToken, path))
		if want := []string{space.String(), a.String(), c.String(), d.String()}; !slices.Equal(got, want) {
			t.Fatalf("bob's hierarchy %v, want %v", got, want)
		}
		got = hierarchyIDs(getJSON(t, ctx, srv, bob.AccessToken, path+"?max_depth=1"))
		if want := []string{space.String(), a.String(), c.String()}; !slices.Equal(got, want) {
			t.Fatalf("max_depth=1: %v, want %v", got, want)
		}
		got = hierarchyIDs(getJSON(t, ctx, srv, bob.AccessToken, path+"?max_depth=0"))
		if want := []string{space.String()}; !slices.Equal(got, want) {
			t.Fatalf("max_depth=0: %v, want %v", got, want)
		}
		got = hierarchyIDs(getJSON(t, ctx, srv, bob.AccessToken, path+"?suggested_only=true"))
		if want := []string{space.String(), a.String()}; !slices.Equal(got, want) {
			t.Fatalf("suggested_only: %v, want %v", got, want)
		}
		p1 := getJSON(t, ctx, srv, bob.AccessToken, path+"?limit=2")
		next, _ := p1["next_batch"].(string)
		if got := hierarchyIDs(p1); !slices.Equal(got, []string{space.String(), a.String()}) || next == "" {
			t.Fatalf("page 1: %v next %q", got, next)
		}
		p2 := getJSON(t, ctx, srv, bob.AccessToken, path+"?limit=2&from="+url.QueryEscape(next))
		if got := hierarchyIDs(p2); !slices.Equal(got, []string{c.String(), d.String()}) || p2["next_batch"] != nil {
			t.Fatalf("page 2: %v next %v", got, p2["next_batch"])
		}
		// Through mautrix.
		mh, err := bob.Hierarchy(ctx, space, &mautrix.ReqHierarchy{MaxDepth: ptr(1)})
		if err != nil || len(mh.Rooms) != 3 {
			t.Fatalf("mautrix Hierarchy: %v, %d rooms", err, len(mh.Rooms))
		}

		// Eve is in nothing: the private space is hidden, a public room is not.
		wantRawError(t, srv.do(t, ctx, "GET", path, eve.AccessToken, nil), 403, "M_FORBIDDEN")
		if got := hierarchyIDs(getJSON(t, ctx, srv, eve.AccessToken, v1Path("rooms", a.String(), "hierarchy"))); !slices.Equal(got, []string{a.String(), d.String()}) {
			t.Fatalf("eve's hierarchy of A: %v", got)
		}
		wantRawError(t, srv.do(t, ctx, "GET", v1Path("rooms", "!nope:"+serverName, "hierarchy"), alice.AccessToken, nil), 403, "M_FORBIDDEN")
		for _, q := range []string{"max_depth=-1", "max_depth=x", "limit=0", "limit=x", "suggested_only=maybe", "from=garbage"} {
			wantRawError(t, srv.do(t, ctx, "GET", path+"?"+q, alice.AccessToken, nil), 400, "M_INVALID_PARAM")
		}
		// A token is only good for the query it came from.
		wantRawError(t, srv.do(t, ctx, "GET", path+"?limit=2&suggested_only=true&from="+url.QueryEscape(next), bob.AccessToken, nil), 400, "M_INVALID_PARAM")
	})
}

func ptr[T any](v T) *T { return &v }
