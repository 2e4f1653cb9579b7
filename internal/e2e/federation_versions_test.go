package e2e_test

import (
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"ganglion/internal/events"
)

// testFederationRoomVersions: for every room version the server supports,
// a room of that version created on A is joined from B and both users
// see each other's message; and rooms of the oldest and newest versions
// created on B are joined from A. The versions run in parallel (each with
// its own users and room; the pair is shared).
func testFederationRoomVersions(t *testing.T, p *fedPair) {
	for _, v := range events.SupportedRoomVersions() {
		t.Run("a_"+v, func(t *testing.T) {
			t.Parallel()
			testFederationRoomVersion(t, p, p.a, p.b, v)
		})
	}
	for _, v := range []string{"1", "12"} {
		t.Run("b_"+v, func(t *testing.T) {
			t.Parallel()
			testFederationRoomVersion(t, p, p.b, p.a, v)
		})
	}
}

// testFederationRoomVersion: a user of home creates a room of version,
// a user of away joins it by id through home; each side sees the room as
// that version, and a message from each (one after the other) reaches
// both, in the one order.
func testFederationRoomVersion(t *testing.T, p *fedPair, home, away *fedServer, version string) {
	ctx := fedContext(t)
	creator := home.register(t, ctx, p.unique("rv"+version+"-creator"))
	joiner := away.register(t, ctx, p.unique("rv"+version+"-joiner"))
	room := createRoom(t, ctx, creator, &mautrix.ReqCreateRoom{Preset: "public_chat", RoomVersion: id.RoomVersion(version)})
	if got := joinRemote(t, ctx, joiner, room.String(), home.name); got != room {
		t.Fatalf("joined %s, want %s", got, room)
	}
	for _, c := range []*mautrix.Client{creator, joiner} {
		waitMembership(t, ctx, c, room, creator.UserID, event.MembershipJoin)
		waitMembership(t, ctx, c, room, joiner.UserID, event.MembershipJoin)
		var create event.CreateEventContent
		if err := c.StateEvent(ctx, room, event.StateCreate, "", &create); err != nil {
			t.Fatalf("%s: m.room.create of %s: %v", c.UserID, room, err)
		}
		// Version 1's create event may leave room_version out.
		if got := string(create.RoomVersion); got != version && !(version == "1" && got == "") {
			t.Errorf("%s sees %s as room version %q, want %q", c.UserID, room, got, version)
		}
	}
	ct := followRoom(t, ctx, creator, room)
	jt := followRoom(t, ctx, joiner, room)
	bodies := []string{"v" + version + " from the creator on " + home.name, "v" + version + " from the joiner on " + away.name}
	send(t, ctx, creator, room, bodies[0], p.unique("rv"))
	jt.waitArrived(t, ctx, deliveryLimit, "v"+version+" ", bodies[:1])
	send(t, ctx, joiner, room, bodies[1], p.unique("rv"))
	ct.waitFor(t, ctx, deliveryLimit, "v"+version+" ", bodies, true)
	jt.waitFor(t, ctx, deliveryLimit, "v"+version+" ", bodies, true)
}
