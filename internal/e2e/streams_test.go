package e2e_test

import (
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// TestSyncAccountData: global and room account data and tags reach sync,
// initial and incremental; m.ignored_user_list hides the ignored user's
// messages and invites.
func TestSyncAccountData(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		alice := srv.register(t, ctx, "alice")
		bob := srv.register(t, ctx, "bob")
		mallory := srv.register(t, ctx, "mallory")
		room := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		join(t, ctx, bob, room.String())
		join(t, ctx, mallory, room.String())
		as, _ := newSyncer(t, ctx, alice, "")

		if err := alice.SetAccountData(ctx, "com.example.global", map[string]any{"n": 1}); err != nil {
			t.Fatalf("global account data: %v", err)
		}
		if err := alice.SetRoomAccountData(ctx, room, "com.example.room", map[string]any{"n": 2}); err != nil {
			t.Fatalf("room account data: %v", err)
		}
		if err := alice.AddTag(ctx, room, "u.work", 0.5); err != nil {
			t.Fatalf("tag: %v", err)
		}
		check := func(what string, resp *mautrix.RespSync) {
			t.Helper()
			if g := accountDataOf(resp.AccountData.Events, "com.example.global"); g == nil || g["n"] != 1.0 {
				t.Fatalf("%s: global account data = %v, want {n:1}", what, g)
			}
			jr := joinedRoom(t, resp, room)
			if r := accountDataOf(jr.AccountData.Events, "com.example.room"); r == nil || r["n"] != 2.0 {
				t.Fatalf("%s: room account data = %v, want {n:2}", what, r)
			}
			tags := accountDataOf(jr.AccountData.Events, "m.tag")
			work, _ := tags["tags"].(map[string]any)["u.work"].(map[string]any)
			if work == nil || work["order"] != 0.5 {
				t.Fatalf("%s: m.tag = %v, want u.work with order 0.5", what, tags)
			}
		}
		check("incremental sync", as.next(t, ctx, 0))
		_, initial := newSyncer(t, ctx, alice, "")
		check("initial sync", initial)

		// An update comes once, with the new content.
		if err := alice.SetAccountData(ctx, "com.example.global", map[string]any{"n": 3}); err != nil {
			t.Fatalf("global account data: %v", err)
		}
		resp := as.next(t, ctx, 0)
		if g := accountDataOf(resp.AccountData.Events, "com.example.global"); g == nil || g["n"] != 3.0 {
			t.Fatalf("updated global account data = %v, want {n:3}", g)
		}
		if jr := resp.Rooms.Join[room]; jr != nil && accountDataOf(jr.AccountData.Events, "com.example.room") != nil {
			t.Fatalf("unchanged room account data sent again")
		}

		// Removing the tag updates m.tag.
		if err := alice.RemoveTag(ctx, room, "u.work"); err != nil {
			t.Fatalf("remove tag: %v", err)
		}
		jr := joinedRoom(t, as.next(t, ctx, 0), room)
		tags := accountDataOf(jr.AccountData.Events, "m.tag")
		if tags == nil {
			t.Fatalf("tag removal did not update m.tag in sync")
		}
		if m, _ := tags["tags"].(map[string]any); len(m) != 0 {
			t.Fatalf("m.tag after removing u.work = %v, want no tags", tags)
		}

		// Ignoring mallory: her messages and invites disappear; bob's,
		// sent after hers, show alice's stream has passed them.
		if err := alice.SetAccountData(ctx, "m.ignored_user_list", map[string]any{
			"ignored_users": map[string]any{mallory.UserID.String(): map[string]any{}},
		}); err != nil {
			t.Fatalf("ignore mallory: %v", err)
		}
		resp = as.next(t, ctx, 0)
		if accountDataOf(resp.AccountData.Events, "m.ignored_user_list") == nil {
			t.Fatalf("m.ignored_user_list not in sync")
		}
		hidden := send(t, ctx, mallory, room, "ignored", "ignored")
		malloryRoom := createRoom(t, ctx, mallory, &mautrix.ReqCreateRoom{Preset: "private_chat"})
		invite(t, ctx, mallory, malloryRoom, alice.UserID)
		bobRoom := createRoom(t, ctx, bob, &mautrix.ReqCreateRoom{Preset: "private_chat"})
		invite(t, ctx, bob, bobRoom, alice.UserID)
		seen := send(t, ctx, bob, room, "visible", "visible")
		var gotMsg, gotInvite bool
		as.until(t, ctx, "bob's message and invite", func(r *mautrix.RespSync) bool {
			if findEvent(timelineOf(r, room), hidden) != nil {
				t.Fatalf("alice's sync shows ignored mallory's message")
			}
			if r.Rooms.Invite[malloryRoom] != nil {
				t.Fatalf("alice's sync shows ignored mallory's invite")
			}
			gotMsg = gotMsg || findEvent(timelineOf(r, room), seen) != nil
			gotInvite = gotInvite || r.Rooms.Invite[bobRoom] != nil
			return gotMsg && gotInvite
		})
		_, initial = newSyncer(t, ctx, alice, "")
		if findEvent(timelineOf(initial, room), hidden) != nil || initial.Rooms.Invite[malloryRoom] != nil {
			t.Fatalf("alice's initial sync shows ignored mallory's message or invite")
		}
	})
}

// TestSyncToDevice: a message for one device arrives once, in the next
// sync, and not after the client acknowledged it by syncing on; "*"
// reaches every device; an undelivered message survives a restart.
func TestSyncToDevice(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		alice := srv.register(t, ctx, "alice")
		alice2 := srv.mustLogin(t, ctx, "alice", password("alice"))
		bob := srv.register(t, ctx, "bob")
		s1, _ := newSyncer(t, ctx, alice, "")
		s2, _ := newSyncer(t, ctx, alice2, "")

		toDevice(t, ctx, bob, alice.UserID, alice.DeviceID, map[string]any{"n": "one"})
		// A response the client never saw (it retries the same since)
		// must not lose the message.
		wantToDevice(t, doSync(t, ctx, alice, syncParams{since: s1.since}), bob.UserID, "one")
		resp := s1.next(t, ctx, 0)
		wantToDevice(t, resp, bob.UserID, "one")
		if resp = s1.next(t, ctx, 0); len(resp.ToDevice.Events) != 0 {
			t.Fatalf("to-device message delivered again after acknowledging: %v", toDeviceBodies(resp))
		}
		if resp = s2.next(t, ctx, 0); len(resp.ToDevice.Events) != 0 {
			t.Fatalf("message for device 1 reached device 2: %v", toDeviceBodies(resp))
		}

		toDevice(t, ctx, bob, alice.UserID, "*", map[string]any{"n": "all"})
		wantToDevice(t, s1.next(t, ctx, 0), bob.UserID, "all")
		wantToDevice(t, s2.next(t, ctx, 0), bob.UserID, "all")

		// More than one sync's worth (the server sends at most 100 a
		// sync): the rest follows in the next, in order, none twice.
		const many = 120
		for i := range many {
			toDevice(t, ctx, bob, alice.UserID, alice.DeviceID, map[string]any{"n": itoa(i)})
		}
		var got []string
		for range 5 {
			resp := s1.next(t, ctx, 0)
			for _, ev := range resp.ToDevice.Events {
				n, _ := ev.Content.Raw["n"].(string)
				got = append(got, n)
			}
			if len(got) >= many {
				break
			}
		}
		if len(got) != many {
			t.Fatalf("received %d of %d to-device messages", len(got), many)
		}
		for i, n := range got {
			if n != itoa(i) {
				t.Fatalf("to-device message %d is %q, want %q (order, no duplicates)", i, n, itoa(i))
			}
		}

		// Sent, then the server restarts before alice syncs.
		toDevice(t, ctx, bob, alice.UserID, alice.DeviceID, map[string]any{"n": "durable"})
		srv.restart(t)
		wantToDevice(t, s1.next(t, ctx, 0), bob.UserID, "durable")
		if resp = s1.next(t, ctx, 0); len(resp.ToDevice.Events) != 0 {
			t.Fatalf("to-device message delivered again after the restart: %v", toDeviceBodies(resp))
		}
	})
}

func toDeviceBodies(resp *mautrix.RespSync) []any {
	var out []any
	for _, ev := range resp.ToDevice.Events {
		out = append(out, ev.Content.Raw["n"])
	}
	return out
}

// wantToDevice checks resp holds exactly one to-device message, from
// sender with content n.
func wantToDevice(t testing.TB, resp *mautrix.RespSync, sender id.UserID, n string) {
	t.Helper()
	if len(resp.ToDevice.Events) != 1 {
		t.Fatalf("to_device = %v, want exactly [%s]", toDeviceBodies(resp), n)
	}
	ev := resp.ToDevice.Events[0]
	if ev.Sender != sender || ev.Type.Type != "com.example.test" || ev.Content.Raw["n"] != n {
		t.Fatalf("to-device message = %s %s %v, want com.example.test from %s with n=%s", ev.Sender, ev.Type.Type, ev.Content.Raw, sender, n)
	}
}

// TestSyncPresence: presence and status message reach a user sharing a
// room, through /sync and GET presence; a stranger gets 403.
func TestSyncPresence(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		alice := srv.register(t, ctx, "alice")
		bob := srv.register(t, ctx, "bob")
		carol := srv.register(t, ctx, "carol")
		dave := srv.register(t, ctx, "dave")
		room := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		join(t, ctx, bob, room.String())
		other := createRoom(t, ctx, carol, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		join(t, ctx, dave, other.String())
		bs, _ := newSyncer(t, ctx, bob, "")
		cs, _ := newSyncer(t, ctx, carol, "")

		for _, st := range []struct {
			state event.Presence
			msg   string
		}{{event.PresenceOnline, "hello"}, {event.PresenceUnavailable, "away"}} {
			if err := alice.SetPresence(ctx, mautrix.ReqPresence{Presence: st.state, StatusMsg: st.msg}); err != nil {
				t.Fatalf("set presence %s: %v", st.state, err)
			}
			bs.until(t, ctx, "alice "+string(st.state)+" "+st.msg, func(r *mautrix.RespSync) bool {
				for _, ev := range r.Presence.Events {
					if ev.Sender == alice.UserID && ev.Content.Raw["presence"] == string(st.state) && ev.Content.Raw["status_msg"] == st.msg {
						return true
					}
				}
				return false
			})
			got, err := bob.GetPresence(ctx, alice.UserID)
			if err != nil {
				t.Fatalf("bob GET alice's presence: %v", err)
			}
			if got.Presence != st.state || got.StatusMsg != st.msg {
				t.Fatalf("GET presence = %s %q, want %s %q", got.Presence, got.StatusMsg, st.state, st.msg)
			}
		}

		// Carol shares no room with alice.
		_, err := carol.GetPresence(ctx, alice.UserID)
		wantMatrixError(t, err, 403, "M_FORBIDDEN")
		if err := dave.SetPresence(ctx, mautrix.ReqPresence{Presence: event.PresenceOnline, StatusMsg: "dave here"}); err != nil {
			t.Fatalf("dave presence: %v", err)
		}
		cs.until(t, ctx, "dave's presence", func(r *mautrix.RespSync) bool {
			found := false
			for _, ev := range r.Presence.Events {
				if ev.Sender == alice.UserID {
					t.Fatalf("carol's sync shows alice's presence; they share no room")
				}
				found = found || (ev.Sender == dave.UserID && ev.Content.Raw["status_msg"] == "dave here")
			}
			return found
		})
	})
}
