package e2e_test

import (
	"slices"
	"strings"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
)

// testFederationBackfill: a room on A (the fleet) holds 30 messages before
// bob of B joins. Bob's server got the room's state with the join, not
// its history: paging /messages back past his join makes B fetch it from
// A (/backfill, served through A's router). Bob gets every message once,
// in order, down to the room's creation, and the same events in the same
// order as alice on A.
func testFederationBackfill(t *testing.T, p *fedPair) {
	ctx := fedContext(t)
	alice := p.a.register(t, ctx, p.unique("backfill-alice"))
	bob := p.b.register(t, ctx, p.unique("backfill-bob"))
	room := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	history := numbered("history", 30)
	sendAll(t, ctx, alice, room, history)

	joinRemote(t, ctx, bob, room.String(), p.a.name)
	waitMembership(t, ctx, bob, room, bob.UserID, event.MembershipJoin)
	waitMembership(t, ctx, alice, room, bob.UserID, event.MembershipJoin)
	live := followRoom(t, ctx, bob, room)

	// Small pages: the walk crosses the join and several backfill
	// requests.
	onB := paginate(t, ctx, bob, room, mautrix.DirectionBackward, 7)
	if got := messageBodies(onB, "history"); !slices.Equal(got, reversed(history)) {
		t.Fatalf("bob paged back %d messages %q, want the 30 in reverse order", len(got), got)
	}
	if last := onB[len(onB)-1]; last.Type != event.StateCreate {
		t.Errorf("bob's history ends at a %s event (%s), want the room's m.room.create", last.Type.Type, last.ID)
	}
	onA := paginate(t, ctx, alice, room, mautrix.DirectionBackward, 50)
	if a, b := ids(onA, ""), ids(onB, ""); !slices.Equal(a, b) {
		t.Errorf("history differs: A serves %d events %v, B %d events %v", len(a), a, len(b), b)
	}
	// Backfilled events are history, not news: bob's sync, which started
	// before the backfill, brings a message sent after it and nothing
	// else.
	send(t, ctx, bob, room, "after the backfill", p.unique("backfill"))
	live.waitFor(t, ctx, deliveryLimit, "", []string{"after the backfill"}, true)
}

// messageBodies returns the bodies of the m.room.message events of evs
// that start with prefix, in evs' order.
func messageBodies(evs []*event.Event, prefix string) []string {
	var out []string
	for _, ev := range evs {
		if ev.Type != event.EventMessage {
			continue
		}
		if b, _ := ev.Content.Raw["body"].(string); strings.HasPrefix(b, prefix) {
			out = append(out, b)
		}
	}
	return out
}
