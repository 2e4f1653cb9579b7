package e2e_test

import (
	"context"
	"slices"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"ganglion/internal/testutil"
)

// presenceOf returns user's presence event in resp, or nil.
func presenceOf(resp *mautrix.RespSync, user id.UserID) *event.Event {
	var found *event.Event
	for _, ev := range resp.Presence.Events {
		if ev.Sender == user {
			found = ev
		}
	}
	return found
}

// syncFromUntil syncs from since, without advancing, until cond accepts
// the response: one response covering everything since since, however far
// behind the answering process was at first.
func syncFromUntil(t testing.TB, ctx context.Context, c *mautrix.Client, since, what string, cond func(*mautrix.RespSync) bool) *mautrix.RespSync {
	t.Helper()
	var resp *mautrix.RespSync
	testutil.Eventually(t, waitLimit, what, func() bool {
		resp = doSync(t, ctx, c, syncParams{since: since, timeout: pollTimeout})
		return cond(resp)
	})
	return resp
}

// TestSyncPresenceOfNewlySharedUsers: an incremental sync sends the
// presence of users who newly share a room with the syncing user, though
// it did not change since the token: the members of a room the user joins,
// and a user who joins one of the user's rooms.
func TestSyncPresenceOfNewlySharedUsers(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		alice := srv.register(t, ctx, "alice")
		bob := srv.register(t, ctx, "bob")
		carol := srv.register(t, ctx, "carol")
		dave := srv.register(t, ctx, "dave")
		for _, c := range []struct {
			cl  *mautrix.Client
			msg string
		}{{alice, "alice here"}, {carol, "carol here"}, {dave, "dave here"}} {
			if err := c.cl.SetPresence(ctx, mautrix.ReqPresence{Presence: event.PresenceOnline, StatusMsg: c.msg}); err != nil {
				t.Fatalf("set presence: %v", err)
			}
		}
		aliceRoom := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		bobRoom := createRoom(t, ctx, bob, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		// Bob's token is after both presence changes (his own room's
		// creation is in it), and he shares no room with either.
		bs, initial := newSyncer(t, ctx, bob, "")
		if p := presenceOf(initial, alice.UserID); p != nil {
			t.Fatalf("bob sees alice's presence before sharing a room")
		}
		if initial.Rooms.Join[bobRoom] == nil {
			bs.until(t, ctx, "bob's room", func(r *mautrix.RespSync) bool { return r.Rooms.Join[bobRoom] != nil })
		}

		// Bob joins alice's room: alice's presence comes with it.
		join(t, ctx, bob, aliceRoom.String())
		resp := bs.until(t, ctx, "alice's room", func(r *mautrix.RespSync) bool { return r.Rooms.Join[aliceRoom] != nil })
		if p := presenceOf(resp, alice.UserID); p == nil || p.Content.Raw["status_msg"] != "alice here" {
			t.Fatalf("sync with the newly joined room: alice's presence %v, want her unchanged status", p)
		}

		// Carol joins bob's room: her presence comes with her join.
		join(t, ctx, carol, bobRoom.String())
		resp = bs.until(t, ctx, "carol's join", func(r *mautrix.RespSync) bool {
			return memberEventIn(timelineOf(r, bobRoom), carol.UserID) != nil
		})
		if p := presenceOf(resp, carol.UserID); p == nil || p.Content.Raw["status_msg"] != "carol here" {
			t.Fatalf("sync with carol's join: her presence %v, want her unchanged status", p)
		}
		// Dave joins, then more messages than the timeline holds: his
		// join is in the gap before a limited timeline, his presence is
		// still sent.
		join(t, ctx, dave, bobRoom.String())
		var last id.EventID
		for i := range 12 {
			last = send(t, ctx, carol, bobRoom, "filler "+itoa(i), "filler-"+itoa(i))
		}
		resp = syncFromUntil(t, ctx, bob, bs.since, "carol's last message", func(r *mautrix.RespSync) bool {
			return findEvent(timelineOf(r, bobRoom), last) != nil
		})
		if jr := joinedRoom(t, resp, bobRoom); !jr.Timeline.Limited || memberEventIn(jr.Timeline.Events, dave.UserID) != nil {
			t.Fatalf("want dave's join before a limited timeline (limited %v)", jr.Timeline.Limited)
		}
		if p := presenceOf(resp, dave.UserID); p == nil || p.Content.Raw["status_msg"] != "dave here" {
			t.Fatalf("sync with dave's join in the gap: his presence %v, want his unchanged status", p)
		}
		bs.since = resp.NextBatch

		// A profile change of an existing member is no new sharing.
		if err := carol.SetDisplayName(ctx, "Carol"); err != nil {
			t.Fatalf("displayname: %v", err)
		}
		resp = bs.until(t, ctx, "carol's rename", func(r *mautrix.RespSync) bool {
			ev := memberEventIn(timelineOf(r, bobRoom), carol.UserID)
			return ev != nil && ev.Content.Raw["displayname"] == "Carol"
		})
		if p := presenceOf(resp, carol.UserID); p != nil {
			t.Fatalf("a displayname change resent carol's unchanged presence")
		}
	})
}

// TestSyncLimitedUnlessEveryEventSinceSince: a room joined during the
// window is limited even when its whole history fits the timeline (a
// rejoining client's timeline has a gap since it left); full_state keeps
// the timeline to the events since since.
func TestSyncLimitedUnlessEveryEventSinceSince(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		alice := srv.register(t, ctx, "alice")
		bob := srv.register(t, ctx, "bob")
		room := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		send(t, ctx, alice, room, "before bob", "m1")
		bs, _ := newSyncer(t, ctx, bob, "")

		join(t, ctx, bob, room.String())
		jr := joinedRoom(t, bs.until(t, ctx, "the room", func(r *mautrix.RespSync) bool { return r.Rooms.Join[room] != nil }), room)
		if !jr.Timeline.Limited {
			t.Fatalf("newly joined room (%d events): limited = false, want true", len(jr.Timeline.Events))
		}

		// Leave, miss a message, rejoin: limited again.
		if _, err := bob.LeaveRoom(ctx, room); err != nil {
			t.Fatalf("leave: %v", err)
		}
		bs.until(t, ctx, "the leave", func(r *mautrix.RespSync) bool { return r.Rooms.Leave[room] != nil })
		send(t, ctx, alice, room, "while bob was away", "m2")
		join(t, ctx, bob, room.String())
		jr = joinedRoom(t, bs.until(t, ctx, "the rejoin", func(r *mautrix.RespSync) bool { return r.Rooms.Join[room] != nil }), room)
		if !jr.Timeline.Limited {
			t.Fatalf("rejoined room: limited = false, want true (events since the leave: %v)", ids(jr.Timeline.Events, ""))
		}

		// full_state: the whole state, but only the events since since.
		msg := send(t, ctx, alice, room, "after the rejoin", "m3")
		bs.until(t, ctx, "the message", func(r *mautrix.RespSync) bool { return findEvent(timelineOf(r, room), msg) != nil })
		last := send(t, ctx, alice, room, "one more", "m4")
		var full *mautrix.RespSync
		testutil.Eventually(t, waitLimit, "a full_state sync with the last message", func() bool {
			full = doSync(t, ctx, bob, syncParams{since: bs.since, fullState: true, timeout: pollTimeout})
			return findEvent(timelineOf(full, room), last) != nil
		})
		fj := joinedRoom(t, full, room)
		if got := ids(fj.Timeline.Events, ""); !slices.Equal(got, []id.EventID{last}) || fj.Timeline.Limited {
			t.Fatalf("full_state incremental timeline = %v (limited %v), want only the event since since, %s", got, fj.Timeline.Limited, last)
		}
		wantFullState(t, ctx, bob, room, fj.State.Events, fj.Timeline.Events)
	})
}
