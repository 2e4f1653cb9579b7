package interop_test

// Rooms shared between Ganglion and Dendrite: joins both ways, messages,
// invites, leaves, rejections, backfill, remote profiles and keys, device
// list updates, typing and receipts, in room versions 10 and 11. These
// need Ganglion's federation joins (make_join / send_join both ways),
// /send, /invite, make_leave / send_leave, the persister's remote-event
// path, the EDU receivers, the client API's remote profiles and keys, and
// backfill from other servers.

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"ganglion/internal/testutil/testca"
)

// roomVersions are the room versions every room test runs in.
var roomVersions = []id.RoomVersion{id.RoomV10, id.RoomV11}

// pair is a Ganglion and a Dendrite started for one test.
type pair struct {
	g *ganglion
	d *dendrite
}

func startPair(t *testing.T) pair {
	t.Helper()
	ca := testca.New(t)
	return pair{g: startGanglion(t, ca), d: startDendrite(t, ca)}
}

// user is a registered user with a displayname set, on either server.
func user(t *testing.T, ctx context.Context, h *homeserver, localpart, displayname string) *mautrix.Client {
	t.Helper()
	c := h.register(t, ctx, localpart)
	if err := c.SetDisplayName(ctx, displayname); err != nil {
		t.Fatalf("set %s's displayname on %s: %v", localpart, h.kind, err)
	}
	return c
}

// membershipOf reads target's membership event in roomID as c sees it.
func membershipOf(ctx context.Context, c *mautrix.Client, roomID id.RoomID, target id.UserID) (content event.MemberEventContent, err error) {
	err = c.StateEvent(ctx, roomID, event.StateMember, target.String(), &content)
	return content, err
}

// waitMembership waits until c sees target's membership in roomID as want.
func waitMembership(t *testing.T, ctx context.Context, c *mautrix.Client, roomID id.RoomID, target id.UserID, want event.Membership) event.MemberEventContent {
	t.Helper()
	var got event.MemberEventContent
	eventually(t, func() (bool, string) {
		var err error
		got, err = membershipOf(ctx, c, roomID, target)
		if err != nil {
			return false, fmt.Sprintf("%s reading %s's membership in %s: %v", c.UserID, target, roomID, err)
		}
		return got.Membership == want, fmt.Sprintf("%s sees %s's membership in %s as %q, want %q", c.UserID, target, roomID, got.Membership, want)
	})
	return got
}

// timeline reads the last 100 events of roomID as c sees them, newest
// first.
func timeline(ctx context.Context, c *mautrix.Client, roomID id.RoomID) ([]*event.Event, error) {
	resp, err := c.Messages(ctx, roomID, "", "", mautrix.DirectionBackward, nil, 100)
	if err != nil {
		return nil, err
	}
	return resp.Chunk, nil
}

// bodies are the bodies of the m.room.message events in evs.
func bodies(evs []*event.Event) []string {
	var out []string
	for _, ev := range evs {
		if ev.Type != event.EventMessage {
			continue
		}
		if b, ok := ev.Content.Raw["body"].(string); ok {
			out = append(out, b)
		}
	}
	return out
}

// waitMessage waits until c's timeline of roomID holds a message with body
// sent by sender, and returns the event.
func waitMessage(t *testing.T, ctx context.Context, c *mautrix.Client, roomID id.RoomID, sender id.UserID, body string) *event.Event {
	t.Helper()
	var found *event.Event
	eventually(t, func() (bool, string) {
		evs, err := timeline(ctx, c, roomID)
		if err != nil {
			return false, fmt.Sprintf("%s reading %s: %v", c.UserID, roomID, err)
		}
		for _, ev := range evs {
			if ev.Type == event.EventMessage && ev.Sender == sender && ev.Content.Raw["body"] == body {
				found = ev
				return true, ""
			}
		}
		return false, fmt.Sprintf("%s has not seen %q from %s in %s; messages %q", c.UserID, body, sender, roomID, bodies(evs))
	})
	return found
}

// waitInvite waits until c's sync lists an invite to roomID, and returns
// the invite state it came with.
func waitInvite(t *testing.T, ctx context.Context, c *mautrix.Client, roomID id.RoomID) []*event.Event {
	t.Helper()
	var state []*event.Event
	eventually(t, func() (bool, string) {
		resp, err := c.SyncRequest(ctx, 0, "", "", false, "")
		if err != nil {
			return false, fmt.Sprintf("%s sync: %v", c.UserID, err)
		}
		inv, ok := resp.Rooms.Invite[roomID]
		if !ok {
			return false, fmt.Sprintf("%s's sync has no invite to %s", c.UserID, roomID)
		}
		state = inv.State.Events
		return true, ""
	})
	return state
}

func sendText(t *testing.T, ctx context.Context, c *mautrix.Client, roomID id.RoomID, body string) id.EventID {
	t.Helper()
	resp, err := c.SendText(ctx, roomID, body)
	if err != nil {
		t.Fatalf("%s sends %q to %s: %v", c.UserID, body, roomID, err)
	}
	return resp.EventID
}

func createRoom(t *testing.T, ctx context.Context, c *mautrix.Client, req *mautrix.ReqCreateRoom) id.RoomID {
	t.Helper()
	resp, err := c.CreateRoom(ctx, req)
	if err != nil {
		t.Fatalf("%s creates a room (%+v): %v", c.UserID, req, err)
	}
	return resp.RoomID
}

// joinVia joins roomID through the server via. The server is named both
// as via (the spec's parameter since v1.12) and as server_name (the older
// one, the only one Dendrite v0.13.8 reads).
func joinVia(t *testing.T, ctx context.Context, c *mautrix.Client, roomID id.RoomID, via string) {
	t.Helper()
	u := c.BuildURLWithFullQuery(mautrix.ClientURLPath{"v3", "join", roomID.String()}, func(q url.Values) {
		q.Set("via", via)
		q.Set("server_name", via)
	})
	var resp mautrix.RespJoinRoom
	_, err := c.MakeRequest(ctx, http.MethodPost, u, struct{}{}, &resp)
	if err != nil {
		t.Fatalf("%s joins %s via %s: %v", c.UserID, roomID, via, err)
	}
	if resp.RoomID != roomID {
		t.Fatalf("%s joined %s, asked for %s", c.UserID, resp.RoomID, roomID)
	}
	waitJoined(t, ctx, c, roomID)
}

// joinByID joins roomID the user was invited to (through the inviting
// server).
func joinByID(t *testing.T, ctx context.Context, c *mautrix.Client, roomID id.RoomID) {
	t.Helper()
	if _, err := c.JoinRoomByID(ctx, roomID); err != nil {
		t.Fatalf("%s joins %s: %v", c.UserID, roomID, err)
	}
	waitJoined(t, ctx, c, roomID)
}

// waitJoined waits until c's own server shows c joined to roomID. Dendrite
// answers a join before its room server has taken in the room's state (a
// message sent at once can meet "Room does not exist"), so the tests wait
// for this before using the room there.
func waitJoined(t *testing.T, ctx context.Context, c *mautrix.Client, roomID id.RoomID) {
	t.Helper()
	waitMembership(t, ctx, c, roomID, c.UserID, event.MembershipJoin)
}

// wantRoomVersion checks c sees roomID's create event with version rv.
func wantRoomVersion(t *testing.T, ctx context.Context, c *mautrix.Client, roomID id.RoomID, rv id.RoomVersion) {
	t.Helper()
	var create event.CreateEventContent
	if err := c.StateEvent(ctx, roomID, event.StateCreate, "", &create); err != nil {
		t.Fatalf("%s reads %s's create event: %v", c.UserID, roomID, err)
	}
	if create.RoomVersion != rv {
		t.Fatalf("%s sees %s in room version %q, want %q", c.UserID, roomID, create.RoomVersion, rv)
	}
}

// converse has local (on the room's server) and remote (just joined) send
// each other a message and checks each arrives on the other server.
func converse(t *testing.T, ctx context.Context, local, remote *mautrix.Client, roomID id.RoomID) {
	t.Helper()
	for i := range 3 {
		toRemote := fmt.Sprintf("from %s #%d", local.UserID, i)
		sendText(t, ctx, local, roomID, toRemote)
		waitMessage(t, ctx, remote, roomID, local.UserID, toRemote)
		toLocal := fmt.Sprintf("from %s #%d", remote.UserID, i)
		sendText(t, ctx, remote, roomID, toLocal)
		waitMessage(t, ctx, local, roomID, remote.UserID, toLocal)
	}
}

// leave has c leave roomID and checks the other side sees it.
func leave(t *testing.T, ctx context.Context, c, observer *mautrix.Client, roomID id.RoomID) {
	t.Helper()
	if _, err := c.LeaveRoom(ctx, roomID); err != nil {
		t.Fatalf("%s leaves %s: %v", c.UserID, roomID, err)
	}
	waitMembership(t, ctx, observer, roomID, c.UserID, event.MembershipLeave)
}

// TestDendriteJoinsGanglionRoom: a Dendrite user joins a public room on
// Ganglion (make_join/send_join served by Ganglion), in room versions 10
// and 11; both see the join with the joiner's displayname, messages cross
// both ways, and the Dendrite user leaves, which Ganglion sees.
func TestDendriteJoinsGanglionRoom(t *testing.T) {
	p := startPair(t)
	ctx := testContext(t)
	for _, rv := range roomVersions {
		t.Run("v"+string(rv), func(t *testing.T) {
			alice := user(t, ctx, &p.g.homeserver, "alice-"+string(rv), "Alice G"+string(rv))
			bob := user(t, ctx, &p.d.homeserver, "bob-"+string(rv), "Bob D"+string(rv))
			roomID := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", RoomVersion: rv, Name: "ganglion room " + string(rv)})
			sendText(t, ctx, alice, roomID, "before bob")

			joinVia(t, ctx, bob, roomID, p.g.serverName)
			wantRoomVersion(t, ctx, bob, roomID, rv)
			m := waitMembership(t, ctx, alice, roomID, bob.UserID, event.MembershipJoin)
			if m.Displayname != "Bob D"+string(rv) {
				t.Errorf("Ganglion has %s's join with displayname %q", bob.UserID, m.Displayname)
			}
			if m := waitMembership(t, ctx, bob, roomID, alice.UserID, event.MembershipJoin); m.Displayname != "Alice G"+string(rv) {
				t.Errorf("Dendrite has %s's membership with displayname %q", alice.UserID, m.Displayname)
			}
			var name event.RoomNameEventContent
			if err := bob.StateEvent(ctx, roomID, event.StateRoomName, "", &name); err != nil || name.Name != "ganglion room "+string(rv) {
				t.Errorf("Dendrite's state of %s has name %q (%v)", roomID, name.Name, err)
			}
			converse(t, ctx, alice, bob, roomID)
			leave(t, ctx, bob, alice, roomID)
		})
	}
}

// TestDendriteGanglionJoinsDendriteRoom: a Ganglion user joins a public
// room on Dendrite (Ganglion's make_join/send_join client side), in room
// versions 10 and 11; both see the join with the joiner's displayname and
// the room's state, messages cross both ways, and the Ganglion user leaves
// (a leave event Ganglion sends into the room), which Dendrite sees.
func TestDendriteGanglionJoinsDendriteRoom(t *testing.T) {
	p := startPair(t)
	ctx := testContext(t)
	for _, rv := range roomVersions {
		t.Run("v"+string(rv), func(t *testing.T) {
			bob := user(t, ctx, &p.d.homeserver, "bob-"+string(rv), "Bob D"+string(rv))
			alice := user(t, ctx, &p.g.homeserver, "alice-"+string(rv), "Alice G"+string(rv))
			roomID := createRoom(t, ctx, bob, &mautrix.ReqCreateRoom{Preset: "public_chat", RoomVersion: rv, Topic: "dendrite room " + string(rv)})
			sendText(t, ctx, bob, roomID, "before alice")

			joinVia(t, ctx, alice, roomID, p.d.serverName)
			wantRoomVersion(t, ctx, alice, roomID, rv)
			if m := waitMembership(t, ctx, bob, roomID, alice.UserID, event.MembershipJoin); m.Displayname != "Alice G"+string(rv) {
				t.Errorf("Dendrite has %s's join with displayname %q", alice.UserID, m.Displayname)
			}
			if m := waitMembership(t, ctx, alice, roomID, bob.UserID, event.MembershipJoin); m.Displayname != "Bob D"+string(rv) {
				t.Errorf("Ganglion has %s's membership with displayname %q", bob.UserID, m.Displayname)
			}
			var topic event.TopicEventContent
			if err := alice.StateEvent(ctx, roomID, event.StateTopic, "", &topic); err != nil || topic.Topic != "dendrite room "+string(rv) {
				t.Errorf("Ganglion's state of %s has topic %q (%v)", roomID, topic.Topic, err)
			}
			converse(t, ctx, bob, alice, roomID)
			leave(t, ctx, alice, bob, roomID)
		})
	}
}

// TestDendriteInvites: invites both ways, accepted and rejected. A
// Ganglion user invites a Dendrite user into a private room (Ganglion
// sends /invite to Dendrite); the Dendrite user sees the invite and joins
// through Ganglion. A Dendrite user invites a Ganglion user (Dendrite
// sends /invite to Ganglion); the Ganglion user sees it and joins through
// Dendrite. An invite rejected on either side (make_leave/send_leave to
// the inviting server) is seen as a leave by the inviter.
func TestDendriteInvites(t *testing.T) {
	p := startPair(t)
	ctx := testContext(t)
	for _, rv := range roomVersions {
		t.Run("v"+string(rv), func(t *testing.T) {
			alice := user(t, ctx, &p.g.homeserver, "alice-"+string(rv), "Alice G")
			bob := user(t, ctx, &p.d.homeserver, "bob-"+string(rv), "Bob D")
			carol := user(t, ctx, &p.g.homeserver, "carol-"+string(rv), "Carol G")
			dave := user(t, ctx, &p.d.homeserver, "dave-"+string(rv), "Dave D")

			t.Run("ganglion invites dendrite", func(t *testing.T) {
				roomID := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "private_chat", RoomVersion: rv})
				if _, err := alice.InviteUser(ctx, roomID, &mautrix.ReqInviteUser{UserID: bob.UserID}); err != nil {
					t.Fatalf("invite %s: %v", bob.UserID, err)
				}
				waitInvite(t, ctx, bob, roomID)
				waitMembership(t, ctx, alice, roomID, bob.UserID, event.MembershipInvite)
				joinByID(t, ctx, bob, roomID)
				waitMembership(t, ctx, alice, roomID, bob.UserID, event.MembershipJoin)
				converse(t, ctx, alice, bob, roomID)
			})
			t.Run("dendrite invites ganglion", func(t *testing.T) {
				roomID := createRoom(t, ctx, bob, &mautrix.ReqCreateRoom{Preset: "private_chat", RoomVersion: rv})
				if _, err := bob.InviteUser(ctx, roomID, &mautrix.ReqInviteUser{UserID: alice.UserID}); err != nil {
					t.Fatalf("invite %s: %v", alice.UserID, err)
				}
				state := waitInvite(t, ctx, alice, roomID)
				if !slices.ContainsFunc(state, func(ev *event.Event) bool { return ev.Type == event.StateCreate }) {
					t.Errorf("Ganglion's invite to %s carries no create event in its stripped state (%d events)", roomID, len(state))
				}
				joinByID(t, ctx, alice, roomID)
				waitMembership(t, ctx, bob, roomID, alice.UserID, event.MembershipJoin)
				wantRoomVersion(t, ctx, alice, roomID, rv)
				converse(t, ctx, bob, alice, roomID)
			})
			t.Run("dendrite rejects", func(t *testing.T) {
				roomID := createRoom(t, ctx, carol, &mautrix.ReqCreateRoom{Preset: "private_chat", RoomVersion: rv})
				if _, err := carol.InviteUser(ctx, roomID, &mautrix.ReqInviteUser{UserID: dave.UserID}); err != nil {
					t.Fatalf("invite %s: %v", dave.UserID, err)
				}
				waitInvite(t, ctx, dave, roomID)
				if _, err := dave.LeaveRoom(ctx, roomID); err != nil {
					t.Fatalf("%s rejects the invite: %v", dave.UserID, err)
				}
				waitMembership(t, ctx, carol, roomID, dave.UserID, event.MembershipLeave)
			})
			t.Run("ganglion rejects", func(t *testing.T) {
				roomID := createRoom(t, ctx, dave, &mautrix.ReqCreateRoom{Preset: "private_chat", RoomVersion: rv})
				if _, err := dave.InviteUser(ctx, roomID, &mautrix.ReqInviteUser{UserID: carol.UserID}); err != nil {
					t.Fatalf("invite %s: %v", carol.UserID, err)
				}
				waitInvite(t, ctx, carol, roomID)
				if _, err := carol.LeaveRoom(ctx, roomID); err != nil {
					t.Fatalf("%s rejects the invite: %v", carol.UserID, err)
				}
				waitMembership(t, ctx, dave, roomID, carol.UserID, event.MembershipLeave)
			})
		})
	}
}

// backfillMessages is how much history each backfill test leaves before
// the join: more than one page of /messages and of a /backfill request.
const backfillMessages = 60

// TestDendriteBackfill: history sent before a remote user joined (room
// history visibility "shared") is paginated by that user on their own
// server, which fetches it from the other with /backfill: Dendrite from
// Ganglion, and Ganglion from Dendrite. All messages arrive, in order.
func TestDendriteBackfill(t *testing.T) {
	p := startPair(t)
	ctx := testContext(t)
	history := func(prefix string) []string {
		var out []string
		for i := range backfillMessages {
			out = append(out, fmt.Sprintf("%s %02d", prefix, i))
		}
		return out
	}
	// paginateAll walks c's /messages backwards to the room's start and
	// returns the message bodies oldest first.
	paginateAll := func(t *testing.T, c *mautrix.Client, roomID id.RoomID) []string {
		t.Helper()
		var all []*event.Event
		from := ""
		for page := 0; page < 100; page++ {
			resp, err := c.Messages(ctx, roomID, from, "", mautrix.DirectionBackward, nil, 20)
			if err != nil {
				t.Fatalf("%s paginates %s: %v", c.UserID, roomID, err)
			}
			all = append(all, resp.Chunk...)
			if resp.End == "" || len(resp.Chunk) == 0 {
				break
			}
			from = resp.End
		}
		b := bodies(all)
		slices.Reverse(b)
		return b
	}
	for _, rv := range roomVersions {
		t.Run("v"+string(rv), func(t *testing.T) {
			t.Run("dendrite backfills from ganglion", func(t *testing.T) {
				alice := user(t, ctx, &p.g.homeserver, "alice-bf-"+string(rv), "Alice G")
				bob := user(t, ctx, &p.d.homeserver, "bob-bf-"+string(rv), "Bob D")
				roomID := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", RoomVersion: rv,
					InitialState: []*event.Event{{Type: event.StateHistoryVisibility, Content: event.Content{Raw: map[string]any{"history_visibility": "shared"}}}}})
				want := history("ganglion history")
				for _, b := range want {
					sendText(t, ctx, alice, roomID, b)
				}
				joinVia(t, ctx, bob, roomID, p.g.serverName)
				sendText(t, ctx, alice, roomID, "after the join")
				waitMessage(t, ctx, bob, roomID, alice.UserID, "after the join")
				want = append(want, "after the join")
				if got := paginateAll(t, bob, roomID); !slices.Equal(got, want) {
					t.Fatalf("Dendrite's history of %s:\n got %q\nwant %q", roomID, got, want)
				}
			})
			t.Run("ganglion backfills from dendrite", func(t *testing.T) {
				bob := user(t, ctx, &p.d.homeserver, "bob-bf2-"+string(rv), "Bob D")
				alice := user(t, ctx, &p.g.homeserver, "alice-bf2-"+string(rv), "Alice G")
				roomID := createRoom(t, ctx, bob, &mautrix.ReqCreateRoom{Preset: "public_chat", RoomVersion: rv,
					InitialState: []*event.Event{{Type: event.StateHistoryVisibility, Content: event.Content{Raw: map[string]any{"history_visibility": "shared"}}}}})
				want := history("dendrite history")
				for _, b := range want {
					sendText(t, ctx, bob, roomID, b)
				}
				joinVia(t, ctx, alice, roomID, p.d.serverName)
				sendText(t, ctx, bob, roomID, "after the join")
				waitMessage(t, ctx, alice, roomID, bob.UserID, "after the join")
				want = append(want, "after the join")
				if got := paginateAll(t, alice, roomID); !slices.Equal(got, want) {
					t.Fatalf("Ganglion's history of %s:\n got %q\nwant %q", roomID, got, want)
				}
			})
		})
	}
}

// TestDendriteRemoteProfiles: each server's client API answers profiles of
// the other's users (Ganglion through its federation client's
// query/profile to Dendrite), and a displayname change of a Dendrite user
// in a shared room reaches Ganglion as a new membership event.
func TestDendriteRemoteProfiles(t *testing.T) {
	p := startPair(t)
	ctx := testContext(t)
	alice := user(t, ctx, &p.g.homeserver, "alice", "Alice of Ganglion")
	bob := user(t, ctx, &p.d.homeserver, "bob", "Bob of Dendrite")

	prof, err := alice.GetProfile(ctx, bob.UserID)
	if err != nil {
		t.Fatalf("Ganglion's client API: profile of %s: %v", bob.UserID, err)
	}
	if prof.DisplayName != "Bob of Dendrite" {
		t.Fatalf("Ganglion says %s's displayname is %q", bob.UserID, prof.DisplayName)
	}
	dn, err := alice.GetDisplayName(ctx, bob.UserID)
	if err != nil || dn.DisplayName != "Bob of Dendrite" {
		t.Fatalf("Ganglion's client API: displayname of %s: %+v %v", bob.UserID, dn, err)
	}
	_, err = alice.GetProfile(ctx, p.d.userID("nobody"))
	if err == nil {
		t.Fatalf("Ganglion found a profile for a user Dendrite does not have")
	}
	prof, err = bob.GetProfile(ctx, alice.UserID)
	if err != nil || prof.DisplayName != "Alice of Ganglion" {
		t.Fatalf("Dendrite's client API: profile of %s: %+v %v", alice.UserID, prof, err)
	}

	roomID := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	joinVia(t, ctx, bob, roomID, p.g.serverName)
	waitMembership(t, ctx, alice, roomID, bob.UserID, event.MembershipJoin)
	if err := bob.SetDisplayName(ctx, "Bob renamed"); err != nil {
		t.Fatal(err)
	}
	eventually(t, func() (bool, string) {
		m, err := membershipOf(ctx, alice, roomID, bob.UserID)
		return err == nil && m.Displayname == "Bob renamed" && m.Membership == event.MembershipJoin,
			fmt.Sprintf("Ganglion has %s as %+v (%v)", bob.UserID, m, err)
	})
	if err := alice.SetDisplayName(ctx, "Alice renamed"); err != nil {
		t.Fatal(err)
	}
	eventually(t, func() (bool, string) {
		m, err := membershipOf(ctx, bob, roomID, alice.UserID)
		return err == nil && m.Displayname == "Alice renamed" && m.Membership == event.MembershipJoin,
			fmt.Sprintf("Dendrite has %s as %+v (%v)", alice.UserID, m, err)
	})
}

// TestDendriteRemoteKeys: Ganglion's client API answers /keys/query and
// /keys/claim for a Dendrite user by asking Dendrite; once the two share a
// room, a new device of the Dendrite user reaches Ganglion as an
// m.device_list_update EDU: the Ganglion user's sync lists the Dendrite
// user in device_lists.changed and /keys/query then has both devices.
func TestDendriteRemoteKeys(t *testing.T) {
	p := startPair(t)
	ctx := testContext(t)
	alice := user(t, ctx, &p.g.homeserver, "alice", "Alice G")
	bob := user(t, ctx, &p.d.homeserver, "bob", "Bob D")
	up := uploadKeys(t, ctx, "Dendrite", bob)

	q, err := alice.QueryKeys(ctx, &mautrix.ReqQueryKeys{DeviceKeys: mautrix.DeviceKeysRequest{bob.UserID: {}}, Timeout: 10000})
	if err != nil {
		t.Fatalf("Ganglion's /keys/query for %s: %v", bob.UserID, err)
	}
	if len(q.Failures) != 0 {
		t.Fatalf("Ganglion's /keys/query for %s failed for %v", bob.UserID, q.Failures)
	}
	if got := q.DeviceKeys[bob.UserID][bob.DeviceID].Keys[id.NewDeviceKeyID(id.KeyAlgorithmEd25519, bob.DeviceID)]; got != up.edKey {
		t.Fatalf("Ganglion gives %s's ed25519 key as %q, want %q (%+v)", bob.UserID, got, up.edKey, q.DeviceKeys)
	}
	c, err := alice.ClaimKeys(ctx, &mautrix.ReqClaimKeys{OneTimeKeys: mautrix.OneTimeKeysRequest{
		bob.UserID: {bob.DeviceID: id.KeyAlgorithmSignedCurve25519}}, Timeout: 10000})
	if err != nil || len(c.Failures) != 0 {
		t.Fatalf("Ganglion's /keys/claim for %s: %v %v", bob.UserID, err, c)
	}
	if k := c.OneTimeKeys[bob.UserID][bob.DeviceID][id.KeyID("signed_curve25519:AAAAAQ")]; k.Key != id.Curve25519(up.otk["key"].(string)) {
		t.Fatalf("Ganglion's claim of %s's one-time key gave %+v", bob.UserID, c.OneTimeKeys)
	}

	roomID := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "private_chat"})
	if _, err := alice.InviteUser(ctx, roomID, &mautrix.ReqInviteUser{UserID: bob.UserID}); err != nil {
		t.Fatal(err)
	}
	waitInvite(t, ctx, bob, roomID)
	joinByID(t, ctx, bob, roomID)
	waitMembership(t, ctx, alice, roomID, bob.UserID, event.MembershipJoin)
	// Dendrite learns which servers are in the room asynchronously after
	// the join; a message of bob's reaching Ganglion shows it counts
	// Ganglion in, so the device list update below is sent there too.
	sendText(t, ctx, bob, roomID, "hello from dendrite")
	waitMessage(t, ctx, alice, roomID, bob.UserID, "hello from dendrite")
	first, err := alice.SyncRequest(ctx, 0, "", "", false, "")
	if err != nil {
		t.Fatal(err)
	}

	// A second device for bob, with keys.
	bob2, err := mautrix.NewClient(p.d.clientURL, "", "")
	if err != nil {
		t.Fatal(err)
	}
	bob2.Client = p.d.http
	if _, err := bob2.Login(ctx, &mautrix.ReqLogin{Type: mautrix.AuthTypePassword, StoreCredentials: true,
		Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: "bob"}, Password: password("bob")}); err != nil {
		t.Fatalf("log bob in on Dendrite again: %v", err)
	}
	up2 := uploadKeys(t, ctx, "Dendrite", bob2)

	// The sync must say bob's devices changed, and /keys/query must then
	// list the new device: either may come first.
	since, sawChange := first.NextBatch, false
	eventually(t, func() (bool, string) {
		resp, err := alice.SyncRequest(ctx, 0, since, "", false, "")
		if err != nil {
			return false, fmt.Sprintf("sync: %v", err)
		}
		since = resp.NextBatch
		sawChange = sawChange || slices.Contains(resp.DeviceLists.Changed, bob.UserID)
		q, err := alice.QueryKeys(ctx, &mautrix.ReqQueryKeys{DeviceKeys: mautrix.DeviceKeysRequest{bob.UserID: {}}, Timeout: 10000})
		if err != nil {
			return false, fmt.Sprintf("/keys/query: %v", err)
		}
		devs := q.DeviceKeys[bob.UserID]
		got := devs[bob2.DeviceID].Keys[id.NewDeviceKeyID(id.KeyAlgorithmEd25519, bob2.DeviceID)]
		return sawChange && got == up2.edKey && len(devs) == 2,
			fmt.Sprintf("device_lists.changed listed %s: %v; Ganglion has %s's devices as %+v, want %s and %s",
				bob.UserID, sawChange, bob.UserID, devs, bob.DeviceID, bob2.DeviceID)
	})
}

// waitEphemeral syncs c incrementally from since until an ephemeral event
// of typ in roomID satisfies cond.
func waitEphemeral(t *testing.T, ctx context.Context, c *mautrix.Client, roomID id.RoomID, since, typ, what string, cond func(content map[string]any) bool) {
	t.Helper()
	eventually(t, func() (bool, string) {
		resp, err := c.SyncRequest(ctx, 0, since, "", false, "")
		if err != nil {
			return false, fmt.Sprintf("%s sync: %v", c.UserID, err)
		}
		since = resp.NextBatch
		if jr := resp.Rooms.Join[roomID]; jr != nil {
			for _, ev := range jr.Ephemeral.Events {
				if ev.Type.Type == typ && cond(ev.Content.Raw) {
					return true, ""
				}
			}
		}
		return false, fmt.Sprintf("%s's syncs have not shown %s", c.UserID, what)
	})
}

// typingIncludes is a waitEphemeral condition on m.typing.
func typingIncludes(user id.UserID) func(map[string]any) bool {
	return func(c map[string]any) bool {
		ids, _ := c["user_ids"].([]any)
		return slices.Contains(ids, any(user.String()))
	}
}

// receiptBy is a waitEphemeral condition on m.receipt.
func receiptBy(user id.UserID, eventID id.EventID) func(map[string]any) bool {
	return func(c map[string]any) bool {
		byType, _ := c[eventID.String()].(map[string]any)
		byUser, _ := byType["m.read"].(map[string]any)
		_, ok := byUser[user.String()]
		return ok
	}
}

// TestDendriteTypingAndReceipts: in a shared room, typing notifications
// and read receipts cross both ways as EDUs (m.typing, m.receipt) and show
// in the other server's sync.
func TestDendriteTypingAndReceipts(t *testing.T) {
	p := startPair(t)
	ctx := testContext(t)
	alice := user(t, ctx, &p.g.homeserver, "alice", "Alice G")
	bob := user(t, ctx, &p.d.homeserver, "bob", "Bob D")
	roomID := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	joinVia(t, ctx, bob, roomID, p.g.serverName)
	waitMembership(t, ctx, alice, roomID, bob.UserID, event.MembershipJoin)
	fromAlice := sendText(t, ctx, alice, roomID, "read me, bob")
	waitMessage(t, ctx, bob, roomID, alice.UserID, "read me, bob")
	fromBob := sendText(t, ctx, bob, roomID, "read me, alice")
	waitMessage(t, ctx, alice, roomID, bob.UserID, "read me, alice")

	aliceSync, err := alice.SyncRequest(ctx, 0, "", "", false, "")
	if err != nil {
		t.Fatal(err)
	}
	bobSync, err := bob.SyncRequest(ctx, 0, "", "", false, "")
	if err != nil {
		t.Fatal(err)
	}

	if _, err := bob.UserTyping(ctx, roomID, true, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	waitEphemeral(t, ctx, alice, roomID, aliceSync.NextBatch, "m.typing", "bob typing", typingIncludes(bob.UserID))
	if _, err := alice.UserTyping(ctx, roomID, true, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	waitEphemeral(t, ctx, bob, roomID, bobSync.NextBatch, "m.typing", "alice typing", typingIncludes(alice.UserID))

	if err := bob.SendReceipt(ctx, roomID, fromAlice, event.ReceiptTypeRead, map[string]any{}); err != nil {
		t.Fatal(err)
	}
	waitEphemeral(t, ctx, alice, roomID, aliceSync.NextBatch, "m.receipt", "bob's receipt", receiptBy(bob.UserID, fromAlice))
	if err := alice.SendReceipt(ctx, roomID, fromBob, event.ReceiptTypeRead, map[string]any{}); err != nil {
		t.Fatal(err)
	}
	waitEphemeral(t, ctx, bob, roomID, bobSync.NextBatch, "m.receipt", "alice's receipt", receiptBy(alice.UserID, fromBob))
}
