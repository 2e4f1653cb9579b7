package e2e_test

import (
	"slices"
	"strings"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// TestMembersAtSyncToken: /members?at= with a sync token (next_batch, as
// clients that lazy-load members pass it) lists the membership as of that
// token, combined with membership / not_membership; /messages accepts the
// same token as from. On a fleet the token's events part is usually a
// vector (one persister ahead of the other), which the room must be read
// at its own persister's position.
func TestMembersAtSyncToken(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		alice := srv.register(t, ctx, "alice")
		bob := srv.register(t, ctx, "bob")
		carol := srv.register(t, ctx, "carol")
		room := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "private_chat"})
		as, _ := newSyncer(t, ctx, alice, "")
		invite(t, ctx, alice, room, bob.UserID)
		as.until(t, ctx, "bob's invite", func(r *mautrix.RespSync) bool {
			return memberEventIn(timelineOf(r, room), bob.UserID) != nil
		})
		at := as.since
		t.Logf("at = %s (vector: %v)", at, strings.HasPrefix(at, "m"))

		// Afterwards: bob joins and leaves, carol is invited and joins.
		join(t, ctx, bob, room.String())
		invite(t, ctx, alice, room, carol.UserID)
		join(t, ctx, carol, room.String())
		if _, err := bob.LeaveRoom(ctx, room); err != nil {
			t.Fatalf("bob leaves: %v", err)
		}

		then := map[id.UserID]event.Membership{alice.UserID: event.MembershipJoin, bob.UserID: event.MembershipInvite}
		wantMembers(t, ctx, alice, room, mautrix.ReqMembers{At: at}, then)
		wantMembers(t, ctx, alice, room, mautrix.ReqMembers{At: at, Membership: event.MembershipInvite},
			map[id.UserID]event.Membership{bob.UserID: event.MembershipInvite})
		wantMembers(t, ctx, alice, room, mautrix.ReqMembers{At: at, NotMembership: event.MembershipJoin},
			map[id.UserID]event.Membership{bob.UserID: event.MembershipInvite})
		wantMembers(t, ctx, alice, room, mautrix.ReqMembers{At: at, NotMembership: event.MembershipInvite},
			map[id.UserID]event.Membership{alice.UserID: event.MembershipJoin})
		// Now, with the filters.
		wantMembers(t, ctx, alice, room, mautrix.ReqMembers{NotMembership: event.MembershipLeave},
			map[id.UserID]event.Membership{alice.UserID: event.MembershipJoin, carol.UserID: event.MembershipJoin})
		wantMembers(t, ctx, alice, room, mautrix.ReqMembers{Membership: event.MembershipLeave},
			map[id.UserID]event.Membership{bob.UserID: event.MembershipLeave})

		// The same position as a vector token whose minimum is 0, as when
		// another persister lags far behind: the room is read at its own
		// persister's part, not at the minimum (an empty member list).
		vec := vectorToken(t, srv, at)
		wantMembers(t, ctx, alice, room, mautrix.ReqMembers{At: vec}, then)
		wantMembers(t, ctx, alice, room, mautrix.ReqMembers{At: vec, Membership: event.MembershipInvite},
			map[id.UserID]event.Membership{bob.UserID: event.MembershipInvite})

		// /messages from the same token starts at bob's invite.
		for _, from := range []string{at, vec} {
			page, err := alice.Messages(ctx, room, from, "", mautrix.DirectionBackward, nil, 1)
			if err != nil {
				t.Fatalf("/messages from sync token %s: %v", from, err)
			}
			if len(page.Chunk) != 1 || page.Chunk[0].Type != event.StateMember || page.Chunk[0].StateKey == nil ||
				*page.Chunk[0].StateKey != bob.UserID.String() || page.Chunk[0].Content.Raw["membership"] != "invite" {
				t.Fatalf("/messages backwards from %s = %v, want bob's invite first", from, ids(page.Chunk, ""))
			}
		}
		// A garbled token is refused, not read as the beginning of time.
		_, err := alice.Members(ctx, room, mautrix.ReqMembers{At: "m1~zz_0"})
		wantMatrixError(t, err, 400, "M_INVALID_PARAM")
	})
}

// vectorToken rewrites a plain sync token "s<E>_<rest>" into the vector
// form "m0~1.<E>~…_<rest>": minimum 0, every events writer at E. The
// writers' ids are 1..n (each process assigns them in order at start-up):
// n is 1 on a monolith, 2 on the harness's fleet.
func vectorToken(t testing.TB, srv *server, tok string) string {
	t.Helper()
	if strings.HasPrefix(tok, "m") {
		return tok // already a vector
	}
	head, rest, ok := strings.Cut(strings.TrimPrefix(tok, "s"), "_")
	if !ok {
		t.Fatalf("sync token %q has no stream parts", tok)
	}
	writers := 1
	if srv.fleet != nil {
		writers = 2
	}
	var b strings.Builder
	b.WriteString("m0")
	for i := 1; i <= writers; i++ {
		b.WriteString("~" + itoa(i) + "." + head)
	}
	return b.String() + "_" + rest
}

// TestMessagesLazyMembersIncludesRequester: /messages with lazy_load_members
// returns in state the member event of every sender in the chunk, the
// requester's own included, as of the chunk (not the current one).
func TestMessagesLazyMembersIncludesRequester(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		alice := srv.register(t, ctx, "alice")
		bob := srv.register(t, ctx, "bob")
		carol := srv.register(t, ctx, "carol")
		room := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		join(t, ctx, bob, room.String())
		join(t, ctx, carol, room.String())
		if err := bob.SetDisplayName(ctx, "Bob Then"); err != nil {
			t.Fatalf("bob's displayname: %v", err)
		}
		bs, _ := newSyncer(t, ctx, bob, "")
		send(t, ctx, alice, room, "from alice", "a1")
		send(t, ctx, bob, room, "from bob", "b1")
		end := send(t, ctx, carol, room, "from carol", "c1")
		bs.until(t, ctx, "carol's message", func(r *mautrix.RespSync) bool { return findEvent(timelineOf(r, room), end) != nil })
		// After the page's end bob renames again; the page's state keeps
		// the name he had when he spoke.
		if err := bob.SetDisplayName(ctx, "Bob Now"); err != nil {
			t.Fatalf("bob's displayname: %v", err)
		}
		filter := &mautrix.FilterPart{LazyLoadMembers: true, Types: []event.Type{event.EventMessage}}
		page, err := bob.Messages(ctx, room, bs.since, "", mautrix.DirectionBackward, filter, 2)
		if err != nil {
			t.Fatalf("/messages lazy: %v", err)
		}
		var senders []string
		for _, ev := range page.Chunk {
			senders = append(senders, ev.Sender.String())
		}
		slices.Sort(senders)
		if want := users(bob.UserID, carol.UserID); !slices.Equal(senders, want) {
			t.Fatalf("page senders %v, want %v", senders, want)
		}
		if got := memberKeys(page.State); !slices.Equal(got, users(bob.UserID, carol.UserID)) {
			t.Fatalf("lazy state members %v, want the senders %v (the requester included)", got, users(bob.UserID, carol.UserID))
		}
		own := memberEventIn(page.State, bob.UserID)
		if own.Content.Raw["displayname"] != "Bob Then" {
			t.Fatalf("bob's member event in state has displayname %v, want the one at the chunk, %q", own.Content.Raw["displayname"], "Bob Then")
		}
	})
}
