package e2e_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"slices"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// legacyEvent is the part of an event the legacy answers are checked on.
type legacyEvent struct {
	EventID  string  `json:"event_id"`
	Type     string  `json:"type"`
	RoomID   string  `json:"room_id"`
	StateKey *string `json:"state_key"`
}

type legacyRoomView struct {
	RoomID     string `json:"room_id"`
	Membership string `json:"membership"`
	Messages   *struct {
		Chunk []legacyEvent `json:"chunk"`
		Start string        `json:"start"`
		End   string        `json:"end"`
	} `json:"messages"`
	State []legacyEvent `json:"state"`
}

// wantRoomView checks a legacy room snapshot holds the message and the
// room's create event.
func wantRoomView(t testing.TB, what string, v *legacyRoomView, roomID id.RoomID, msg id.EventID) {
	t.Helper()
	if v.RoomID != roomID.String() || v.Membership != "join" {
		t.Fatalf("%s: room %q membership %q, want %s join", what, v.RoomID, v.Membership, roomID)
	}
	if v.Messages == nil || !slices.ContainsFunc(v.Messages.Chunk, func(e legacyEvent) bool { return e.EventID == msg.String() }) {
		t.Fatalf("%s: messages lack %s: %+v", what, msg, v.Messages)
	}
	if v.Messages.Start == "" || v.Messages.End == "" {
		t.Fatalf("%s: messages without start/end tokens", what)
	}
	if !slices.ContainsFunc(v.State, func(e legacyEvent) bool { return e.Type == "m.room.create" && e.StateKey != nil }) {
		t.Fatalf("%s: state lacks m.room.create: %+v", what, v.State)
	}
}

// TestLegacySync: GET /events long-polls for new events after a token;
// /initialSync and /rooms/{roomId}/initialSync snapshot rooms for members,
// and refuse a non-member of a room that is not world-readable.
func TestLegacySync(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		alice := srv.register(t, ctx, "alice")
		bob := srv.register(t, ctx, "bob")
		eve := srv.register(t, ctx, "eve")
		room := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		join(t, ctx, bob, room.String())
		first := send(t, ctx, alice, room, "first", "first")

		// /events: a token for now, then a long-poll woken by a message.
		r := srv.do(t, ctx, "GET", "/_matrix/client/v3/events?timeout=0", bob.AccessToken, nil)
		if r.status != 200 {
			t.Fatalf("/events: %d %s", r.status, truncate(r.body))
		}
		var now struct {
			End   string        `json:"end"`
			Chunk []legacyEvent `json:"chunk"`
		}
		if err := json.Unmarshal(r.body, &now); err != nil || now.End == "" {
			t.Fatalf("/events: no end token: %s", truncate(r.body))
		}
		ready := make(chan struct{})
		type result struct {
			status int
			body   []byte
			err    error
		}
		done := make(chan result, 1)
		go func() {
			pctx, cancel := syncCtx(ctx, 10000, ready)
			defer cancel()
			req, err := http.NewRequestWithContext(pctx, "GET",
				srv.url+"/_matrix/client/v3/events?timeout=10000&from="+url.QueryEscape(now.End), nil)
			if err != nil {
				done <- result{err: err}
				return
			}
			req.Header.Set("Authorization", "Bearer "+bob.AccessToken)
			resp, err := srv.http.Do(req)
			if err != nil {
				done <- result{err: err}
				return
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			done <- result{resp.StatusCode, body, err}
		}()
		wait(t, ready, "sending the /events long-poll")
		second := send(t, ctx, alice, room, "second", "second")
		var res result
		select {
		case res = <-done:
		case <-time.After(waitLimit):
			t.Fatalf("/events long-poll did not answer within %v", waitLimit)
		}
		if res.err != nil || res.status != 200 {
			t.Fatalf("/events long-poll: %v %d %s", res.err, res.status, truncate(res.body))
		}
		var polled struct {
			Chunk []legacyEvent `json:"chunk"`
			Start string        `json:"start"`
			End   string        `json:"end"`
		}
		if err := json.Unmarshal(res.body, &polled); err != nil {
			t.Fatalf("/events: %v", err)
		}
		var got []string
		for _, e := range polled.Chunk {
			got = append(got, e.EventID)
			if e.RoomID != room.String() {
				t.Fatalf("/events chunk event without its room_id: %+v", e)
			}
		}
		if !slices.Equal(got, []string{second.String()}) {
			t.Fatalf("/events from the token = %v, want exactly [%s] (woken by it, not timed out)", got, second)
		}
		if polled.Start != now.End || polled.End == "" || polled.End == now.End {
			t.Fatalf("/events start %q end %q; want start = from %q and a new end", polled.Start, polled.End, now.End)
		}

		// /initialSync.
		r = srv.do(t, ctx, "GET", "/_matrix/client/v3/initialSync?limit=5", bob.AccessToken, nil)
		if r.status != 200 {
			t.Fatalf("/initialSync: %d %s", r.status, truncate(r.body))
		}
		var initial struct {
			End   string           `json:"end"`
			Rooms []legacyRoomView `json:"rooms"`
		}
		if err := json.Unmarshal(r.body, &initial); err != nil || initial.End == "" {
			t.Fatalf("/initialSync: %v, end %q", err, initial.End)
		}
		i := slices.IndexFunc(initial.Rooms, func(v legacyRoomView) bool { return v.RoomID == room.String() })
		if i < 0 || len(initial.Rooms) != 1 {
			t.Fatalf("/initialSync rooms = %+v, want exactly %s", initial.Rooms, room)
		}
		wantRoomView(t, "/initialSync", &initial.Rooms[i], room, second)

		// /rooms/{roomId}/initialSync: a member, then a non-member.
		path := clientPath("rooms", room.String(), "initialSync")
		r = srv.do(t, ctx, "GET", path, bob.AccessToken, nil)
		if r.status != 200 {
			t.Fatalf("room initialSync: %d %s", r.status, truncate(r.body))
		}
		var view legacyRoomView
		if err := json.Unmarshal(r.body, &view); err != nil {
			t.Fatalf("room initialSync: %v", err)
		}
		wantRoomView(t, "room initialSync", &view, room, first)
		wantRawError(t, srv.do(t, ctx, "GET", path, eve.AccessToken, nil), 403, "M_FORBIDDEN")

		// World-readable: a non-member may look.
		open := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", InitialState: []*event.Event{{
			Type: event.StateHistoryVisibility, StateKey: new(""),
			Content: event.Content{Raw: map[string]any{"history_visibility": "world_readable"}},
		}}})
		msg := send(t, ctx, alice, open, "for everyone", "open")
		r = srv.do(t, ctx, "GET", clientPath("rooms", open.String(), "initialSync"), eve.AccessToken, nil)
		if r.status != 200 {
			t.Fatalf("world-readable room initialSync for a non-member: %d %s", r.status, truncate(r.body))
		}
		var peek legacyRoomView
		if err := json.Unmarshal(r.body, &peek); err != nil || peek.Messages == nil ||
			!slices.ContainsFunc(peek.Messages.Chunk, func(e legacyEvent) bool { return e.EventID == msg.String() }) {
			t.Fatalf("world-readable room initialSync lacks the message: %s", truncate(r.body))
		}
	})
}
