package e2e_test

import (
	"crypto/hmac"
	"crypto/sha1"
	"encoding/base64"
	"encoding/json"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"ganglion/internal/testutil"
)

const e2eTURNSecret = "e2e-turn-secret"

// withSmallEndpointsConfig turns on TURN credentials and server notices.
func withSmallEndpointsConfig() configOption {
	return func(cfg map[string]any) {
		cfg["turn_uris"] = []string{"turn:turn.e2e.test?transport=udp", "turns:turn.e2e.test"}
		cfg["turn_shared_secret"] = e2eTURNSecret
		cfg["turn_user_lifetime"] = "2h"
		cfg["server_notices"] = map[string]any{
			"system_mxid_localpart":    "notices",
			"system_mxid_display_name": "Server Notices",
			"room_name":                "Notices",
			"room_topic":               "From the admins",
		}
		cfg["rc_reports"] = fastLimit()
	}
}

// TestReportsNoticesAndPreviews covers the smaller client endpoints of issue 14 part 6
// (second half) on one deployment per engine: /voip/turnServer, rich
// topics, unsigned.membership, /publicRooms filters, the room summary,
// /rooms/{id}/initialSync, content reports with their admin API and server
// notices, each with its bad input.
func TestReportsNoticesAndPreviews(t *testing.T) {
	t.Parallel()
	runDeployments(t, []string{engineSQLite, enginePostgres, engineFleetRouter}, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		alice := srv.register(t, ctx, "alice")
		bob := srv.register(t, ctx, "bob")
		eve := srv.register(t, ctx, "eve")
		admin := srv.registerAdmin(t, ctx, "root")

		t.Run("turnServer", func(t *testing.T) {
			before := time.Now()
			resp, err := alice.TurnServer(ctx)
			if err != nil {
				t.Fatalf("turnServer: %v", err)
			}
			expiry, user, ok := strings.Cut(resp.Username, ":")
			if !ok || user != alice.UserID.String() {
				t.Fatalf("username %q, want <expiry>:%s", resp.Username, alice.UserID)
			}
			exp, err := strconv.ParseInt(expiry, 10, 64)
			if err != nil || exp < before.Add(2*time.Hour).Unix()-1 || exp > time.Now().Add(2*time.Hour).Unix()+1 {
				t.Fatalf("expiry %q, want now + 2h", expiry)
			}
			mac := hmac.New(sha1.New, []byte(e2eTURNSecret))
			mac.Write([]byte(resp.Username))
			if want := base64.StdEncoding.EncodeToString(mac.Sum(nil)); resp.Password != want {
				t.Fatalf("password %q, want base64(HMAC-SHA1(secret, username)) %q", resp.Password, want)
			}
			if resp.TTL != 7200 || !slices.Equal(resp.URIs, []string{"turn:turn.e2e.test?transport=udp", "turns:turn.e2e.test"}) {
				t.Fatalf("ttl %d uris %v", resp.TTL, resp.URIs)
			}
			wantRawError(t, srv.do(t, ctx, "GET", clientPath("voip", "turnServer"), "", nil), 401, "M_MISSING_TOKEN")
			wantRawError(t, srv.do(t, ctx, "POST", clientPath("voip", "turnServer"), alice.AccessToken, []byte(`{}`)), 405, "M_UNRECOGNIZED")
		})

		t.Run("richTopic", func(t *testing.T) {
			room := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "private_chat", Topic: "Plain words"})
			var content map[string]any
			if err := alice.StateEvent(ctx, room, event.StateTopic, "", &content); err != nil {
				t.Fatalf("topic: %v", err)
			}
			want := map[string]any{"topic": "Plain words", "m.topic": map[string]any{
				"m.text": []any{map[string]any{"body": "Plain words", "mimetype": "text/plain"}}}}
			if !jsonSame(content, want) {
				t.Fatalf("m.room.topic content %v, want %v", content, want)
			}
			// A rich topic set by a client is served as sent.
			rich := map[string]any{"topic": "x", "m.topic": map[string]any{"m.text": []any{
				map[string]any{"body": "<b>x</b>", "mimetype": "text/html"}, map[string]any{"body": "x"}}}}
			if _, err := alice.SendStateEvent(ctx, room, event.StateTopic, "", rich); err != nil {
				t.Fatalf("set rich topic: %v", err)
			}
			if err := alice.StateEvent(ctx, room, event.StateTopic, "", &content); err != nil || !jsonSame(content, rich) {
				t.Fatalf("rich topic read back %v (%v), want %v", content, err, rich)
			}
		})

		t.Run("unsignedMembership", func(t *testing.T) {
			room := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "public_chat",
				InitialState: []*event.Event{{Type: event.StateHistoryVisibility, Content: event.Content{
					Raw: map[string]any{"history_visibility": "world_readable"}}}}})
			early := send(t, ctx, alice, room, "before bob", "m-early")
			join(t, ctx, bob, room.String())
			late := send(t, ctx, alice, room, "after bob joined", "m-late")
			if _, err := bob.LeaveRoom(ctx, room); err != nil {
				t.Fatalf("bob leaves: %v", err)
			}
			gone := send(t, ctx, alice, room, "after bob left", "m-gone")
			react, err := alice.SendMessageEvent(ctx, room, event.EventReaction, map[string]any{
				"m.relates_to": map[string]any{"rel_type": "m.annotation", "event_id": late, "key": "+1"}})
			if err != nil {
				t.Fatalf("reaction: %v", err)
			}
			want := map[id.EventID]event.Membership{early: "leave", late: "join", gone: "leave", react.EventID: "leave"}

			check := func(what string, evs []*event.Event) {
				t.Helper()
				seen := 0
				for _, ev := range evs {
					if ev.Unsigned.Membership == "" {
						t.Fatalf("%s: %s (%s) has no unsigned.membership", what, ev.ID, ev.Type)
					}
					if w, ok := want[ev.ID]; ok {
						seen++
						if ev.Unsigned.Membership != w {
							t.Fatalf("%s: %s membership %q, want %q", what, ev.ID, ev.Unsigned.Membership, w)
						}
					}
					if ev.Type == event.StateMember && ev.GetStateKey() == bob.UserID.String() {
						m := event.Membership(ev.Content.Raw["membership"].(string))
						if ev.Unsigned.Membership != m {
							t.Fatalf("%s: bob's own %s event carries %q, want its own change %q", what, m, ev.Unsigned.Membership, m)
						}
					}
				}
				if seen == 0 {
					t.Fatalf("%s: none of the checked events served", what)
				}
			}
			// Bob peeks the world-readable room after leaving.
			msgs, err := bob.Messages(ctx, room, "", "", mautrix.DirectionBackward, nil, 50)
			if err != nil {
				t.Fatalf("messages: %v", err)
			}
			check("bob's /messages", msgs.Chunk)
			ev, err := bob.GetEvent(ctx, room, late)
			if err != nil {
				t.Fatalf("event: %v", err)
			}
			check("bob's /event", []*event.Event{ev})
			rel, err := bob.GetRelations(ctx, room, late, &mautrix.ReqGetRelations{})
			if err != nil {
				t.Fatalf("relations: %v", err)
			}
			check("bob's /relations", rel.Chunk)
			found := searchEvents(t, ctx, bob, map[string]any{"search_term": "joined",
				"filter": map[string]any{"rooms": []id.RoomID{room}}, "event_context": map[string]any{"before_limit": 1, "after_limit": 1}}, "")
			if res := found.SearchCategories.RoomEvents.Results; len(res) != 1 || res[0].Result.ID != late || res[0].Context == nil {
				t.Fatalf("bob's search: %v, want %s with context", found.eventIDs(), late)
			} else {
				check("bob's /search", append(append([]*event.Event{res[0].Result}, res[0].Context.EventsBefore...), res[0].Context.EventsAfter...))
			}
			cx, err := alice.Context(ctx, room, late, nil, 2)
			if err != nil {
				t.Fatalf("context: %v", err)
			}
			all := append(append([]*event.Event{cx.Event}, cx.EventsBefore...), cx.EventsAfter...)
			for _, e := range all {
				if e.Unsigned.Membership != "join" {
					t.Fatalf("alice's /context: %s membership %q, want join (she was always in)", e.ID, e.Unsigned.Membership)
				}
			}
			resp := doSync(t, ctx, alice, syncParams{})
			tl := timelineOf(resp, room)
			if len(tl) == 0 {
				t.Fatalf("alice's sync has no timeline for the room")
			}
			for _, e := range tl {
				// The create event comes before her join.
				if w := event.Membership("join"); e.Type == event.StateCreate && e.Unsigned.Membership != "leave" ||
					e.Type != event.StateCreate && e.Unsigned.Membership != w {
					t.Fatalf("alice's /sync: %s (%s) membership %q", e.ID, e.Type, e.Unsigned.Membership)
				}
			}
			// Bob's initial sync with his left room (include_leave) shows
			// his leave as leave.
			r := srv.do(t, ctx, "GET", "/_matrix/client/v3/sync?filter="+url.QueryEscape(`{"room":{"include_leave":true}}`), bob.AccessToken, nil)
			if r.status != 200 {
				t.Fatalf("bob's sync: %d %s", r.status, truncate(r.body))
			}
			var bs mautrix.RespSync
			if err := json.Unmarshal(r.body, &bs); err != nil {
				t.Fatalf("bob's sync: %v", err)
			}
			left, ok := bs.Rooms.Leave[room]
			if !ok || len(left.Timeline.Events) == 0 {
				t.Fatalf("bob's sync lacks the left room's timeline: %s", truncate(r.body))
			}
			check("bob's /sync (leave)", left.Timeline.Events)
		})

		t.Run("publicRoomsFilters", func(t *testing.T) {
			one := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Visibility: "public", Preset: "public_chat", Name: "Zebrafilter one"})
			two := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Visibility: "public", Preset: "public_chat", Topic: "all about ZEBRAFILTER"})
			join(t, ctx, bob, two.String()) // two members: listed first
			space := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Visibility: "public", Preset: "public_chat", Name: "Zebrafilter space",
				CreationContent: map[string]any{"type": "m.space"}})
			type page struct {
				Chunk []struct {
					RoomID   id.RoomID `json:"room_id"`
					RoomType *string   `json:"room_type"`
				} `json:"chunk"`
				NextBatch string `json:"next_batch"`
				Total     int    `json:"total_room_count_estimate"`
			}
			query := func(body map[string]any) page {
				t.Helper()
				r := srv.doJSON(t, ctx, "POST", clientPath("publicRooms"), eve.AccessToken, body)
				if r.status != 200 {
					t.Fatalf("publicRooms %v: %d %s", body, r.status, truncate(r.body))
				}
				var p page
				if err := json.Unmarshal(r.body, &p); err != nil {
					t.Fatalf("publicRooms: %v", err)
				}
				return p
			}
			// Paged one at a time under a filter: stable, complete, counted.
			var got []id.RoomID
			since := ""
			for i := 0; i < 5; i++ {
				body := map[string]any{"limit": 1, "filter": map[string]any{"generic_search_term": "zebrafilter", "room_types": []any{nil}}}
				if since != "" {
					body["since"] = since
				}
				p := query(body)
				if p.Total != 2 {
					t.Fatalf("total_room_count_estimate %d, want 2 (the filtered count)", p.Total)
				}
				for _, c := range p.Chunk {
					got = append(got, c.RoomID)
				}
				if since = p.NextBatch; since == "" {
					break
				}
			}
			if !slices.Equal(got, []id.RoomID{two, one}) {
				t.Fatalf("ordinary zebrafilter rooms paged = %v, want [%s %s] (most members first)", got, two, one)
			}
			p := query(map[string]any{"filter": map[string]any{"generic_search_term": "Zebrafilter", "room_types": []string{"m.space"}}})
			if len(p.Chunk) != 1 || p.Chunk[0].RoomID != space || p.Chunk[0].RoomType == nil || *p.Chunk[0].RoomType != "m.space" {
				t.Fatalf("spaces: %+v, want only %s", p.Chunk, space)
			}
			p = query(map[string]any{"filter": map[string]any{"generic_search_term": strings.ToUpper(one.String()[1:8])}})
			if len(p.Chunk) != 1 || p.Chunk[0].RoomID != one {
				t.Fatalf("search by room id: %+v, want %s", p.Chunk, one)
			}
			wantRawError(t, srv.doJSON(t, ctx, "POST", clientPath("publicRooms"), eve.AccessToken,
				map[string]any{"filter": map[string]any{"room_types": []any{1}}}), 400, "M_BAD_JSON")
			wantRawError(t, srv.doJSON(t, ctx, "POST", clientPath("publicRooms"), eve.AccessToken,
				map[string]any{"filter": map[string]any{"generic_search_term": 5}}), 400, "M_BAD_JSON")
			wantRawError(t, srv.doJSON(t, ctx, "POST", clientPath("publicRooms"), eve.AccessToken,
				map[string]any{"since": "bogus"}), 400, "M_INVALID_PARAM")
		})

		t.Run("roomSummary", func(t *testing.T) {
			public := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Visibility: "public", Preset: "public_chat",
				RoomAliasName: "summary-public", Name: "Summary public", Topic: "Summed up"})
			private := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "private_chat", Name: "Secret",
				InitialState: []*event.Event{{Type: event.StateEncryption, Content: event.Content{
					Raw: map[string]any{"algorithm": "m.megolm.v1.aes-sha2"}}}}})
			// The client's unstable path, by alias.
			sum, err := eve.GetRoomSummary(ctx, "#summary-public:"+serverName, serverName)
			if err != nil {
				t.Fatalf("summary of the public room: %v", err)
			}
			if sum.RoomID != public || sum.Name != "Summary public" || sum.Topic != "Summed up" || sum.JoinRule != "public" ||
				sum.NumJoinedMembers != 1 || sum.CanonicalAlias != id.RoomAlias("#summary-public:"+serverName) ||
				sum.UnstableRoomVersion == "" || sum.Membership != "leave" {
				t.Fatalf("summary %+v", sum)
			}
			// Not visible to an outsider: 404, like an unknown room.
			_, err = eve.GetRoomSummary(ctx, private.String())
			wantMatrixError(t, err, 404, "M_NOT_FOUND")
			_, err = eve.GetRoomSummary(ctx, "!nosuchroom:"+serverName)
			wantMatrixError(t, err, 404, "M_NOT_FOUND")
			_, err = eve.GetRoomSummary(ctx, "#nosuchalias:"+serverName)
			wantMatrixError(t, err, 404, "M_NOT_FOUND")
			_, err = eve.GetRoomSummary(ctx, "not-a-room")
			wantMatrixError(t, err, 400, "M_INVALID_PARAM")
			// Invited: visible, with the membership, version and encryption,
			// on the stable path.
			invite(t, ctx, alice, private, eve.UserID)
			r := srv.do(t, ctx, "GET", "/_matrix/client/v1/room_summary/"+url.PathEscape(private.String())+"?via="+serverName, eve.AccessToken, nil)
			if r.status != 200 {
				t.Fatalf("stable summary as invitee: %d %s", r.status, truncate(r.body))
			}
			m := r.object(t)
			if m["membership"] != "invite" || m["encryption"] != "m.megolm.v1.aes-sha2" || m["room_version"] == nil ||
				m["join_rule"] != "invite" || m["name"] != "Secret" || m["world_readable"] != false {
				t.Fatalf("stable summary %v", m)
			}
			// Anonymous: public rooms only, on the seed's unstable path.
			r = srv.do(t, ctx, "GET", "/_matrix/client/unstable/im.nheko.summary/rooms/"+url.PathEscape(public.String())+"/summary", "", nil)
			if r.status != 200 || r.object(t)["room_id"] != public.String() {
				t.Fatalf("anonymous summary: %d %s", r.status, truncate(r.body))
			}
			if _, has := r.object(t)["membership"]; has {
				t.Fatalf("anonymous summary has a membership: %s", r.body)
			}
			wantRawError(t, srv.do(t, ctx, "GET", "/_matrix/client/v1/room_summary/"+url.PathEscape(private.String()), "", nil), 404, "M_NOT_FOUND")
			// Restricted to members of the public room: bob sees it once he
			// is in that room, with the rooms that allow joining.
			restricted := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "private_chat", Name: "Members only",
				InitialState: []*event.Event{{Type: event.StateJoinRules, Content: event.Content{Raw: map[string]any{
					"join_rule": "restricted", "allow": []any{map[string]any{"type": "m.room_membership", "room_id": public}}}}}}})
			_, err = bob.GetRoomSummary(ctx, restricted.String())
			wantMatrixError(t, err, 404, "M_NOT_FOUND")
			join(t, ctx, bob, public.String())
			rs, err := bob.GetRoomSummary(ctx, restricted.String())
			if err != nil || rs.JoinRule != "restricted" || !slices.Equal(rs.AllowedRoomIDs, []id.RoomID{public}) {
				t.Fatalf("restricted summary for a member of the allowed room: %+v (%v)", rs, err)
			}
			wantRawError(t, srv.do(t, ctx, "GET", "/_matrix/client/v1/room_summary/"+url.PathEscape(public.String()), "bad-token", nil), 401, "M_UNKNOWN_TOKEN")
		})

		t.Run("roomInitialSync", func(t *testing.T) {
			room := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
			join(t, ctx, bob, room.String())
			msg := send(t, ctx, alice, room, "read me", "is-1")
			if err := bob.SendReceipt(ctx, room, msg, event.ReceiptTypeRead, nil); err != nil {
				t.Fatalf("receipt: %v", err)
			}
			type view struct {
				Membership string `json:"membership"`
				Messages   struct {
					Chunk []*event.Event `json:"chunk"`
					Start string         `json:"start"`
					End   string         `json:"end"`
				} `json:"messages"`
				State       []*event.Event   `json:"state"`
				Presence    []any            `json:"presence"`
				Receipts    []map[string]any `json:"receipts"`
				AccountData []any            `json:"account_data"`
			}
			get := func(c *mautrix.Client) (response, view) {
				r := srv.do(t, ctx, "GET", clientPath("rooms", room.String(), "initialSync")+"?limit=5", c.AccessToken, nil)
				var v view
				if r.status == 200 {
					if err := json.Unmarshal(r.body, &v); err != nil {
						t.Fatalf("initialSync: %v", err)
					}
				}
				return r, v
			}
			// The receipt reaches the receipts writer; wait until the
			// initial sync (any worker) reflects it.
			var v view
			testutil.Eventually(t, waitLimit, "bob's receipt in alice's room initialSync", func() bool {
				var r response
				r, v = get(alice)
				if r.status != 200 {
					t.Fatalf("initialSync: %d %s", r.status, truncate(r.body))
				}
				return len(v.Receipts) > 0
			})
			if v.Membership != "join" || v.Messages.Start == "" || v.Messages.End == "" || findEvent(v.Messages.Chunk, msg) == nil ||
				len(v.State) == 0 || v.Presence == nil {
				var got []id.EventID
				for _, e := range v.Messages.Chunk {
					got = append(got, e.ID)
				}
				t.Fatalf("initialSync view %+v; chunk %v, want %s in it", v, got, msg)
			}
			if len(v.Receipts) != 1 || v.Receipts[0]["type"] != "m.receipt" {
				t.Fatalf("receipts %v, want one m.receipt event", v.Receipts)
			}
			c, _ := json.Marshal(v.Receipts[0]["content"])
			if !strings.Contains(string(c), msg.String()) || !strings.Contains(string(c), bob.UserID.String()) {
				t.Fatalf("receipts content %s lacks bob's receipt of %s", c, msg)
			}
			// Eve may not peek a room that is not world-readable.
			r, _ := get(eve)
			wantRawError(t, r, 403, "M_FORBIDDEN")
			if _, err := alice.SendStateEvent(ctx, room, event.StateHistoryVisibility, "", map[string]any{"history_visibility": "world_readable"}); err != nil {
				t.Fatalf("world_readable: %v", err)
			}
			// Messages from when the room was world-readable are hers to
			// read (earlier ones stay shared-only).
			seen := send(t, ctx, alice, room, "for everyone", "is-2")
			r, v = get(eve)
			if r.status != 200 || findEvent(v.Messages.Chunk, seen) == nil || findEvent(v.Messages.Chunk, msg) != nil || v.Receipts == nil {
				t.Fatalf("peek of a world-readable room: %d %s", r.status, truncate(r.body))
			}
			wantRawError(t, srv.do(t, ctx, "GET", clientPath("rooms", room.String(), "initialSync")+"?limit=x", alice.AccessToken, nil), 400, "M_INVALID_PARAM")
		})

		t.Run("reports", func(t *testing.T) {
			room := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "Reported room"})
			join(t, ctx, bob, room.String())
			bad := send(t, ctx, alice, room, "something offensive", "rep-1")
			reportPath := clientPath("rooms", room.String(), "report", bad.String())
			if r := srv.doJSON(t, ctx, "POST", reportPath, bob.AccessToken, map[string]any{"reason": "rude", "score": -50}); r.status != 200 {
				t.Fatalf("report: %d %s", r.status, truncate(r.body))
			}
			if err := bob.ReportEvent(ctx, room, bad, "still rude"); err != nil {
				t.Fatalf("mautrix report: %v", err)
			}
			// Eve is not in the (shared-history) room: the event is not
			// hers to see, so it is not found.
			wantRawError(t, srv.doJSON(t, ctx, "POST", reportPath, eve.AccessToken, map[string]any{"reason": "x"}), 404, "M_NOT_FOUND")
			wantRawError(t, srv.doJSON(t, ctx, "POST", clientPath("rooms", room.String(), "report", "$nosuchevent"), bob.AccessToken,
				map[string]any{}), 404, "M_NOT_FOUND")
			wantRawError(t, srv.doJSON(t, ctx, "POST", reportPath, bob.AccessToken, map[string]any{"score": 5}), 400, "M_INVALID_PARAM")
			wantRawError(t, srv.doJSON(t, ctx, "POST", reportPath, bob.AccessToken, map[string]any{"score": -101}), 400, "M_INVALID_PARAM")
			wantRawError(t, srv.doJSON(t, ctx, "POST", reportPath, bob.AccessToken, map[string]any{"score": "bad"}), 400, "M_BAD_JSON")
			wantRawError(t, srv.doJSON(t, ctx, "POST", reportPath, bob.AccessToken, map[string]any{"reason": 7}), 400, "M_BAD_JSON")
			wantRawError(t, srv.do(t, ctx, "POST", reportPath, bob.AccessToken, []byte("not json")), 400, "M_NOT_JSON")
			wantRawError(t, srv.doJSON(t, ctx, "POST", reportPath, "", map[string]any{}), 401, "M_MISSING_TOKEN")
			// Room reports.
			if err := eve.ReportRoom(ctx, room, "spam room"); err != nil {
				t.Fatalf("room report: %v", err)
			}
			wantRawError(t, srv.doJSON(t, ctx, "POST", clientPath("rooms", room.String(), "report"), eve.AccessToken, map[string]any{}), 400, "M_MISSING_PARAM")
			wantRawError(t, srv.doJSON(t, ctx, "POST", clientPath("rooms", "!nosuchroom:"+serverName, "report"), eve.AccessToken,
				map[string]any{"reason": "x"}), 404, "M_NOT_FOUND")

			// The admin API.
			type listResp struct {
				Reports []struct {
					ID             int64  `json:"id"`
					RoomID         string `json:"room_id"`
					EventID        string `json:"event_id"`
					UserID         string `json:"user_id"`
					Reason         string `json:"reason"`
					Score          *int64 `json:"score"`
					Sender         string `json:"sender"`
					Name           string `json:"name"`
					ReceivedTS     int64  `json:"received_ts"`
					EventJSON      any    `json:"event_json"`
					CanonicalAlias *string
				} `json:"event_reports"`
				Total     int    `json:"total"`
				NextToken *int64 `json:"next_token"`
			}
			list := func(q string) listResp {
				t.Helper()
				r := srv.do(t, ctx, "GET", "/_synapse/admin/v1/event_reports"+q, admin.AccessToken, nil)
				if r.status != 200 {
					t.Fatalf("event_reports%s: %d %s", q, r.status, truncate(r.body))
				}
				var l listResp
				if err := json.Unmarshal(r.body, &l); err != nil {
					t.Fatalf("event_reports: %v", err)
				}
				return l
			}
			l := list("?room_id=" + url.QueryEscape(room.String()) + "&dir=f")
			if l.Total != 2 || len(l.Reports) != 2 {
				t.Fatalf("reports of the room: %+v, want 2", l)
			}
			first := l.Reports[0]
			if first.EventID != bad.String() || first.UserID != bob.UserID.String() || first.Reason != "rude" || first.Score == nil ||
				*first.Score != -50 || first.Sender != alice.UserID.String() || first.Name != "Reported room" || first.ReceivedTS == 0 {
				t.Fatalf("first report %+v", first)
			}
			if l.Reports[1].Reason != "still rude" || l.Reports[1].Score != nil {
				t.Fatalf("second report %+v", l.Reports[1])
			}
			if b := list("?room_id=" + url.QueryEscape(room.String()) + "&limit=1"); len(b.Reports) != 1 || b.Reports[0].Reason != "still rude" ||
				b.NextToken == nil || *b.NextToken != 1 {
				t.Fatalf("newest first, one per page: %+v", b)
			}
			if u := list("?user_id=" + url.QueryEscape(eve.UserID.String())); u.Total != 0 {
				t.Fatalf("reports by eve (her event report was refused): %+v", u)
			}
			r := srv.do(t, ctx, "GET", "/_synapse/admin/v1/event_reports/"+strconv.FormatInt(first.ID, 10), admin.AccessToken, nil)
			if r.status != 200 || !strings.Contains(string(r.body), `"event_json"`) || !strings.Contains(string(r.body), "something offensive") {
				t.Fatalf("report details: %d %s", r.status, truncate(r.body))
			}
			wantRawError(t, srv.do(t, ctx, "GET", "/_synapse/admin/v1/event_reports", bob.AccessToken, nil), 403, "M_FORBIDDEN")
			wantRawError(t, srv.do(t, ctx, "GET", "/_synapse/admin/v1/event_reports?dir=x", admin.AccessToken, nil), 400, "M_INVALID_PARAM")
			wantRawError(t, srv.do(t, ctx, "GET", "/_synapse/admin/v1/event_reports?from=-1", admin.AccessToken, nil), 400, "M_INVALID_PARAM")
			wantRawError(t, srv.do(t, ctx, "GET", "/_synapse/admin/v1/event_reports?limit=x", admin.AccessToken, nil), 400, "M_INVALID_PARAM")
			wantRawError(t, srv.do(t, ctx, "GET", "/_synapse/admin/v1/event_reports/abc", admin.AccessToken, nil), 400, "M_INVALID_PARAM")
			idPath := "/_synapse/admin/v1/event_reports/" + strconv.FormatInt(first.ID, 10)
			wantRawError(t, srv.do(t, ctx, "DELETE", idPath, bob.AccessToken, nil), 403, "M_FORBIDDEN")
			if r := srv.do(t, ctx, "DELETE", idPath, admin.AccessToken, nil); r.status != 200 {
				t.Fatalf("delete report: %d %s", r.status, truncate(r.body))
			}
			wantRawError(t, srv.do(t, ctx, "GET", idPath, admin.AccessToken, nil), 404, "M_NOT_FOUND")
			wantRawError(t, srv.do(t, ctx, "DELETE", idPath, admin.AccessToken, nil), 404, "M_NOT_FOUND")

			// Room reports have their own listing, with the same parameters.
			var rooms struct {
				Reports []struct {
					ID     int64  `json:"id"`
					RoomID string `json:"room_id"`
					UserID string `json:"user_id"`
					Reason string `json:"reason"`
					Name   string `json:"name"`
				} `json:"room_reports"`
				Total int64 `json:"total"`
			}
			r = srv.do(t, ctx, "GET", "/_synapse/admin/v1/room_reports?room_id="+url.QueryEscape(room.String()), admin.AccessToken, nil)
			if r.status != 200 || json.Unmarshal(r.body, &rooms) != nil || rooms.Total != 1 || len(rooms.Reports) != 1 ||
				rooms.Reports[0].UserID != eve.UserID.String() || rooms.Reports[0].Reason != "spam room" || rooms.Reports[0].Name != "Reported room" {
				t.Fatalf("room_reports: %d %s", r.status, truncate(r.body))
			}
			roomPath := "/_synapse/admin/v1/room_reports/" + strconv.FormatInt(rooms.Reports[0].ID, 10)
			wantRawError(t, srv.do(t, ctx, "GET", "/_synapse/admin/v1/room_reports", bob.AccessToken, nil), 403, "M_FORBIDDEN")
			wantRawError(t, srv.do(t, ctx, "GET", "/_synapse/admin/v1/room_reports?dir=x", admin.AccessToken, nil), 400, "M_INVALID_PARAM")
			if r := srv.do(t, ctx, "GET", roomPath, admin.AccessToken, nil); r.status != 200 {
				t.Fatalf("room report: %d %s", r.status, truncate(r.body))
			}
			if r := srv.do(t, ctx, "DELETE", roomPath, admin.AccessToken, nil); r.status != 200 {
				t.Fatalf("delete room report: %d %s", r.status, truncate(r.body))
			}
			wantRawError(t, srv.do(t, ctx, "GET", roomPath, admin.AccessToken, nil), 404, "M_NOT_FOUND")
		})

		t.Run("serverNotices", func(t *testing.T) {
			const path = "/_synapse/admin/v1/send_server_notice"
			notice := map[string]any{"user_id": bob.UserID.String(), "content": map[string]any{"msgtype": "m.text", "body": "Maintenance at noon"}}
			r := srv.doJSON(t, ctx, "POST", path, admin.AccessToken, notice)
			if r.status != 200 {
				t.Fatalf("send_server_notice: %d %s", r.status, truncate(r.body))
			}
			first := id.EventID(r.object(t)["event_id"].(string))
			// Bob is invited to his notices room, which is tagged.
			var roomID id.RoomID
			testutil.Eventually(t, waitLimit, "bob's invite to his notices room", func() bool {
				for rid := range doSync(t, ctx, bob, syncParams{}).Rooms.Invite {
					roomID = rid
				}
				return roomID != ""
			})
			join(t, ctx, bob, roomID.String())
			tags, err := bob.GetTags(ctx, roomID)
			if err != nil {
				t.Fatalf("tags: %v", err)
			}
			if _, ok := tags.Tags["m.server_notice"]; !ok {
				t.Fatalf("notices room tags %v lack m.server_notice", tags.Tags)
			}
			ev, err := bob.GetEvent(ctx, roomID, first)
			if err != nil || ev.Sender != id.UserID("@notices:"+serverName) || ev.Content.Raw["body"] != "Maintenance at noon" {
				t.Fatalf("notice event %+v (%v)", ev, err)
			}
			var name map[string]any
			if err := bob.StateEvent(ctx, roomID, event.StateRoomName, "", &name); err != nil || name["name"] != "Notices" {
				t.Fatalf("room name %v (%v)", name, err)
			}
			// Bob cannot speak or leave.
			_, err = bob.SendMessageEvent(ctx, roomID, event.EventMessage, map[string]any{"msgtype": "m.text", "body": "hi"})
			wantMatrixError(t, err, 403, "M_FORBIDDEN")
			_, err = bob.LeaveRoom(ctx, roomID)
			wantMatrixError(t, err, 403, "M_CANNOT_LEAVE_SERVER_NOTICE_ROOM")
			wantRawError(t, srv.doJSON(t, ctx, "PUT", clientPath("rooms", roomID.String(), "state", "m.room.member", bob.UserID.String()),
				bob.AccessToken, map[string]any{"membership": "leave"}), 403, "M_CANNOT_LEAVE_SERVER_NOTICE_ROOM")
			wantJoinedMembers(t, ctx, bob, roomID, bob.UserID, id.UserID("@notices:"+serverName))

			// PUT with a transaction id: a retry is the same event, in the
			// same room.
			var ids []string
			for i := 0; i < 2; i++ {
				r := srv.doJSON(t, ctx, "PUT", path+"/txn-1", admin.AccessToken, notice)
				if r.status != 200 {
					t.Fatalf("PUT send_server_notice: %d %s", r.status, truncate(r.body))
				}
				ids = append(ids, r.object(t)["event_id"].(string))
			}
			if ids[0] != ids[1] || ids[0] == first.String() {
				t.Fatalf("PUT twice gave %v; want one new event", ids)
			}
			if ev, err := bob.GetEvent(ctx, roomID, id.EventID(ids[0])); err != nil || ev.RoomID != roomID {
				t.Fatalf("second notice %+v (%v), want it in %s", ev, err, roomID)
			}

			// The system user cannot log in, nor be registered.
			_, err = srv.login(t, ctx, "notices", "anything")
			wantMatrixError(t, err, 403, "M_FORBIDDEN")
			_, err = srv.client(t, "", "").RegisterDummy(ctx, &mautrix.ReqRegister[any]{Username: "notices", Password: password("notices")})
			wantMatrixError(t, err, 400, "M_USER_IN_USE")

			// Bad input.
			wantRawError(t, srv.doJSON(t, ctx, "POST", path, bob.AccessToken, notice), 403, "M_FORBIDDEN")
			wantRawError(t, srv.doJSON(t, ctx, "POST", path, admin.AccessToken, map[string]any{"content": notice["content"]}), 400, "M_MISSING_PARAM")
			wantRawError(t, srv.doJSON(t, ctx, "POST", path, admin.AccessToken, map[string]any{"user_id": bob.UserID.String()}), 400, "M_MISSING_PARAM")
			wantRawError(t, srv.doJSON(t, ctx, "POST", path, admin.AccessToken, map[string]any{"user_id": bob.UserID.String(), "content": "x"}), 400, "M_BAD_JSON")
			wantRawError(t, srv.doJSON(t, ctx, "POST", path, admin.AccessToken,
				map[string]any{"user_id": "@someone:elsewhere.test", "content": notice["content"]}), 400, "M_UNKNOWN")
			wantRawError(t, srv.doJSON(t, ctx, "POST", path, admin.AccessToken,
				map[string]any{"user_id": "@nobody:" + serverName, "content": notice["content"]}), 404, "M_NOT_FOUND")
		})
	}, withSmallEndpointsConfig())
}

// jsonSame compares two values by their JSON encodings.
func jsonSame(a, b any) bool {
	x, err1 := json.Marshal(a)
	y, err2 := json.Marshal(b)
	return err1 == nil && err2 == nil && string(x) == string(y)
}

// TestSmallEndpointsOtherConfig runs what needs another config than
// TestReportsNoticesAndPreviews, on one monolith per engine: server_notices.auto_join
// (the user is joined, not invited) with the room and system user
// profile keys, /voip/turnServer answering {} without TURN servers, and
// rc_reports.
func TestReportsNoticesAndPreviewsOtherConfig(t *testing.T) {
	t.Parallel()
	runDeployments(t, []string{engineSQLite, enginePostgres}, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		alice := srv.register(t, ctx, "alice")
		bob := srv.register(t, ctx, "bob")
		admin := srv.registerAdmin(t, ctx, "root")

		t.Run("turnUnconfigured", func(t *testing.T) {
			r := srv.do(t, ctx, "GET", clientPath("voip", "turnServer"), bob.AccessToken, nil)
			if r.status != 200 || len(r.object(t)) != 0 {
				t.Fatalf("turnServer without TURN: %d %s, want 200 {}", r.status, truncate(r.body))
			}
		})

		t.Run("noticesAutoJoin", func(t *testing.T) {
			r := srv.doJSON(t, ctx, "POST", "/_synapse/admin/v1/send_server_notice", admin.AccessToken,
				map[string]any{"user_id": bob.UserID.String(), "content": map[string]any{"msgtype": "m.text", "body": "hello"}})
			if r.status != 200 {
				t.Fatalf("send_server_notice: %d %s", r.status, truncate(r.body))
			}
			rooms := joinedRooms(t, ctx, bob)
			if len(rooms) != 1 {
				t.Fatalf("bob is joined to %v, want his notices room", rooms)
			}
			ev, err := bob.GetEvent(ctx, rooms[0], id.EventID(r.object(t)["event_id"].(string)))
			if err != nil || ev.Sender != id.UserID("@system:"+serverName) {
				t.Fatalf("notice %+v (%v)", ev, err)
			}
			var topic map[string]any
			if err := bob.StateEvent(ctx, rooms[0], event.StateTopic, "", &topic); err != nil || topic["topic"] != "Read me" {
				t.Fatalf("notices room topic %v (%v)", topic, err)
			}
			var avatar map[string]any
			if err := bob.StateEvent(ctx, rooms[0], event.StateRoomAvatar, "", &avatar); err != nil || avatar["url"] != "mxc://e2e.test/room" {
				t.Fatalf("notices room avatar %v (%v)", avatar, err)
			}
			p, err := bob.GetProfile(ctx, id.UserID("@system:"+serverName))
			if err != nil || p.DisplayName != "System" || p.AvatarURL.String() != "mxc://e2e.test/sys" {
				t.Fatalf("system user's profile %+v (%v)", p, err)
			}
		})

		t.Run("noticesRoomFollowsConfig", func(t *testing.T) {
			rooms := joinedRooms(t, ctx, bob)
			if len(rooms) != 1 {
				t.Fatalf("bob is joined to %v, want his notices room", rooms)
			}
			// A new room name and system user name in the config reach the
			// existing room with the next notice.
			srv.opts = append(srv.opts, func(cfg map[string]any) {
				sn := cfg["server_notices"].(map[string]any)
				sn["room_name"] = "Renamed notices"
				sn["system_mxid_display_name"] = "System 2"
			})
			srv.restart(t)
			r := srv.doJSON(t, ctx, "POST", "/_synapse/admin/v1/send_server_notice", admin.AccessToken,
				map[string]any{"user_id": bob.UserID.String(), "content": map[string]any{"msgtype": "m.text", "body": "again"}})
			if r.status != 200 {
				t.Fatalf("send_server_notice: %d %s", r.status, truncate(r.body))
			}
			if now := joinedRooms(t, ctx, bob); !slices.Equal(now, rooms) {
				t.Fatalf("bob's rooms %v, want the same notices room %v", now, rooms)
			}
			var name map[string]any
			if err := bob.StateEvent(ctx, rooms[0], event.StateRoomName, "", &name); err != nil || name["name"] != "Renamed notices" {
				t.Fatalf("room name %v (%v)", name, err)
			}
			if p, err := bob.GetProfile(ctx, id.UserID("@system:"+serverName)); err != nil || p.DisplayName != "System 2" {
				t.Fatalf("system user's profile %+v (%v)", p, err)
			}
		})

		t.Run("reportsRateLimit", func(t *testing.T) {
			room := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
			join(t, ctx, bob, room.String())
			msg := send(t, ctx, alice, room, "spam", "rl-1")
			report := func(c *mautrix.Client) response {
				return srv.doJSON(t, ctx, "POST", clientPath("rooms", room.String(), "report", msg.String()), c.AccessToken,
					map[string]any{"reason": "spam"})
			}
			for i := 0; i < 2; i++ {
				if r := report(bob); r.status != 200 {
					t.Fatalf("report %d: %d %s", i, r.status, truncate(r.body))
				}
			}
			wantLimited(t, "third report", report(bob))
			wantLimited(t, "room report past the limit", srv.doJSON(t, ctx, "POST", clientPath("rooms", room.String(), "report"),
				bob.AccessToken, map[string]any{"reason": "spam"}))
			if r := report(alice); r.status != 200 {
				t.Fatalf("another user's report: %d %s", r.status, truncate(r.body))
			}
			// Bad input is refused before the limit is charged.
			wantRawError(t, srv.doJSON(t, ctx, "POST", clientPath("rooms", room.String(), "report", msg.String()), alice.AccessToken,
				map[string]any{"score": 1}), 400, "M_INVALID_PARAM")
			if r := report(alice); r.status != 200 {
				t.Fatalf("alice's second report: %d %s", r.status, truncate(r.body))
			}
		})
	}, func(cfg map[string]any) {
		cfg["server_notices"] = map[string]any{"system_mxid_localpart": "system", "system_mxid_display_name": "System",
			"system_mxid_avatar_url": "mxc://e2e.test/sys", "room_topic": "Read me", "room_avatar_url": "mxc://e2e.test/room", "auto_join": true}
		cfg["rc_reports"] = slowLimit(2)
	})
}
