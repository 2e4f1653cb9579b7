package e2e_test

import (
	"net"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// testFederationACL: a room on home with a member of away; home's admin
// sets an m.room.server_acl denying away's host. From then on home
// refuses a new join from away, accepts no event away sends into the room
// and sends away none of the room's events — while a second room without
// an ACL keeps flowing both ways, which is what shows "nothing came" is
// the ACL and not a slow link. The servers' hosts differ (hostA, hostB):
// an ACL matches a server name without its port. The hosts are IP
// literals, which an ACL with allow_ip_literals false would deny
// outright, home included; the ACL sets it true.
func testFederationACL(t *testing.T, p *fedPair, home, away *fedServer) {
	ctx := fedContext(t)
	admin := home.register(t, ctx, p.unique("acl-admin"))
	member := away.register(t, ctx, p.unique("acl-member"))
	late := away.register(t, ctx, p.unique("acl-late"))

	acled := createRoom(t, ctx, admin, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	open := createRoom(t, ctx, admin, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	for _, room := range []id.RoomID{acled, open} {
		joinRemote(t, ctx, member, room.String(), home.name)
		waitMembership(t, ctx, admin, room, member.UserID, event.MembershipJoin)
		waitMembership(t, ctx, member, room, member.UserID, event.MembershipJoin)
	}
	adminACL, adminOpen := followRoom(t, ctx, admin, acled), followRoom(t, ctx, admin, open)
	memberACL, memberOpen := followRoom(t, ctx, member, acled), followRoom(t, ctx, member, open)
	send(t, ctx, admin, acled, "acl before", p.unique("acl"))
	memberACL.waitFor(t, ctx, deliveryLimit, "acl before", []string{"acl before"}, true)

	awayHost, _, err := net.SplitHostPort(away.name)
	if err != nil {
		t.Fatal(err)
	}
	homeHost, _, _ := net.SplitHostPort(home.name)
	if homeHost == awayHost {
		t.Fatalf("both servers' names have host %s: an ACL cannot tell them apart", homeHost)
	}
	if _, err := admin.SendStateEvent(ctx, acled, event.StateServerACL, "", map[string]any{
		"allow": []string{"*"}, "deny": []string{awayHost}, "allow_ip_literals": true,
	}); err != nil {
		t.Fatalf("set the server ACL: %v", err)
	}

	// Home's events in the ACL'd room stay home; a message in the open
	// room, sent after them, reaches away. (The monolith's queue to a
	// destination is in order, so there its arrival proves the first was
	// never sent; the fleet's two persisters may order rooms differently,
	// so there it bounds the wait, and a late copy would show up in the
	// next test's pulls rather than here.)
	deniedHome := send(t, ctx, admin, acled, "acl denied from home", p.unique("acl"))
	send(t, ctx, admin, open, "open from home", p.unique("acl"))
	memberOpen.waitFor(t, ctx, deliveryLimit, "open from home", []string{"open from home"}, true)
	memberACL.pull(t, ctx)
	if got := memberACL.bodies("acl denied from home"); len(got) > 0 {
		t.Errorf("%s received %q from a room whose ACL denies its server", member.UserID, got)
	}
	_, err = member.GetEvent(ctx, acled, deniedHome)
	wantMatrixError(t, err, 404, "M_NOT_FOUND")

	// Away's events in the ACL'd room are refused by home (away may keep
	// them: it need not know of the ACL); the open room's are accepted.
	deniedAway := send(t, ctx, member, acled, "acl denied from away", p.unique("acl"))
	send(t, ctx, member, open, "open from away", p.unique("acl"))
	adminOpen.waitFor(t, ctx, deliveryLimit, "open from away", []string{"open from away"}, true)
	adminACL.pull(t, ctx)
	if got := adminACL.bodies("acl denied from away"); len(got) > 0 {
		t.Errorf("%s accepted %q from a server the room's ACL denies", admin.UserID, got)
	}
	_, err = admin.GetEvent(ctx, acled, deniedAway)
	wantMatrixError(t, err, 404, "M_NOT_FOUND")

	// A new join from away is refused by home. (Away still has a member
	// in the room, so it builds the join itself, as it may: the ACL binds
	// the servers that honour it, and home does not take the event.)
	_, _ = late.JoinRoom(ctx, acled.String(), &mautrix.ReqJoinRoom{Via: []string{home.name}})
	joinRemote(t, ctx, late, open.String(), home.name)
	waitMembership(t, ctx, admin, open, late.UserID, event.MembershipJoin)
	if m := memberships(t, ctx, admin, acled, mautrix.ReqMembers{})[late.UserID]; m == event.MembershipJoin {
		t.Errorf("home holds %s as joined to the ACL'd room", late.UserID)
	}
}
