package e2e_test

import (
	"encoding/json"
	"net/url"
	"slices"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
)

// TestSyncFilterAPIAndBadInput: a filter uploaded with POST /filter reads
// back with GET and shapes /sync by its id; other users' filters are out of
// reach; /sync refuses malformed filters, tokens and parameters with the
// spec's error codes.
func TestSyncFilterAPIAndBadInput(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		alice := srv.register(t, ctx, "alice")
		bob := srv.register(t, ctx, "bob")
		room := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "private_chat"})
		for i := range 3 {
			send(t, ctx, alice, room, "m"+itoa(i), "m"+itoa(i))
		}
		tok := alice.AccessToken

		// Upload, read back, use.
		doc := map[string]any{"room": map[string]any{"timeline": map[string]any{"limit": 1}}}
		r := srv.doJSON(t, ctx, "POST", clientPath("user", alice.UserID.String(), "filter"), tok, doc)
		if r.status != 200 {
			t.Fatalf("POST filter: %d %s", r.status, truncate(r.body))
		}
		filterID, _ := r.object(t)["filter_id"].(string)
		if filterID == "" {
			t.Fatalf("POST filter: no filter_id in %s", truncate(r.body))
		}
		r = srv.do(t, ctx, "GET", clientPath("user", alice.UserID.String(), "filter", filterID), tok, nil)
		if r.status != 200 {
			t.Fatalf("GET filter: %d %s", r.status, truncate(r.body))
		}
		var back struct {
			Room struct {
				Timeline struct {
					Limit int `json:"limit"`
				} `json:"timeline"`
			} `json:"room"`
		}
		if err := json.Unmarshal(r.body, &back); err != nil || back.Room.Timeline.Limit != 1 {
			t.Fatalf("GET filter = %s (%v), want the uploaded timeline limit 1", truncate(r.body), err)
		}
		jr := joinedRoom(t, doSync(t, ctx, alice, syncParams{filter: filterID}), room)
		if len(jr.Timeline.Events) != 1 || !jr.Timeline.Limited {
			t.Fatalf("sync with filter %s: %d timeline events (limited %v), want 1, limited", filterID, len(jr.Timeline.Events), jr.Timeline.Limited)
		}

		// A room list in the filter limits the rooms.
		other := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "private_chat"})
		resp := doSync(t, ctx, alice, syncParams{filter: filterJSON(t, map[string]any{"room": map[string]any{"rooms": []string{other.String()}}})})
		if got := roomKeys(resp.Rooms.Join); !slices.Equal(got, []id.RoomID{other}) {
			t.Fatalf("sync with room filter [%s]: joined rooms %v", other, got)
		}
		resp = doSync(t, ctx, alice, syncParams{filter: filterJSON(t, map[string]any{"room": map[string]any{"not_rooms": []string{other.String()}}})})
		if got := roomKeys(resp.Rooms.Join); !slices.Equal(got, []id.RoomID{room}) {
			t.Fatalf("sync with not_rooms [%s]: joined rooms %v", other, got)
		}

		// Other users' filters.
		r = srv.doJSON(t, ctx, "POST", clientPath("user", bob.UserID.String(), "filter"), tok, doc)
		wantRawError(t, r, 403, "M_FORBIDDEN")
		r = srv.do(t, ctx, "GET", clientPath("user", alice.UserID.String(), "filter", filterID), bob.AccessToken, nil)
		wantRawError(t, r, 403, "M_FORBIDDEN")
		// bob's own lookup of alice's id finds nothing of his.
		r = srv.do(t, ctx, "GET", "/_matrix/client/v3/sync?filter="+url.QueryEscape(filterID), bob.AccessToken, nil)
		wantRawError(t, r, 404, "M_NOT_FOUND")

		// Bad /sync input.
		since := doSync(t, ctx, alice, syncParams{}).NextBatch
		for _, c := range []struct {
			name   string
			query  url.Values
			status int
			code   string
		}{
			{"malformed inline filter", url.Values{"filter": {`{"room":`}}, 400, "M_NOT_JSON"},
			{"inline filter with a wrong type", url.Values{"filter": {`{"room":{"timeline":{"limit":"ten"}}}`}}, 400, "M_BAD_JSON"},
			{"inline filter with a wrong nested type", url.Values{"filter": {`{"room":{"rooms":"!a:b"}}`}}, 400, "M_BAD_JSON"},
			{"unknown filter id", url.Values{"filter": {"987654"}}, 404, "M_NOT_FOUND"},
			{"garbage since", url.Values{"since": {"garbage"}}, 400, "M_INVALID_PARAM"},
			{"since with a bad part", url.Values{"since": {"s1_x_3"}}, 400, "M_INVALID_PARAM"},
			{"bad set_presence", url.Values{"since": {since}, "set_presence": {"dancing"}}, 400, "M_INVALID_PARAM"},
			{"non-numeric timeout", url.Values{"since": {since}, "timeout": {"soon"}}, 400, "M_INVALID_PARAM"},
			{"negative timeout", url.Values{"since": {since}, "timeout": {"-5"}}, 400, "M_INVALID_PARAM"},
			{"bad full_state", url.Values{"full_state": {"perhaps"}}, 400, "M_INVALID_PARAM"},
		} {
			r := srv.do(t, ctx, "GET", "/_matrix/client/v3/sync?"+c.query.Encode(), tok, nil)
			if r.status != c.status {
				t.Errorf("%s: status %d, want %d; body %s", c.name, r.status, c.status, truncate(r.body))
				continue
			}
			wantRawError(t, r, c.status, c.code)
		}
		// Unauthenticated.
		wantRawError(t, srv.do(t, ctx, "GET", "/_matrix/client/v3/sync", "", nil), 401, "M_MISSING_TOKEN")
	})
}
