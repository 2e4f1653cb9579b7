package e2e_test

import (
	"context"
	"encoding/json"
	"net/url"
	"slices"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"ganglion/internal/testutil"
)

// searchResult is the part of a /search response the tests read.
type searchResult struct {
	SearchCategories struct {
		RoomEvents struct {
			Count      int      `json:"count"`
			Highlights []string `json:"highlights"`
			NextBatch  string   `json:"next_batch"`
			Results    []struct {
				Rank    float64      `json:"rank"`
				Result  *event.Event `json:"result"`
				Context *struct {
					EventsBefore []*event.Event            `json:"events_before"`
					EventsAfter  []*event.Event            `json:"events_after"`
					ProfileInfo  map[string]map[string]any `json:"profile_info"`
					Start, End   string
				} `json:"context"`
			} `json:"results"`
			State  map[string][]*event.Event                        `json:"state"`
			Groups map[string]map[string]struct{ Results []string } `json:"groups"`
		} `json:"room_events"`
	} `json:"search_categories"`
}

func (r *searchResult) eventIDs() []id.EventID {
	var out []id.EventID
	for _, res := range r.SearchCategories.RoomEvents.Results {
		out = append(out, res.Result.ID)
	}
	return out
}

// searchEvents calls POST /search with the real client.
func searchEvents(t testing.TB, ctx context.Context, c *mautrix.Client, criteria map[string]any, nextBatch string) *searchResult {
	t.Helper()
	var q map[string]string
	if nextBatch != "" {
		q = map[string]string{"next_batch": nextBatch}
	}
	u := c.BuildURLWithQuery(mautrix.ClientURLPath{"v3", "search"}, q)
	var resp searchResult
	if _, err := c.MakeRequest(ctx, "POST", u, map[string]any{"search_categories": map[string]any{"room_events": criteria}}, &resp); err != nil {
		t.Fatalf("%s: /search %v: %v", c.UserID, criteria, err)
	}
	return &resp
}

func sentIn(resp *mautrix.RespSync, roomID id.RoomID, eventID id.EventID) bool {
	return slices.Contains(ids(timelineOf(resp, roomID), ""), eventID)
}

// TestFullTextSearch: a message is searchable as soon as its recipient's
// sync has shown it; search never returns what history visibility hides
// (before joining a "joined" room, after leaving); paging, ordering,
// context, state, groups and bad input.
func TestFullTextSearch(t *testing.T) {
	t.Parallel()
	runDeployments(t, []string{engineSQLite, enginePostgres, engineFleetRouter}, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		alice := srv.register(t, ctx, "alice")
		bob := srv.register(t, ctx, "bob")
		carol := srv.register(t, ctx, "carol")
		if err := alice.SetDisplayName(ctx, "Alice Searcher"); err != nil {
			t.Fatal(err)
		}

		room := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "private_chat", Name: "Fruit"})
		if _, err := alice.SendStateEvent(ctx, room, event.StateHistoryVisibility, "",
			map[string]any{"history_visibility": "joined"}); err != nil {
			t.Fatal(err)
		}
		early := send(t, ctx, alice, room, "secret early pineapple", "early")
		invite(t, ctx, alice, room, bob.UserID)
		join(t, ctx, bob, room.String())
		bobSync, _ := newSyncer(t, ctx, bob, "")

		// Searchable within the sync that shows it.
		seen := send(t, ctx, alice, room, "Pineapples for everyone", "seen")
		bobSync.until(t, ctx, "alice's message", func(r *mautrix.RespSync) bool { return sentIn(r, room, seen) })
		got := searchEvents(t, ctx, bob, map[string]any{"search_term": "pineapple"}, "")
		if !slices.Equal(got.eventIDs(), []id.EventID{seen}) {
			t.Fatalf("bob's search: %v, want only %s (not %s, from before he joined)", got.eventIDs(), seen, early)
		}
		if c := got.SearchCategories.RoomEvents.Highlights; !slices.Contains(c, "pineapple") {
			t.Fatalf("highlights %v", c)
		}
		// alice sees both; carol, never in the room, nothing.
		if got := searchEvents(t, ctx, alice, map[string]any{"search_term": "PINEAPPLE", "order_by": "recent"}, ""); !slices.Equal(got.eventIDs(), []id.EventID{seen, early}) {
			t.Fatalf("alice's search: %v", got.eventIDs())
		}
		if got := searchEvents(t, ctx, carol, map[string]any{"search_term": "pineapple"}, ""); len(got.eventIDs()) != 0 || got.SearchCategories.RoomEvents.Count != 0 {
			t.Fatalf("carol's search: %+v", got.SearchCategories.RoomEvents)
		}

		// Context, profile, state and groups.
		after := send(t, ctx, alice, room, "after the fruit", "after")
		got = searchEvents(t, ctx, bob, map[string]any{"search_term": "pineapple", "include_state": true,
			"event_context": map[string]any{"before_limit": 3, "after_limit": 1, "include_profile": true},
			"groupings":     map[string]any{"group_by": []any{map[string]any{"key": "room_id"}, map[string]any{"key": "sender"}}}}, "")
		res := got.SearchCategories.RoomEvents
		if len(res.Results) != 1 || res.Results[0].Context == nil {
			t.Fatalf("context search: %+v", res)
		}
		cx := res.Results[0].Context
		if len(cx.EventsAfter) != 1 || cx.EventsAfter[0].ID != after {
			t.Fatalf("events_after: %v, want %s", ids(cx.EventsAfter, ""), after)
		}
		for _, ev := range cx.EventsBefore {
			if ev.ID == early {
				t.Fatalf("context leaked the event from before bob joined")
			}
		}
		if name := cx.ProfileInfo[alice.UserID.String()]["displayname"]; name != "Alice Searcher" {
			t.Fatalf("profile_info: %v", cx.ProfileInfo)
		}
		if len(res.State[room.String()]) == 0 {
			t.Fatalf("include_state: no state for %s", room)
		}
		if g := res.Groups["room_id"][room.String()].Results; !slices.Equal(g, []string{seen.String()}) {
			t.Fatalf("groups by room: %v", res.Groups)
		}
		if g := res.Groups["sender"][alice.UserID.String()].Results; !slices.Equal(g, []string{seen.String()}) {
			t.Fatalf("groups by sender: %v", res.Groups)
		}

		// After bob leaves, what was sent while he was there stays findable,
		// what is sent later never is.
		if _, err := bob.LeaveRoom(ctx, room); err != nil {
			t.Fatal(err)
		}
		later := send(t, ctx, alice, room, "pineapple after bob left", "later")
		if got := searchEvents(t, ctx, bob, map[string]any{"search_term": "pineapple"}, ""); !slices.Equal(got.eventIDs(), []id.EventID{seen}) ||
			got.SearchCategories.RoomEvents.Count != 1 {
			t.Fatalf("bob's search after leaving: %v (count %d), not %s", got.eventIDs(), got.SearchCategories.RoomEvents.Count, later)
		}

		// Paging, both orders; filters.
		kiwiRoom := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		join(t, ctx, bob, kiwiRoom.String())
		var kiwis []id.EventID
		for i := range 5 {
			kiwis = append(kiwis, send(t, ctx, alice, kiwiRoom, "kiwi number "+itoa(i), "kiwi"+itoa(i)))
		}
		for _, order := range []string{"recent", "rank"} {
			var all []id.EventID
			next := ""
			for page := 0; ; page++ {
				if page > 5 {
					t.Fatalf("%s: too many pages", order)
				}
				got := searchEvents(t, ctx, bob, map[string]any{"search_term": "kiwi", "order_by": order,
					"filter": map[string]any{"limit": 2}}, next)
				if n := len(got.eventIDs()); n > 2 {
					t.Fatalf("%s page %d has %d results", order, page, n)
				}
				if got.SearchCategories.RoomEvents.Count != 5 {
					t.Fatalf("%s count %d, want 5", order, got.SearchCategories.RoomEvents.Count)
				}
				all = append(all, got.eventIDs()...)
				if next = got.SearchCategories.RoomEvents.NextBatch; next == "" {
					break
				}
			}
			if order == "recent" && !slices.Equal(all, reversed(kiwis)) {
				t.Fatalf("recent pages: %v, want %v", all, reversed(kiwis))
			}
			slices.Sort(all)
			want := slices.Clone(kiwis)
			slices.Sort(want)
			if !slices.Equal(all, want) {
				t.Fatalf("%s pages: %v, want each of %v once", order, all, want)
			}
		}
		if got := searchEvents(t, ctx, bob, map[string]any{"search_term": "kiwi",
			"filter": map[string]any{"not_rooms": []string{kiwiRoom.String()}}}, ""); len(got.eventIDs()) != 0 {
			t.Fatalf("not_rooms: %v", got.eventIDs())
		}
		if got := searchEvents(t, ctx, bob, map[string]any{"search_term": "kiwi",
			"filter": map[string]any{"senders": []string{bob.UserID.String()}}}, ""); len(got.eventIDs()) != 0 {
			t.Fatalf("senders: %v", got.eventIDs())
		}
		// Room names are searched too (keys).
		if got := searchEvents(t, ctx, alice, map[string]any{"search_term": "fruit", "keys": []string{"content.name"}}, ""); len(got.eventIDs()) != 1 {
			t.Fatalf("search content.name: %v", got.eventIDs())
		}

		// A redacted message is no longer found.
		if _, err := alice.RedactEvent(ctx, kiwiRoom, kiwis[0]); err != nil {
			t.Fatal(err)
		}
		if got := searchEvents(t, ctx, bob, map[string]any{"search_term": "kiwi", "order_by": "recent"}, ""); slices.Contains(got.eventIDs(), kiwis[0]) {
			t.Fatalf("redacted event found: %v", got.eventIDs())
		}

		// Bad input.
		path := clientPath("search")
		tok := bob.AccessToken
		for _, tc := range []struct {
			name   string
			body   string
			query  string
			status int
			codes  []string
		}{
			{"not an object", `[]`, "", 400, []string{"M_NOT_JSON", "M_BAD_JSON"}},
			{"not JSON", `{`, "", 400, []string{"M_NOT_JSON"}},
			{"no categories", `{}`, "", 400, []string{"M_MISSING_PARAM", "M_BAD_JSON"}},
			{"no search_term", `{"search_categories":{"room_events":{}}}`, "", 400, []string{"M_MISSING_PARAM", "M_BAD_JSON"}},
			{"search_term not a string", `{"search_categories":{"room_events":{"search_term":5}}}`, "", 400, []string{"M_BAD_JSON"}},
			{"bad order_by", `{"search_categories":{"room_events":{"search_term":"x","order_by":"oldest"}}}`, "", 400, []string{"M_INVALID_PARAM"}},
			{"bad key", `{"search_categories":{"room_events":{"search_term":"x","keys":["content.url"]}}}`, "", 400, []string{"M_INVALID_PARAM"}},
			{"bad filter", `{"search_categories":{"room_events":{"search_term":"x","filter":{"rooms":"!a:b"}}}}`, "", 400, []string{"M_BAD_JSON"}},
			{"bad next_batch", `{"search_categories":{"room_events":{"search_term":"x"}}}`, "?next_batch=" + url.QueryEscape("garbage!"), 400, []string{"M_INVALID_PARAM"}},
			{"bad group_by", `{"search_categories":{"room_events":{"search_term":"x","groupings":{"group_by":[{"key":"type"}]}}}}`, "", 400, []string{"M_INVALID_PARAM"}},
		} {
			r := srv.do(t, ctx, "POST", path+tc.query, tok, []byte(tc.body))
			if r.status != tc.status {
				t.Fatalf("%s: status %d, want %d: %s", tc.name, r.status, tc.status, truncate(r.body))
			}
			wantRawError(t, r, tc.status, tc.codes...)
		}
		// A next_batch of one order is refused by the other.
		got = searchEvents(t, ctx, bob, map[string]any{"search_term": "kiwi", "order_by": "recent", "filter": map[string]any{"limit": 1}}, "")
		r := srv.do(t, ctx, "POST", path+"?next_batch="+url.QueryEscape(got.SearchCategories.RoomEvents.NextBatch), tok,
			[]byte(`{"search_categories":{"room_events":{"search_term":"kiwi","order_by":"rank"}}}`))
		wantRawError(t, r, 400, "M_INVALID_PARAM")
		if r := srv.do(t, ctx, "POST", path, "", []byte(`{}`)); r.status != 401 {
			t.Fatalf("unauthenticated /search: %d", r.status)
		}
	})
}

// dirEntries maps the results of a directory search to display names.
func dirEntries(resp *mautrix.RespSearchUserDirectory) map[id.UserID]string {
	out := map[id.UserID]string{}
	for _, e := range resp.Results {
		name, _ := e.Extra["display_name"].(string)
		out[e.UserID] = name
	}
	return out
}

func searchDir(t testing.TB, ctx context.Context, c *mautrix.Client, term string) map[id.UserID]string {
	t.Helper()
	resp, err := c.SearchUserDirectory(ctx, term, 10)
	if err != nil {
		t.Fatalf("%s: user directory search %q: %v", c.UserID, term, err)
	}
	return dirEntries(resp)
}

// waitDir polls a directory search (the directory is updated
// asynchronously by its one updater) until cond holds.
func waitDir(t testing.TB, ctx context.Context, c *mautrix.Client, term, what string, cond func(map[id.UserID]string) bool) {
	t.Helper()
	testutil.Eventually(t, waitLimit, what, func() bool { return cond(searchDir(t, ctx, c, term)) })
}

// TestUserDirectory: users are found once they share a room, under their
// per-room name by those who share that room only, and hidden again when
// they leave; bad input.
func TestUserDirectory(t *testing.T) {
	t.Parallel()
	runDeployments(t, []string{engineSQLite, enginePostgres, engineFleet}, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		alice := srv.register(t, ctx, "alice")
		bob := srv.register(t, ctx, "bob")
		carol := srv.register(t, ctx, "carol")
		if err := alice.SetDisplayName(ctx, "Alice Wonderland"); err != nil {
			t.Fatal(err)
		}
		if got := searchDir(t, ctx, bob, "wonder"); len(got) != 0 {
			t.Fatalf("bob finds alice before sharing a room: %v", got)
		}
		room := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "private_chat"})
		invite(t, ctx, alice, room, bob.UserID)
		join(t, ctx, bob, room.String())
		waitDir(t, ctx, bob, "wonder", "bob finds alice once they share a room", func(m map[id.UserID]string) bool {
			return m[alice.UserID] == "Alice Wonderland"
		})
		if got := searchDir(t, ctx, carol, "wonder"); len(got) != 0 {
			t.Fatalf("carol finds alice without sharing a room: %v", got)
		}

		// A per-room display name, found by room-mates only.
		if _, err := bob.SendStateEvent(ctx, room, event.StateMember, bob.UserID.String(),
			map[string]any{"membership": "join", "displayname": "Bobby Tables"}); err != nil {
			t.Fatal(err)
		}
		waitDir(t, ctx, alice, "tables", "alice finds bob by his name in their room", func(m map[id.UserID]string) bool {
			return m[bob.UserID] == "Bobby Tables"
		})
		if got := searchDir(t, ctx, carol, "tables"); len(got) != 0 {
			t.Fatalf("carol finds bob's room name: %v", got)
		}

		// A public room shows its members to everyone.
		lobby := createRoom(t, ctx, carol, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		waitDir(t, ctx, alice, "carol", "alice finds carol from carol's public room", func(m map[id.UserID]string) bool {
			_, ok := m[carol.UserID]
			return ok
		})
		_ = lobby

		// Leaving hides bob from alice again.
		if _, err := bob.LeaveRoom(ctx, room); err != nil {
			t.Fatal(err)
		}
		waitDir(t, ctx, alice, "bob", "alice no longer finds bob after he left", func(m map[id.UserID]string) bool {
			_, ok := m[bob.UserID]
			return !ok
		})
		if got := searchDir(t, ctx, alice, "tables"); len(got) != 0 {
			t.Fatalf("bob's room name outlived his membership: %v", got)
		}

		path := clientPath("user_directory", "search")
		for _, tc := range []struct {
			name  string
			body  string
			codes []string
		}{
			{"not an object", `"bob"`, []string{"M_NOT_JSON", "M_BAD_JSON"}},
			{"no search_term", `{"limit": 3}`, []string{"M_MISSING_PARAM", "M_BAD_JSON"}},
			{"search_term not a string", `{"search_term": ["bob"]}`, []string{"M_BAD_JSON"}},
			{"limit not a number", `{"search_term": "bob", "limit": "3"}`, []string{"M_BAD_JSON"}},
			{"negative limit", `{"search_term": "bob", "limit": -1}`, []string{"M_INVALID_PARAM"}},
		} {
			r := srv.do(t, ctx, "POST", path, alice.AccessToken, []byte(tc.body))
			if r.status != 400 {
				t.Fatalf("%s: status %d: %s", tc.name, r.status, truncate(r.body))
			}
			wantRawError(t, r, 400, tc.codes...)
		}
		r := srv.do(t, ctx, "POST", path, alice.AccessToken, []byte(`{"search_term": "", "limit": 1}`))
		if r.status != 200 {
			t.Fatalf("empty term: %d %s", r.status, truncate(r.body))
		}
		var empty struct {
			Limited *bool `json:"limited"`
			Results []any `json:"results"`
		}
		if err := json.Unmarshal(r.body, &empty); err != nil || empty.Limited == nil || empty.Results == nil {
			t.Fatalf("empty term answer %s", truncate(r.body))
		}
	})
}

// TestUserDirectorySearchAllUsers: with search_all_users every local user
// is found by global name, with no shared room; a user joining later is
// found without a restart; limit and limited.
func TestUserDirectorySearchAllUsers(t *testing.T) {
	t.Parallel()
	opt := func(cfg map[string]any) {
		cfg["user_directory"] = map[string]any{"search_all_users": true, "prefer_local_users": true}
	}
	runDeployments(t, []string{engineSQLite}, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		alice := srv.register(t, ctx, "alice")
		for _, n := range []string{"zed1", "zed2", "zed3"} {
			srv.register(t, ctx, n)
		}
		got := searchDir(t, ctx, alice, "zed")
		if len(got) != 3 {
			t.Fatalf("search_all_users: %v", got)
		}
		resp, err := alice.SearchUserDirectory(ctx, "zed", 2)
		if err != nil || len(resp.Results) != 2 || !resp.Limited {
			t.Fatalf("limit 2: %+v, %v", resp, err)
		}
		// Global name changes are searchable at once (written with the
		// profile, not by the updater).
		zed := srv.mustLogin(t, ctx, "zed1", password("zed1"))
		if err := zed.SetDisplayName(ctx, "Quentin Quux"); err != nil {
			t.Fatal(err)
		}
		if got := searchDir(t, ctx, alice, "quux"); got[zed.UserID] != "Quentin Quux" {
			t.Fatalf("renamed user: %v", got)
		}
		// The directory survives a restart (durable tables and position).
		srv.restart(t)
		ctx2, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if got := searchDir(t, ctx2, alice, "quux"); got[zed.UserID] != "Quentin Quux" {
			t.Fatalf("after restart: %v", got)
		}
	}, opt)
}
