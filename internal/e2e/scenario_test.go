package e2e_test

import (
	"slices"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// TestScenario is the Foundation issue's story end to end: accounts,
// devices, a private room's whole membership life cycle, messages with
// idempotent transactions, pagination, context, state, redaction, profile,
// password change, logout and deactivation.
func TestScenario(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, srv *server) {
		ctx := testContext(t)

		// Accounts: three users, and a second device for alice.
		alice := srv.register(t, ctx, "alice")
		bob := srv.register(t, ctx, "bob")
		carol := srv.register(t, ctx, "carol")
		alice2 := srv.mustLogin(t, ctx, "alice", password("alice"))
		if alice2.DeviceID == "" || alice2.DeviceID == alice.DeviceID {
			t.Fatalf("second login got device %q, first had %q; want a new device", alice2.DeviceID, alice.DeviceID)
		}
		wantTokenValid(t, ctx, alice)
		wantTokenValid(t, ctx, alice2)

		// A private room with name and topic.
		roomID := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{
			Preset: "private_chat", Name: "Scenario", Topic: "Testing the foundation",
		})
		var name, topic, joinRules, hist map[string]any
		for _, s := range []struct {
			typ event.Type
			out *map[string]any
		}{{event.StateRoomName, &name}, {event.StateTopic, &topic}, {event.StateJoinRules, &joinRules}, {event.StateHistoryVisibility, &hist}} {
			if err := alice.StateEvent(ctx, roomID, s.typ, "", s.out); err != nil {
				t.Fatalf("read %s: %v", s.typ.Type, err)
			}
		}
		if name["name"] != "Scenario" || topic["topic"] != "Testing the foundation" {
			t.Fatalf("name %v, topic %v; want the createRoom values", name, topic)
		}
		if joinRules["join_rule"] != "invite" || hist["history_visibility"] != "shared" {
			t.Fatalf("private_chat preset gave join_rule %v, history_visibility %v; want invite, shared", joinRules, hist)
		}
		wantInJoinedRooms(t, ctx, alice, roomID, true)
		wantInJoinedRooms(t, ctx, bob, roomID, false)
		wantJoinedMembers(t, ctx, alice, roomID, alice.UserID)

		// Invite-only: bob needs an invite.
		_, err := bob.JoinRoomByID(ctx, roomID)
		wantMatrixError(t, err, 403, "M_FORBIDDEN")
		invite(t, ctx, alice, roomID, bob.UserID)
		wantMembers(t, ctx, alice, roomID, mautrix.ReqMembers{Membership: event.MembershipInvite},
			map[id.UserID]event.Membership{bob.UserID: event.MembershipInvite})
		// A token for "now", while bob is only invited: /members?at=.
		now, err := alice.Messages(ctx, roomID, "", "", mautrix.DirectionBackward, nil, 1)
		if err != nil || now.Start == "" {
			t.Fatalf("/messages for a current token: %v (start %q)", err, now.Start)
		}
		join(t, ctx, bob, roomID.String())
		wantJoinedMembers(t, ctx, alice, roomID, alice.UserID, bob.UserID)
		wantInJoinedRooms(t, ctx, bob, roomID, true)
		wantMembers(t, ctx, alice, roomID, mautrix.ReqMembers{At: now.Start},
			map[id.UserID]event.Membership{alice.UserID: event.MembershipJoin, bob.UserID: event.MembershipInvite})

		// Messages with transaction ids.
		var sent []id.EventID
		for i, c := range []*mautrix.Client{alice, bob, alice, bob, alice, bob, alice} {
			sent = append(sent, send(t, ctx, c, roomID, "message "+itoa(i), "txn-"+itoa(i)))
		}
		if again := send(t, ctx, bob, roomID, "message 1", "txn-1"); again != sent[1] {
			t.Fatalf("re-sending txn-1 gave %s, want the original %s (idempotent transactions)", again, sent[1])
		}
		// Transaction ids are scoped to a device: alice's other device may
		// reuse txn-0 for a new event.
		other := send(t, ctx, alice2, roomID, "from the second device", "txn-0")
		if other == sent[0] {
			t.Fatalf("txn-0 from another device of alice returned alice's first event %s; transaction ids are per device", other)
		}
		sent = append(sent, other)

		// Backward pagination by 3 returns every message once, newest
		// first, and ends at the room's creation.
		back := paginate(t, ctx, alice, roomID, mautrix.DirectionBackward, 3)
		if got := ids(back, "m.room.message"); !slices.Equal(got, reversed(sent)) {
			t.Fatalf("backward messages = %v\nwant %v", got, reversed(sent))
		}
		if last := back[len(back)-1]; last.Type != event.StateCreate {
			t.Fatalf("backward pagination ended at %s, want m.room.create", last.Type.Type)
		}
		// Forward from the beginning is the same timeline in order.
		fwd := paginate(t, ctx, alice, roomID, mautrix.DirectionForward, 3)
		timeline := ids(fwd, "")
		if want := reversed(ids(back, "")); !slices.Equal(timeline, want) {
			t.Fatalf("forward timeline = %v\nwant the backward one reversed: %v", timeline, want)
		}

		// A types filter pages through the messages only.
		onlyMessages := &mautrix.FilterPart{Types: []event.Type{event.EventMessage}}
		if got := ids(paginateFiltered(t, ctx, bob, roomID, mautrix.DirectionBackward, 3, onlyMessages), ""); !slices.Equal(got, reversed(sent)) {
			t.Fatalf("filtered backward pagination = %v\nwant %v", got, reversed(sent))
		}
		// lazy_load_members: the page's state carries its senders' member
		// events.
		lazy, err := bob.Messages(ctx, roomID, "", "", mautrix.DirectionBackward,
			&mautrix.FilterPart{LazyLoadMembers: true, Types: []event.Type{event.EventMessage}}, 2)
		if err != nil {
			t.Fatalf("/messages with lazy_load_members: %v", err)
		}
		for _, ev := range lazy.Chunk {
			if ev.Sender == bob.UserID {
				continue // a client knows its own member event; servers may leave it out
			}
			if !slices.ContainsFunc(lazy.State, func(m *event.Event) bool {
				return m.Type == event.StateMember && m.StateKey != nil && *m.StateKey == ev.Sender.String()
			}) {
				t.Fatalf("lazy_load_members page has no member event for sender %s in state", ev.Sender)
			}
		}

		// /context around a message in the middle.
		idx := slices.Index(timeline, sent[3])
		cr, err := alice.Context(ctx, roomID, sent[3], nil, 4)
		if err != nil {
			t.Fatalf("/context: %v", err)
		}
		if cr.Event == nil || cr.Event.ID != sent[3] {
			t.Fatalf("/context event = %v, want %s", cr.Event, sent[3])
		}
		nb, na := len(cr.EventsBefore), len(cr.EventsAfter)
		if nb == 0 || na == 0 || nb+na > 4 {
			t.Fatalf("/context limit=4 gave %d before and %d after; want both non-empty, at most 4 together", nb, na)
		}
		for i, ev := range cr.EventsBefore { // reverse-chronological
			if ev.ID != timeline[idx-1-i] {
				t.Fatalf("events_before[%d] = %s, want %s", i, ev.ID, timeline[idx-1-i])
			}
		}
		for i, ev := range cr.EventsAfter {
			if ev.ID != timeline[idx+1+i] {
				t.Fatalf("events_after[%d] = %s, want %s", i, ev.ID, timeline[idx+1+i])
			}
		}
		if !slices.ContainsFunc(cr.State, func(e *event.Event) bool { return e.Type == event.StateCreate }) {
			t.Fatalf("/context state has no m.room.create")
		}
		// Its tokens continue exactly where the context ends.
		before, err := alice.Messages(ctx, roomID, cr.Start, "", mautrix.DirectionBackward, nil, 1)
		if err != nil {
			t.Fatalf("/messages from context start: %v", err)
		}
		if len(before.Chunk) != 1 || before.Chunk[0].ID != timeline[idx-nb-1] {
			t.Fatalf("/messages dir=b from context start = %v, want %s", ids(before.Chunk, ""), timeline[idx-nb-1])
		}
		after, err := alice.Messages(ctx, roomID, cr.End, "", mautrix.DirectionForward, nil, 1)
		if err != nil {
			t.Fatalf("/messages from context end: %v", err)
		}
		if len(after.Chunk) != 1 || after.Chunk[0].ID != timeline[idx+na+1] {
			t.Fatalf("/messages dir=f from context end = %v, want %s", ids(after.Chunk, ""), timeline[idx+na+1])
		}

		// GET /event.
		ev, err := bob.GetEvent(ctx, roomID, sent[0])
		if err != nil {
			t.Fatalf("/event: %v", err)
		}
		if ev.ID != sent[0] || ev.Sender != alice.UserID || ev.Type != event.EventMessage || ev.RoomID != roomID ||
			ev.Content.Raw["body"] != "message 0" || ev.Timestamp == 0 {
			t.Fatalf("/event = %+v, want alice's message 0", ev)
		}
		// unsigned.transaction_id goes only to the device that sent it.
		if own, err := alice.GetEvent(ctx, roomID, sent[0]); err != nil || own.Unsigned.TransactionID != "txn-0" {
			t.Fatalf("sender's /event unsigned.transaction_id = %q (%v), want txn-0", own.Unsigned.TransactionID, err)
		}
		if ev.Unsigned.TransactionID != "" {
			t.Fatalf("another user's /event carries unsigned.transaction_id %q", ev.Unsigned.TransactionID)
		}
		_, err = alice.GetEvent(ctx, roomID, "$doesnotexist")
		wantMatrixError(t, err, 404, "M_NOT_FOUND")

		// State: everything, and by type and key.
		state, err := bob.State(ctx, roomID)
		if err != nil {
			t.Fatalf("/state: %v", err)
		}
		for _, k := range []struct {
			typ event.Type
			key string
		}{{event.StateCreate, ""}, {event.StatePowerLevels, ""}, {event.StateJoinRules, ""},
			{event.StateMember, alice.UserID.String()}, {event.StateMember, bob.UserID.String()}} {
			if state[k.typ][k.key] == nil {
				t.Fatalf("/state has no %s/%q", k.typ.Type, k.key)
			}
		}
		var missing map[string]any
		err = alice.StateEvent(ctx, roomID, event.NewEventType("org.example.none"), "", &missing)
		wantMatrixError(t, err, 404, "M_NOT_FOUND")

		// Rename the room through state and read it back.
		if _, err := alice.SendStateEvent(ctx, roomID, event.StateRoomName, "", map[string]any{"name": "Renamed"}); err != nil {
			t.Fatalf("set name: %v", err)
		}
		if err := bob.StateEvent(ctx, roomID, event.StateRoomName, "", &name); err != nil || name["name"] != "Renamed" {
			t.Fatalf("name after rename = %v (%v), want Renamed", name, err)
		}

		// Redaction: bob redacts his own message; bob may not redact alice's.
		red, err := bob.RedactEvent(ctx, roomID, sent[1], mautrix.ReqRedact{Reason: "oops"})
		if err != nil {
			t.Fatalf("redact: %v", err)
		}
		_, err = bob.RedactEvent(ctx, roomID, sent[0])
		wantMatrixError(t, err, 403, "M_FORBIDDEN")
		checkRedacted := func(where string, ev *event.Event) {
			t.Helper()
			if ev == nil {
				t.Fatalf("%s: redacted event missing", where)
			}
			if len(ev.Content.Raw) != 0 {
				t.Fatalf("%s: redacted content = %v, want {}", where, ev.Content.Raw)
			}
			rb := ev.Unsigned.RedactedBecause
			if rb == nil || rb.ID != red.EventID || rb.Type != event.EventRedaction || rb.Sender != bob.UserID {
				t.Fatalf("%s: unsigned.redacted_because = %+v, want bob's redaction %s", where, rb, red.EventID)
			}
		}
		ev, err = alice.GetEvent(ctx, roomID, sent[1])
		if err != nil {
			t.Fatalf("/event of redacted: %v", err)
		}
		checkRedacted("/event", ev)
		back = paginate(t, ctx, alice, roomID, mautrix.DirectionBackward, 50)
		checkRedacted("/messages", findEvent(back, sent[1]))
		redEv := findEvent(back, red.EventID)
		if redEv == nil || (redEv.Redacts != sent[1] && redEv.Content.Raw["redacts"] != sent[1].String()) {
			t.Fatalf("redaction event in /messages = %+v, want one redacting %s", redEv, sent[1])
		}

		// Kick: bob is out and cannot send.
		if _, err := alice.KickUser(ctx, roomID, &mautrix.ReqKickUser{UserID: bob.UserID, Reason: "bye"}); err != nil {
			t.Fatalf("kick: %v", err)
		}
		if m := membershipOf(t, ctx, alice, roomID, bob.UserID); m["membership"] != "leave" || m["reason"] != "bye" {
			t.Fatalf("bob's member content after kick = %v, want leave with reason", m)
		}
		_, err = bob.SendText(ctx, roomID, "still here?")
		wantMatrixError(t, err, 403, "M_FORBIDDEN")
		wantInJoinedRooms(t, ctx, bob, roomID, false)
		wantJoinedMembers(t, ctx, alice, roomID, alice.UserID)
		wantMembers(t, ctx, alice, roomID, mautrix.ReqMembers{Membership: event.MembershipLeave},
			map[id.UserID]event.Membership{bob.UserID: event.MembershipLeave})
		// A former member reads the state as it was when they left.
		if _, err := alice.SendStateEvent(ctx, roomID, event.StateRoomName, "", map[string]any{"name": "After the kick"}); err != nil {
			t.Fatalf("set name: %v", err)
		}
		if err := bob.StateEvent(ctx, roomID, event.StateRoomName, "", &name); err != nil || name["name"] != "Renamed" {
			t.Fatalf("kicked bob reads name %v (%v); want the name when he left, Renamed", name, err)
		}

		// Ban: carol, even invited, cannot join; unban lets her in again.
		invite(t, ctx, alice, roomID, carol.UserID)
		if _, err := alice.BanUser(ctx, roomID, &mautrix.ReqBanUser{UserID: carol.UserID, Reason: "spam"}); err != nil {
			t.Fatalf("ban: %v", err)
		}
		wantMembership(t, ctx, alice, roomID, carol.UserID, event.MembershipBan)
		_, err = carol.JoinRoomByID(ctx, roomID)
		wantMatrixError(t, err, 403, "M_FORBIDDEN")
		wantMembers(t, ctx, alice, roomID, mautrix.ReqMembers{Membership: event.MembershipBan},
			map[id.UserID]event.Membership{carol.UserID: event.MembershipBan})
		if _, err := alice.UnbanUser(ctx, roomID, &mautrix.ReqUnbanUser{UserID: carol.UserID}); err != nil {
			t.Fatalf("unban: %v", err)
		}
		wantMembership(t, ctx, alice, roomID, carol.UserID, event.MembershipLeave)
		invite(t, ctx, alice, roomID, carol.UserID)
		join(t, ctx, carol, roomID.String())
		wantJoinedMembers(t, ctx, alice, roomID, alice.UserID, carol.UserID)

		// Bob, kicked, needs a new invite to come back.
		_, err = bob.JoinRoomByID(ctx, roomID)
		wantMatrixError(t, err, 403, "M_FORBIDDEN")
		invite(t, ctx, alice, roomID, bob.UserID)
		join(t, ctx, bob, roomID.String())
		send(t, ctx, bob, roomID, "back again", "txn-back")
		wantJoinedMembers(t, ctx, alice, roomID, alice.UserID, bob.UserID, carol.UserID)
		allJoined := map[id.UserID]event.Membership{alice.UserID: "join", bob.UserID: "join", carol.UserID: "join"}
		wantMembers(t, ctx, bob, roomID, mautrix.ReqMembers{}, allJoined)
		wantMembers(t, ctx, bob, roomID, mautrix.ReqMembers{NotMembership: event.MembershipLeave}, allJoined)

		// Bob leaves and forgets; alice, joined, may not forget.
		if _, err := bob.LeaveRoom(ctx, roomID); err != nil {
			t.Fatalf("leave: %v", err)
		}
		wantInJoinedRooms(t, ctx, bob, roomID, false)
		wantJoinedMembers(t, ctx, alice, roomID, alice.UserID, carol.UserID)
		wantMembers(t, ctx, alice, roomID, mautrix.ReqMembers{NotMembership: event.MembershipJoin},
			map[id.UserID]event.Membership{bob.UserID: event.MembershipLeave})
		wantMembers(t, ctx, alice, roomID, mautrix.ReqMembers{Membership: event.MembershipJoin},
			map[id.UserID]event.Membership{alice.UserID: "join", carol.UserID: "join"})
		_, err = alice.ForgetRoom(ctx, roomID)
		wantMatrixError(t, err, 400, "M_UNKNOWN")
		if _, err := bob.ForgetRoom(ctx, roomID); err != nil {
			t.Fatalf("forget: %v", err)
		}
		wantInJoinedRooms(t, ctx, bob, roomID, false)

		// Profile: a new displayname shows in GET profile and in a new
		// member event in the room.
		oldMember, err := alice.FullStateEvent(ctx, roomID, event.StateMember, alice.UserID.String())
		if err != nil {
			t.Fatalf("alice's member event: %v", err)
		}
		if err := alice.SetDisplayName(ctx, "Alice Liddell"); err != nil {
			t.Fatalf("set displayname: %v", err)
		}
		prof, err := bob.GetProfile(ctx, alice.UserID)
		if err != nil || prof.DisplayName != "Alice Liddell" {
			t.Fatalf("profile = %+v (%v), want displayname Alice Liddell", prof, err)
		}
		newMember, err := carol.FullStateEvent(ctx, roomID, event.StateMember, alice.UserID.String())
		if err != nil {
			t.Fatalf("alice's member event after rename: %v", err)
		}
		if newMember.ID == oldMember.ID || newMember.Content.Raw["displayname"] != "Alice Liddell" ||
			newMember.Content.Raw["membership"] != "join" {
			t.Fatalf("member event after rename = %s %v, want a new join event with the displayname (old %s)",
				newMember.ID, newMember.Content.Raw, oldMember.ID)
		}
		jm := wantJoinedMembers(t, ctx, carol, roomID, alice.UserID, carol.UserID)
		if jm[alice.UserID].DisplayName != "Alice Liddell" {
			t.Fatalf("joined_members display_name = %q, want Alice Liddell", jm[alice.UserID].DisplayName)
		}

		// Devices: list, rename, delete with UIA.
		wantDevices(t, ctx, alice, alice.DeviceID, alice2.DeviceID)
		if err := alice.SetDeviceInfo(ctx, alice2.DeviceID, &mautrix.ReqDeviceInfo{DisplayName: "renamed phone"}); err != nil {
			t.Fatalf("rename device: %v", err)
		}
		if d, err := alice.GetDeviceInfo(ctx, alice2.DeviceID); err != nil || d.DisplayName != "renamed phone" {
			t.Fatalf("device after rename = %+v (%v)", d, err)
		}
		devPath := clientPath("devices", alice2.DeviceID.String())
		session := wantUIAChallenge(t, srv.doJSON(t, ctx, "DELETE", devPath, alice.AccessToken, map[string]any{}))
		// A wrong password fails the stage: 401 with the stage's errcode
		// and the flows again.
		r := srv.doJSON(t, ctx, "DELETE", devPath, alice.AccessToken,
			map[string]any{"auth": passwordAuth("alice", "wrong password", session)})
		wantRawError(t, r, 401, "M_FORBIDDEN")
		wantUIAChallenge(t, r)
		r = srv.doJSON(t, ctx, "DELETE", devPath, alice.AccessToken,
			map[string]any{"auth": passwordAuth("alice", password("alice"), session)})
		if r.status != 200 {
			t.Fatalf("delete device with auth: %d %s", r.status, truncate(r.body))
		}
		wantTokenRevoked(t, ctx, alice2)
		_, err = alice.GetDeviceInfo(ctx, alice2.DeviceID)
		wantMatrixError(t, err, 404, "M_NOT_FOUND")
		wantDevices(t, ctx, alice, alice.DeviceID)

		// Password change with UIA logs out the other devices.
		alice3 := srv.mustLogin(t, ctx, "alice", password("alice"))
		newPW := "a brand new password"
		pwPath := clientPath("account", "password")
		session = wantUIAChallenge(t, srv.doJSON(t, ctx, "POST", pwPath, alice.AccessToken, map[string]any{"new_password": newPW}))
		r = srv.doJSON(t, ctx, "POST", pwPath, alice.AccessToken,
			map[string]any{"new_password": newPW, "auth": passwordAuth("alice", password("alice"), session)})
		if r.status != 200 {
			t.Fatalf("change password: %d %s", r.status, truncate(r.body))
		}
		wantTokenValid(t, ctx, alice)
		wantTokenRevoked(t, ctx, alice3)
		wantDevices(t, ctx, alice, alice.DeviceID)
		_, err = srv.login(t, ctx, "alice", password("alice"))
		wantMatrixError(t, err, 403, "M_FORBIDDEN")

		// Logout and logout/all.
		alice4 := srv.mustLogin(t, ctx, "alice", newPW)
		if _, err := alice4.Logout(ctx); err != nil {
			t.Fatalf("logout: %v", err)
		}
		wantTokenRevoked(t, ctx, alice4)
		wantTokenValid(t, ctx, alice)
		wantDevices(t, ctx, alice, alice.DeviceID) // logout deletes the device
		alice5 := srv.mustLogin(t, ctx, "alice", newPW)
		if _, err := alice5.LogoutAll(ctx); err != nil {
			t.Fatalf("logout/all: %v", err)
		}
		wantTokenRevoked(t, ctx, alice5)
		wantTokenRevoked(t, ctx, alice)
		alice = srv.mustLogin(t, ctx, "alice", newPW)

		// Deactivation with UIA: carol leaves her rooms and cannot log in.
		deactPath := clientPath("account", "deactivate")
		session = wantUIAChallenge(t, srv.doJSON(t, ctx, "POST", deactPath, carol.AccessToken, map[string]any{}))
		r = srv.doJSON(t, ctx, "POST", deactPath, carol.AccessToken,
			map[string]any{"auth": passwordAuth("carol", password("carol"), session)})
		if r.status != 200 {
			t.Fatalf("deactivate: %d %s", r.status, truncate(r.body))
		}
		if _, ok := r.object(t)["id_server_unbind_result"].(string); !ok {
			t.Fatalf("deactivate response lacks id_server_unbind_result: %s", r.body)
		}
		wantTokenRevoked(t, ctx, carol)
		// Spec: 403 M_USER_DEACTIVATED (Synapse) or M_FORBIDDEN.
		_, err = srv.login(t, ctx, "carol", password("carol"))
		wantMatrixError(t, err, 403, "M_USER_DEACTIVATED", "M_FORBIDDEN")
		wantMembership(t, ctx, alice, roomID, carol.UserID, event.MembershipLeave)
		wantJoinedMembers(t, ctx, alice, roomID, alice.UserID)
	})
}
