package e2e_test

import (
	"slices"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// TestAliasesAndDirectory covers room aliases (create, resolve, conflicts,
// join by alias, canonical alias checks, deletion rights) and the public
// room directory (visibility, publicRooms paging and search).
func TestAliasesAndDirectory(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		alice := srv.register(t, ctx, "alice")
		bob := srv.register(t, ctx, "bob")

		// createRoom with an alias and public visibility.
		lobbyAlias := id.NewRoomAlias("e2e-lobby", serverName)
		lobby := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{
			Visibility: "public", Preset: "public_chat", RoomAliasName: "e2e-lobby", Name: "Lobby", Topic: "Where everyone meets",
		})
		res, err := bob.ResolveAlias(ctx, lobbyAlias)
		if err != nil {
			t.Fatalf("resolve %s: %v", lobbyAlias, err)
		}
		if res.RoomID != lobby || !slices.Contains(res.Servers, serverName) {
			t.Fatalf("resolve %s = %+v, want %s via %s", lobbyAlias, res, lobby, serverName)
		}
		// Unauthenticated resolution works too (the endpoint needs no token).
		r := srv.do(t, ctx, "GET", clientPath("directory", "room", lobbyAlias.String()), "", nil)
		if r.status != 200 || r.object(t)["room_id"] != lobby.String() {
			t.Fatalf("unauthenticated resolve: %d %s", r.status, truncate(r.body))
		}
		_, err = bob.ResolveAlias(ctx, id.NewRoomAlias("nobody-has-this", serverName))
		wantMatrixError(t, err, 404, "M_NOT_FOUND")

		// A second room; the lobby's alias cannot be taken for it.
		other := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "private_chat", RoomAliasName: "e2e-other", Name: "Other"})
		_, err = alice.CreateAlias(ctx, lobbyAlias, other)
		wantMatrixError(t, err, 409, "M_UNKNOWN", "M_ROOM_IN_USE") // spec gives only the status
		_, err = alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{RoomAliasName: "e2e-lobby"})
		wantMatrixError(t, err, 400, "M_ROOM_IN_USE")

		// Join by alias.
		if got := join(t, ctx, bob, lobbyAlias.String()); got != lobby {
			t.Fatalf("join %s returned %s, want %s", lobbyAlias, got, lobby)
		}
		wantJoinedMembers(t, ctx, alice, lobby, alice.UserID, bob.UserID)

		// m.room.canonical_alias may only name aliases of this room.
		_, err = alice.SendStateEvent(ctx, lobby, event.StateCanonicalAlias, "",
			map[string]any{"alias": "#e2e-other:" + serverName})
		wantMatrixError(t, err, 400, "M_BAD_ALIAS")
		_, err = alice.SendStateEvent(ctx, lobby, event.StateCanonicalAlias, "",
			map[string]any{"alias": lobbyAlias.String(), "alt_aliases": []string{"#e2e-other:" + serverName}})
		wantMatrixError(t, err, 400, "M_BAD_ALIAS")
		if _, err := alice.SendStateEvent(ctx, lobby, event.StateCanonicalAlias, "",
			map[string]any{"alias": lobbyAlias.String()}); err != nil {
			t.Fatalf("set canonical alias to the room's own alias: %v", err)
		}

		// Any member may add an alias; deleting someone else's needs the
		// power to set the canonical alias.
		bobAlias := id.NewRoomAlias("bobs-name-for-it", serverName)
		if _, err := bob.CreateAlias(ctx, bobAlias, lobby); err != nil {
			t.Fatalf("member adds alias: %v", err)
		}
		_, err = bob.DeleteAlias(ctx, lobbyAlias)
		wantMatrixError(t, err, 403, "M_FORBIDDEN")
		aliases, err := bob.GetAliases(ctx, lobby)
		if err != nil {
			t.Fatalf("/aliases: %v", err)
		}
		if !slices.Contains(aliases.Aliases, lobbyAlias) || !slices.Contains(aliases.Aliases, bobAlias) {
			t.Fatalf("/aliases = %v, want %s and %s", aliases.Aliases, lobbyAlias, bobAlias)
		}
		if _, err := alice.DeleteAlias(ctx, bobAlias); err != nil {
			t.Fatalf("room admin deletes a member's alias: %v", err)
		}
		_, err = bob.ResolveAlias(ctx, bobAlias)
		wantMatrixError(t, err, 404, "M_NOT_FOUND")

		// Directory visibility: readable by anyone, writable by moderators.
		visPath := clientPath("directory", "list", "room", lobby.String())
		if r := srv.do(t, ctx, "GET", visPath, "", nil); r.status != 200 || r.object(t)["visibility"] != "public" {
			t.Fatalf("lobby visibility: %d %s, want public", r.status, truncate(r.body))
		}
		if r := srv.do(t, ctx, "GET", clientPath("directory", "list", "room", other.String()), "", nil); r.status != 200 || r.object(t)["visibility"] != "private" {
			t.Fatalf("other room's visibility: %d %s, want private", r.status, truncate(r.body))
		}
		wantRawError(t, srv.doJSON(t, ctx, "PUT", visPath, bob.AccessToken, map[string]any{"visibility": "private"}), 403, "M_FORBIDDEN")

		// Five more public rooms, found by paging publicRooms two at a time.
		var pagers []id.RoomID
		for i := range 5 {
			pagers = append(pagers, createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{
				Visibility: "public", Preset: "public_chat", Name: "Pager " + itoa(i), Topic: "for paging",
			}))
		}
		allPublic := append([]id.RoomID{lobby}, pagers...)
		if got := pagePublicRooms(t, srv, alice, "", 2); !sameSet(got, allPublic) {
			t.Fatalf("GET /publicRooms pages = %v, want %v", got, allPublic)
		}
		if got := pagePublicRooms(t, srv, alice, "Pager", 2); !sameSet(got, pagers) {
			t.Fatalf("POST /publicRooms generic_search_term=Pager = %v, want %v", got, pagers)
		}
		if got := pagePublicRooms(t, srv, alice, "meets", 2); !sameSet(got, []id.RoomID{lobby}) {
			t.Fatalf("search by topic = %v, want the lobby", got)
		}
		if got := pagePublicRooms(t, srv, alice, "no such room anywhere", 2); len(got) != 0 {
			t.Fatalf("search for nothing = %v", got)
		}

		// Unpublishing hides the room from the directory.
		if r := srv.doJSON(t, ctx, "PUT", visPath, alice.AccessToken, map[string]any{"visibility": "private"}); r.status != 200 {
			t.Fatalf("unpublish: %d %s", r.status, truncate(r.body))
		}
		if r := srv.do(t, ctx, "GET", visPath, "", nil); r.object(t)["visibility"] != "private" {
			t.Fatalf("visibility after unpublish: %s", r.body)
		}
		if got := pagePublicRooms(t, srv, alice, "", 2); !sameSet(got, pagers) {
			t.Fatalf("publicRooms after unpublishing the lobby = %v, want %v", got, pagers)
		}
	})
}

// pagePublicRooms pages through the directory with limit: GET when term is
// empty, POST with filter.generic_search_term otherwise. It fails on a
// room listed twice and checks the room entries' shape.
func pagePublicRooms(t *testing.T, srv *server, c *mautrix.Client, term string, limit int) []id.RoomID {
	t.Helper()
	ctx := testContext(t)
	var out []id.RoomID
	since := ""
	for page := 0; ; page++ {
		if page == maxPages {
			t.Fatalf("publicRooms did not end after %d pages", maxPages)
		}
		var resp mautrix.RespPublicRooms
		if term == "" {
			r, err := c.PublicRooms(ctx, &mautrix.ReqPublicRooms{Limit: limit, Since: since})
			if err != nil {
				t.Fatalf("GET /publicRooms since=%q: %v", since, err)
			}
			resp = *r
		} else {
			body := map[string]any{"limit": limit, "filter": map[string]any{"generic_search_term": term}}
			if since != "" {
				body["since"] = since
			}
			if _, err := c.MakeRequest(ctx, "POST", c.BuildClientURL("v3", "publicRooms"), body, &resp); err != nil {
				t.Fatalf("POST /publicRooms since=%q: %v", since, err)
			}
		}
		if len(resp.Chunk) > limit {
			t.Fatalf("publicRooms limit=%d returned %d rooms", limit, len(resp.Chunk))
		}
		for _, r := range resp.Chunk {
			if slices.Contains(out, r.RoomID) {
				t.Fatalf("publicRooms listed %s twice", r.RoomID)
			}
			if r.NumJoinedMembers < 1 || r.JoinRule != "public" {
				t.Fatalf("publicRooms entry %+v: want num_joined_members >= 1 and join_rule public", r)
			}
			out = append(out, r.RoomID)
		}
		if resp.NextBatch == "" {
			return out
		}
		if len(resp.Chunk) == 0 {
			t.Fatalf("publicRooms returned an empty page with next_batch %q", resp.NextBatch)
		}
		since = resp.NextBatch
	}
}

func sameSet[T comparable](a, b []T) bool {
	if len(a) != len(b) {
		return false
	}
	for _, x := range a {
		if !slices.Contains(b, x) {
			return false
		}
	}
	return true
}
