package e2e_test

import (
	"context"
	"slices"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// maxPages bounds every pagination loop, so a server that never ends a
// timeline fails the test instead of hanging it.
const maxPages = 100

// paginate walks /messages in dir from the default start (the live end for
// b, the room's beginning for f) with limit, until the server says there is
// no more. It checks the pagination contract on the way: no page larger
// than limit, no event twice, and an empty page must not carry an end token
// (otherwise a client loops forever).
func paginate(t testing.TB, ctx context.Context, c *mautrix.Client, roomID id.RoomID, dir mautrix.Direction, limit int) []*event.Event {
	t.Helper()
	return paginateFiltered(t, ctx, c, roomID, dir, limit, nil)
}

// paginateFiltered is paginate with a room event filter.
func paginateFiltered(t testing.TB, ctx context.Context, c *mautrix.Client, roomID id.RoomID, dir mautrix.Direction, limit int, filter *mautrix.FilterPart) []*event.Event {
	t.Helper()
	var all []*event.Event
	seen := map[id.EventID]bool{}
	from := ""
	for page := 0; ; page++ {
		if page == maxPages {
			t.Fatalf("/messages dir=%c did not end after %d pages", dir, maxPages)
		}
		resp, err := c.Messages(ctx, roomID, from, "", dir, filter, limit)
		if err != nil {
			t.Fatalf("/messages dir=%c from=%q: %v", dir, from, err)
		}
		if len(resp.Chunk) > limit {
			t.Fatalf("/messages limit=%d returned %d events", limit, len(resp.Chunk))
		}
		if from != "" && resp.Start != from {
			t.Errorf("/messages from=%q answered start=%q; spec: start is the token given as from", from, resp.Start)
		}
		for _, ev := range resp.Chunk {
			if seen[ev.ID] {
				t.Fatalf("/messages dir=%c returned %s twice (page %d)", dir, ev.ID, page)
			}
			seen[ev.ID] = true
			all = append(all, ev)
		}
		if resp.End == "" {
			return all
		}
		if len(resp.Chunk) == 0 {
			if dir == mautrix.DirectionForward {
				// Forward pagination at the live end may hand back a token
				// to wait on (Synapse does); the timeline is exhausted.
				return all
			}
			t.Fatalf("/messages dir=b returned an empty chunk with end=%q; spec: end is omitted when there are no more events", resp.End)
		}
		if resp.End == from {
			t.Fatalf("/messages dir=%c: end token %q equals from with a non-empty page", dir, from)
		}
		from = resp.End
	}
}

// ids lists the event ids of evs whose type is typ ("" for all).
func ids(evs []*event.Event, typ string) []id.EventID {
	var out []id.EventID
	for _, ev := range evs {
		if typ == "" || ev.Type.Type == typ {
			out = append(out, ev.ID)
		}
	}
	return out
}

func reversed[T any](s []T) []T {
	out := slices.Clone(s)
	slices.Reverse(out)
	return out
}

// findEvent returns the event with id in evs, or nil.
func findEvent(evs []*event.Event, eventID id.EventID) *event.Event {
	for _, ev := range evs {
		if ev.ID == eventID {
			return ev
		}
	}
	return nil
}

func joinedRooms(t testing.TB, ctx context.Context, c *mautrix.Client) []id.RoomID {
	t.Helper()
	resp, err := c.JoinedRooms(ctx)
	if err != nil {
		t.Fatalf("%s: /joined_rooms: %v", c.UserID, err)
	}
	return resp.JoinedRooms
}

// wantJoinedRooms checks whether room is in c's /joined_rooms.
func wantInJoinedRooms(t testing.TB, ctx context.Context, c *mautrix.Client, roomID id.RoomID, want bool) {
	t.Helper()
	got := slices.Contains(joinedRooms(t, ctx, c), roomID)
	if got != want {
		t.Fatalf("%s: room %s in /joined_rooms = %v, want %v", c.UserID, roomID, got, want)
	}
}

// wantJoinedMembers checks /joined_members (as c) lists exactly users.
func wantJoinedMembers(t testing.TB, ctx context.Context, c *mautrix.Client, roomID id.RoomID, users ...id.UserID) map[id.UserID]mautrix.JoinedMember {
	t.Helper()
	resp, err := c.JoinedMembers(ctx, roomID)
	if err != nil {
		t.Fatalf("%s: /joined_members: %v", c.UserID, err)
	}
	var got []id.UserID
	for u := range resp.Joined {
		got = append(got, u)
	}
	slices.Sort(got)
	want := slices.Clone(users)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("/joined_members = %v, want %v", got, want)
	}
	return resp.Joined
}

// memberships returns user → membership from /members with the filter.
func memberships(t testing.TB, ctx context.Context, c *mautrix.Client, roomID id.RoomID, filter mautrix.ReqMembers) map[id.UserID]event.Membership {
	t.Helper()
	resp, err := c.Members(ctx, roomID, filter)
	if err != nil {
		t.Fatalf("%s: /members %+v: %v", c.UserID, filter, err)
	}
	out := map[id.UserID]event.Membership{}
	for _, ev := range resp.Chunk {
		if ev.Type != event.StateMember || ev.StateKey == nil {
			t.Fatalf("/members returned a %s event", ev.Type.Type)
		}
		m, _ := ev.Content.Raw["membership"].(string)
		out[id.UserID(*ev.StateKey)] = event.Membership(m)
	}
	return out
}

// wantMembers checks /members with filter returns exactly want.
func wantMembers(t testing.TB, ctx context.Context, c *mautrix.Client, roomID id.RoomID, filter mautrix.ReqMembers, want map[id.UserID]event.Membership) {
	t.Helper()
	got := memberships(t, ctx, c, roomID, filter)
	if len(got) != len(want) {
		t.Fatalf("/members %+v = %v, want %v", filter, got, want)
	}
	for u, m := range want {
		if got[u] != m {
			t.Fatalf("/members %+v = %v, want %v", filter, got, want)
		}
	}
}

// membershipOf reads target's m.room.member content as c.
func membershipOf(t testing.TB, ctx context.Context, c *mautrix.Client, roomID id.RoomID, target id.UserID) map[string]any {
	t.Helper()
	var content map[string]any
	if err := c.StateEvent(ctx, roomID, event.StateMember, target.String(), &content); err != nil {
		t.Fatalf("%s: member state of %s: %v", c.UserID, target, err)
	}
	return content
}

func wantMembership(t testing.TB, ctx context.Context, c *mautrix.Client, roomID id.RoomID, target id.UserID, want event.Membership) {
	t.Helper()
	if got := membershipOf(t, ctx, c, roomID, target)["membership"]; got != string(want) {
		t.Fatalf("membership of %s = %v, want %s", target, got, want)
	}
}

// send sends an m.room.message with body and txnID.
func send(t testing.TB, ctx context.Context, c *mautrix.Client, roomID id.RoomID, body, txnID string) id.EventID {
	t.Helper()
	resp, err := c.SendMessageEvent(ctx, roomID, event.EventMessage,
		map[string]any{"msgtype": "m.text", "body": body}, mautrix.ReqSendEvent{TransactionID: txnID})
	if err != nil {
		t.Fatalf("%s: send %q: %v", c.UserID, body, err)
	}
	if resp.EventID == "" {
		t.Fatalf("%s: send %q: no event_id", c.UserID, body)
	}
	return resp.EventID
}

func createRoom(t testing.TB, ctx context.Context, c *mautrix.Client, req *mautrix.ReqCreateRoom) id.RoomID {
	t.Helper()
	resp, err := c.CreateRoom(ctx, req)
	if err != nil {
		t.Fatalf("%s: createRoom: %v", c.UserID, err)
	}
	return resp.RoomID
}

func invite(t testing.TB, ctx context.Context, c *mautrix.Client, roomID id.RoomID, target id.UserID) {
	t.Helper()
	if _, err := c.InviteUser(ctx, roomID, &mautrix.ReqInviteUser{UserID: target}); err != nil {
		t.Fatalf("%s: invite %s: %v", c.UserID, target, err)
	}
}

func join(t testing.TB, ctx context.Context, c *mautrix.Client, roomIDOrAlias string) id.RoomID {
	t.Helper()
	resp, err := c.JoinRoom(ctx, roomIDOrAlias, nil)
	if err != nil {
		t.Fatalf("%s: join %s: %v", c.UserID, roomIDOrAlias, err)
	}
	return resp.RoomID
}

// passwordAuth is a UIA m.login.password auth dict for localpart.
func passwordAuth(localpart, pw, session string) map[string]any {
	return map[string]any{
		"type":       "m.login.password",
		"identifier": map[string]any{"type": "m.id.user", "user": localpart},
		"password":   pw,
		"session":    session,
	}
}

// wantUIAChallenge checks r is the first leg of user-interactive auth: 401,
// a flow with m.login.password, and a session; it returns the session.
func wantUIAChallenge(t testing.TB, r response) string {
	t.Helper()
	if r.status != 401 {
		t.Fatalf("status %d, want 401 UIA challenge; body %s", r.status, truncate(r.body))
	}
	m := r.object(t)
	session, _ := m["session"].(string)
	if session == "" {
		t.Fatalf("UIA challenge without session: %s", truncate(r.body))
	}
	flows, _ := m["flows"].([]any)
	found := false
	for _, f := range flows {
		stages, _ := f.(map[string]any)["stages"].([]any)
		if len(stages) == 1 && stages[0] == "m.login.password" {
			found = true
		}
	}
	if !found {
		t.Fatalf("UIA challenge has no [m.login.password] flow: %s", truncate(r.body))
	}
	if _, ok := m["params"].(map[string]any); !ok {
		t.Fatalf("UIA challenge has no params object: %s", truncate(r.body))
	}
	return session
}

// wantTokenRevoked checks c's access token now answers 401 M_UNKNOWN_TOKEN.
func wantTokenRevoked(t testing.TB, ctx context.Context, c *mautrix.Client) {
	t.Helper()
	_, err := c.Whoami(ctx)
	wantMatrixError(t, err, 401, "M_UNKNOWN_TOKEN")
}

func wantTokenValid(t testing.TB, ctx context.Context, c *mautrix.Client) {
	t.Helper()
	w, err := c.Whoami(ctx)
	if err != nil {
		t.Fatalf("whoami %s: %v", c.UserID, err)
	}
	if w.UserID != c.UserID || (c.DeviceID != "" && w.DeviceID != c.DeviceID) {
		t.Fatalf("whoami = %s/%s, want %s/%s", w.UserID, w.DeviceID, c.UserID, c.DeviceID)
	}
}

// wantDevices checks c's /devices lists exactly devices.
func wantDevices(t testing.TB, ctx context.Context, c *mautrix.Client, devices ...id.DeviceID) {
	t.Helper()
	resp, err := c.GetDevicesInfo(ctx)
	if err != nil {
		t.Fatalf("/devices: %v", err)
	}
	var got []id.DeviceID
	for _, d := range resp.Devices {
		got = append(got, d.DeviceID)
	}
	slices.Sort(got)
	want := slices.Clone(devices)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("/devices = %v, want %v", got, want)
	}
}
