package e2e_test

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// TestSyncGaplessUnderConcurrentSenders has three users send 30 messages
// each at once while a fourth syncs incrementally with a small timeline
// limit. Stitching each sync's timeline onto the previous one — filling a
// limited timeline's gap from /messages at prev_batch back to the last
// event already seen — must give every event exactly once, in the room's
// order, and exactly the sent messages.
func TestSyncGaplessUnderConcurrentSenders(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		const senders, perSender = 3, 30
		owner := srv.register(t, ctx, "gapowner")
		room := createRoom(t, ctx, owner, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		clients := []*mautrix.Client{owner}
		for i := 1; i < senders; i++ {
			c := srv.register(t, ctx, "gapsender"+itoa(i))
			join(t, ctx, c, room.String())
			clients = append(clients, c)
		}
		reader := srv.register(t, ctx, "gapreader")
		join(t, ctx, reader, room.String())
		rs, initial := newSyncer(t, ctx, reader, `{"room":{"timeline":{"limit":5}}}`)
		tl := timelineOf(initial, room)
		if len(tl) == 0 {
			t.Fatalf("initial sync has no timeline for the room")
		}
		first := tl[len(tl)-1].ID // the reader's own join, the newest event
		last := first

		var mu sync.Mutex
		sent := map[id.EventID]bool{}
		var errs []error
		var wg sync.WaitGroup
		for i, c := range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for j := range perSender {
					resp, err := c.SendMessageEvent(ctx, room, event.EventMessage,
						map[string]any{"msgtype": "m.text", "body": fmt.Sprintf("%d/%d", i, j)},
						mautrix.ReqSendEvent{TransactionID: fmt.Sprintf("gap%d-%d", i, j)})
					mu.Lock()
					if err != nil {
						errs = append(errs, err)
					} else {
						sent[resp.EventID] = true
					}
					mu.Unlock()
				}
			}()
		}
		sendersDone := make(chan struct{})
		go func() { wg.Wait(); close(sendersDone) }()

		var stitched []id.EventID
		messages := 0
		syncs, limited := 0, 0
		deadline := time.Now().Add(waitLimit)
		for {
			done := false
			select {
			case <-sendersDone:
				done = true
			default:
			}
			if done && messages >= senders*perSender {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("after %v and %d syncs the reader has %d of %d messages", waitLimit, syncs, messages, senders*perSender)
			}
			resp := rs.next(t, ctx, 200)
			syncs++
			jr := resp.Rooms.Join[room]
			if jr == nil {
				continue
			}
			var batch []*event.Event
			if jr.Timeline.Limited {
				limited++
				if jr.Timeline.PrevBatch == "" {
					t.Fatalf("limited timeline without prev_batch")
				}
				gap, found := messagesFrom(t, ctx, reader, room, jr.Timeline.PrevBatch, 10,
					func(ev *event.Event) bool { return ev.ID == last })
				if !found {
					t.Fatalf("/messages from prev_batch %q never reached the previous sync's last event %s", jr.Timeline.PrevBatch, last)
				}
				batch = append(reversed(gap), jr.Timeline.Events...)
			} else {
				batch = jr.Timeline.Events
			}
			for _, ev := range batch {
				stitched = append(stitched, ev.ID)
				if ev.Type == event.EventMessage {
					messages++
				}
			}
			if len(batch) > 0 {
				last = batch[len(batch)-1].ID
			}
		}
		if len(errs) > 0 {
			t.Fatalf("%d sends failed, first: %v", len(errs), errs[0])
		}
		t.Logf("%d syncs, %d limited", syncs, limited)

		// The room's order, from /messages, after the reader's join.
		all := reversed(ids(paginate(t, ctx, reader, room, mautrix.DirectionBackward, 50), ""))
		i := slices.Index(all, first)
		if i < 0 {
			t.Fatalf("/messages does not hold the reader's join %s", first)
		}
		want := all[i+1:]
		if !slices.Equal(stitched, want) {
			t.Fatalf("stitched sync timelines (%d events) differ from the room's timeline (%d events)\n got %v\nwant %v",
				len(stitched), len(want), stitched, want)
		}
		if len(stitched) != len(sent) {
			t.Fatalf("timeline has %d events after the join, sent %d messages", len(stitched), len(sent))
		}
		for _, e := range stitched {
			if !sent[e] {
				t.Fatalf("timeline holds %s, which nobody sent", e)
			}
		}
	})
}

// TestSyncLimitedPrevBatch: 12 messages since the last sync with a
// timeline limit of 5 give a limited timeline of the last 5, and /messages
// from prev_batch gives exactly the 7 before them, then older history.
func TestSyncLimitedPrevBatch(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		alice := srv.register(t, ctx, "alice")
		room := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "private_chat"})
		before := send(t, ctx, alice, room, "before", "before")
		s, _ := newSyncer(t, ctx, alice, `{"room":{"timeline":{"limit":5}}}`)
		var sent []id.EventID
		for i := range 12 {
			sent = append(sent, send(t, ctx, alice, room, "m"+itoa(i), "m"+itoa(i)))
		}
		jr := joinedRoom(t, s.next(t, ctx, 0), room)
		if !jr.Timeline.Limited {
			t.Fatalf("12 new events with limit 5: limited = false")
		}
		if got := ids(jr.Timeline.Events, ""); !slices.Equal(got, sent[7:]) {
			t.Fatalf("timeline = %v, want the last 5 %v", got, sent[7:])
		}
		page, err := alice.Messages(ctx, room, jr.Timeline.PrevBatch, "", mautrix.DirectionBackward, nil, 7)
		if err != nil {
			t.Fatalf("/messages from prev_batch: %v", err)
		}
		if got := ids(page.Chunk, ""); !slices.Equal(got, reversed(sent[:7])) {
			t.Fatalf("/messages from prev_batch = %v, want the 7 missing %v (newest first)", got, reversed(sent[:7]))
		}
		if page.End == "" {
			t.Fatalf("/messages from prev_batch has no end token; older history remains")
		}
		older, _ := messagesFrom(t, ctx, alice, room, page.End, 10, nil)
		if len(older) == 0 || older[0].ID != before {
			t.Fatalf("history before the gap starts with %v, want %s", ids(older, ""), before)
		}
		if last := older[len(older)-1]; last.Type != event.StateCreate {
			t.Fatalf("history ends with %s, want m.room.create", last.Type.Type)
		}
	})
}

// TestSyncStateDeltas follows a member through join, leave, rejoin and
// kick, and checks state changes hidden by a limited timeline reach the
// state section.
func TestSyncStateDeltas(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		alice := srv.register(t, ctx, "alice")
		bob := srv.register(t, ctx, "bob")
		carol := srv.register(t, ctx, "carol")
		room := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "Deltas"})
		for i := range 12 {
			send(t, ctx, alice, room, "early "+itoa(i), "early"+itoa(i))
		}
		bs, initial := newSyncer(t, ctx, bob, "")
		if len(initial.Rooms.Join)+len(initial.Rooms.Leave)+len(initial.Rooms.Invite) != 0 {
			t.Fatalf("bob's initial sync has rooms before he joined any")
		}

		// Join: the room appears with its full state.
		join(t, ctx, bob, room.String())
		resp := bs.next(t, ctx, 0)
		jr := joinedRoom(t, resp, room)
		if !jr.Timeline.Limited {
			t.Errorf("join after 12 messages with the default limit: timeline not limited")
		}
		wantFullState(t, ctx, bob, room, jr.State.Events, jr.Timeline.Events)
		if resp.Rooms.Leave[room] != nil || resp.Rooms.Invite[room] != nil {
			t.Fatalf("joined room also in leave or invite")
		}

		// Leave: in leave once, with the leave event.
		if _, err := bob.LeaveRoom(ctx, room); err != nil {
			t.Fatalf("leave: %v", err)
		}
		resp = bs.next(t, ctx, 0)
		lr := resp.Rooms.Leave[room]
		if lr == nil || resp.Rooms.Join[room] != nil {
			t.Fatalf("after leaving: leave %v join %v, want the room in leave only", roomKeys(resp.Rooms.Leave), roomKeys(resp.Rooms.Join))
		}
		if ev := memberEventIn(lr.Timeline.Events, bob.UserID); ev == nil || ev.Content.Raw["membership"] != "leave" || ev.Sender != bob.UserID {
			t.Fatalf("leave timeline %v lacks bob's leave", ids(lr.Timeline.Events, ""))
		}
		resp = bs.next(t, ctx, 0)
		if resp.Rooms.Leave[room] != nil || resp.Rooms.Join[room] != nil {
			t.Fatalf("the left room came again in the next sync")
		}

		// While bob is out the room changes; rejoining brings full state.
		if _, err := alice.SendStateEvent(ctx, room, event.StateRoomName, "", map[string]any{"name": "Renamed"}); err != nil {
			t.Fatalf("rename: %v", err)
		}
		join(t, ctx, bob, room.String())
		resp = bs.next(t, ctx, 0)
		jr = joinedRoom(t, resp, room)
		if resp.Rooms.Leave[room] != nil {
			t.Fatalf("rejoined room also in leave")
		}
		wantFullState(t, ctx, bob, room, jr.State.Events, jr.Timeline.Events)

		// Kick: bob sees the room in leave with the kick.
		if _, err := alice.KickUser(ctx, room, &mautrix.ReqKickUser{UserID: bob.UserID, Reason: "test"}); err != nil {
			t.Fatalf("kick: %v", err)
		}
		resp = bs.next(t, ctx, 0)
		lr = resp.Rooms.Leave[room]
		if lr == nil || resp.Rooms.Join[room] != nil {
			t.Fatalf("after the kick: leave %v join %v, want the room in leave only", roomKeys(resp.Rooms.Leave), roomKeys(resp.Rooms.Join))
		}
		if ev := memberEventIn(lr.Timeline.Events, bob.UserID); ev == nil || ev.Content.Raw["membership"] != "leave" || ev.Sender != alice.UserID {
			t.Fatalf("leave timeline %v lacks alice's kick of bob", ids(lr.Timeline.Events, ""))
		}

		// State changed between syncs but before a limited timeline is in
		// state, and only that.
		as, _ := newSyncer(t, ctx, alice, `{"room":{"timeline":{"limit":3}}}`)
		if _, err := alice.SendStateEvent(ctx, room, event.StateTopic, "", map[string]any{"topic": "New topic"}); err != nil {
			t.Fatalf("topic: %v", err)
		}
		join(t, ctx, carol, room.String())
		for i := range 5 {
			send(t, ctx, alice, room, "late "+itoa(i), "late"+itoa(i))
		}
		jr = joinedRoom(t, as.next(t, ctx, 0), room)
		if !jr.Timeline.Limited || len(jr.Timeline.Events) != 3 {
			t.Fatalf("7 events with limit 3: limited %v, %d events", jr.Timeline.Limited, len(jr.Timeline.Events))
		}
		var keys []stateKey
		for _, ev := range jr.State.Events {
			keys = append(keys, keyOf(ev))
		}
		slices.SortFunc(keys, func(a, b stateKey) int { return cmp.Or(cmp.Compare(a.typ, b.typ), cmp.Compare(a.key, b.key)) })
		want := []stateKey{{"m.room.member", carol.UserID.String()}, {"m.room.topic", ""}}
		if !slices.Equal(keys, want) {
			t.Fatalf("state delta = %v, want %v", keys, want)
		}
		for _, ev := range jr.State.Events {
			if ev.Type == event.StateTopic && ev.Content.Raw["topic"] != "New topic" {
				t.Fatalf("topic in state = %v, want the new one", ev.Content.Raw)
			}
		}
	})
}

// memberEventIn returns the last m.room.member event for user in evs.
func memberEventIn(evs []*event.Event, user id.UserID) *event.Event {
	var found *event.Event
	for _, ev := range evs {
		if ev.Type == event.StateMember && ev.StateKey != nil && *ev.StateKey == user.String() {
			found = ev
		}
	}
	return found
}

// TestSyncLazyLoadMembers: with lazy_load_members the state holds only the
// member events of the timeline's senders (and the user's own), each sent
// once per device; include_redundant_members repeats them.
func TestSyncLazyLoadMembers(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		alice := srv.register(t, ctx, "alice")
		bob := srv.register(t, ctx, "bob")
		carol := srv.register(t, ctx, "carol")
		dave := srv.register(t, ctx, "dave")
		room := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		for _, c := range []*mautrix.Client{bob, carol, dave} {
			join(t, ctx, c, room.String())
		}
		send(t, ctx, bob, room, "one", "one")
		send(t, ctx, bob, room, "two", "two")

		const lazy = `{"room":{"state":{"lazy_load_members":true},"timeline":{"limit":2}}}`
		s, initial := newSyncer(t, ctx, alice, lazy)
		jr := joinedRoom(t, initial, room)
		if got, want := memberKeys(jr.State.Events), users(alice.UserID, bob.UserID); !slices.Equal(got, want) {
			t.Fatalf("initial lazy sync: member state %v, want %v (own and the timeline's sender)", got, want)
		}
		if !slices.ContainsFunc(jr.State.Events, func(ev *event.Event) bool { return ev.Type == event.StateCreate }) {
			t.Fatalf("lazy loading dropped non-member state (no m.room.create)")
		}
		// The summary stands in for the members not sent.
		if n := jr.Summary.JoinedMemberCount; n == nil || *n != 4 {
			t.Fatalf("summary m.joined_member_count = %v, want 4", n)
		}
		heroes := users(jr.Summary.Heroes...)
		if want := users(bob.UserID, carol.UserID, dave.UserID); !slices.Equal(heroes, want) {
			t.Fatalf("summary m.heroes = %v, want the other members %v", heroes, want)
		}

		// A retried sync (same since: the client never got the answer)
		// must carry the member events again.
		send(t, ctx, carol, room, "retry", "retry")
		for try := range 2 {
			jr := joinedRoom(t, doSync(t, ctx, alice, syncParams{since: s.since, filter: lazy}), room)
			if got, want := memberKeys(jr.State.Events), users(carol.UserID); !slices.Equal(got, want) {
				t.Fatalf("sync attempt %d from the same since: member state %v, want %v", try, got, want)
			}
		}
		s.next(t, ctx, 0)

		steps := []struct {
			sender *mautrix.Client
			want   []string
		}{
			{carol, nil}, // sent with "retry" and acknowledged
			{bob, nil},   // already sent
			{carol, nil}, // already sent
			{dave, users(dave.UserID)},
		}
		for i, st := range steps {
			send(t, ctx, st.sender, room, "step "+itoa(i), "step"+itoa(i))
			jr := joinedRoom(t, s.next(t, ctx, 0), room)
			if got := memberKeys(jr.State.Events); !slices.Equal(got, st.want) {
				t.Fatalf("step %d (%s speaks): member state %v, want %v", i, st.sender.UserID, got, st.want)
			}
		}

		// A limited sync: membership changes in the gap come whoever spoke
		// (spec: "joins/leaves and profile changes which occur during the
		// gap are not lost"); speakers already sent stay redundant.
		erin := srv.register(t, ctx, "erin")
		join(t, ctx, erin, room.String())
		if _, err := dave.LeaveRoom(ctx, room); err != nil {
			t.Fatalf("dave leaves: %v", err)
		}
		for i := range 3 {
			send(t, ctx, bob, room, "gap "+itoa(i), "gap"+itoa(i))
		}
		jr = joinedRoom(t, s.next(t, ctx, 0), room)
		if !jr.Timeline.Limited {
			t.Fatalf("5 events with limit 2: not limited")
		}
		if got, want := memberKeys(jr.State.Events), users(dave.UserID, erin.UserID); !slices.Equal(got, want) {
			t.Fatalf("limited lazy sync: member state %v, want the gap's changes %v", got, want)
		}

		// include_redundant_members sends them every time.
		const redundant = `{"room":{"state":{"lazy_load_members":true,"include_redundant_members":true},"timeline":{"limit":2}}}`
		rs, _ := newSyncer(t, ctx, alice, redundant)
		for i := range 2 {
			send(t, ctx, bob, room, "again "+itoa(i), "again"+itoa(i))
			jr := joinedRoom(t, rs.next(t, ctx, 0), room)
			if got := memberKeys(jr.State.Events); !slices.Contains(got, bob.UserID.String()) {
				t.Fatalf("include_redundant_members, round %d: member state %v lacks bob", i, got)
			}
		}
	})
}

// TestSyncInvites: an invite comes once in invite with its stripped state,
// moves to join on joining; a rejected invite ends in leave.
func TestSyncInvites(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		alice := srv.register(t, ctx, "alice")
		bob := srv.register(t, ctx, "bob")
		bs, _ := newSyncer(t, ctx, bob, "")
		room := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "private_chat", Name: "Invitation"})
		invite(t, ctx, alice, room, bob.UserID)

		resp := bs.next(t, ctx, 0)
		ir := resp.Rooms.Invite[room]
		if ir == nil {
			t.Fatalf("invite not in rooms.invite (join %v)", roomKeys(resp.Rooms.Join))
		}
		stripped := map[stateKey]*event.Event{}
		for _, ev := range ir.State.Events {
			stripped[keyOf(ev)] = ev
		}
		if m := stripped[stateKey{"m.room.member", bob.UserID.String()}]; m == nil || m.Content.Raw["membership"] != "invite" || m.Sender != alice.UserID {
			t.Fatalf("invite_state lacks alice's invite of bob: %v", keysOf(ir.State.Events))
		}
		for _, k := range []stateKey{{"m.room.create", ""}, {"m.room.join_rules", ""}, {"m.room.name", ""}} {
			if stripped[k] == nil {
				t.Fatalf("invite_state lacks %v: %v", k, keysOf(ir.State.Events))
			}
		}
		if n := stripped[stateKey{"m.room.name", ""}]; n.Content.Raw["name"] != "Invitation" {
			t.Fatalf("stripped name = %v", n.Content.Raw)
		}
		if resp.Rooms.Join[room] != nil {
			t.Fatalf("invited room also in join")
		}
		if resp = bs.next(t, ctx, 0); resp.Rooms.Invite[room] != nil {
			t.Fatalf("the invite came again in the next sync")
		}

		join(t, ctx, bob, room.String())
		resp = bs.next(t, ctx, 0)
		joinedRoom(t, resp, room)
		if resp.Rooms.Invite[room] != nil {
			t.Fatalf("joined room still in invite")
		}

		// Invited and uninvited between two syncs: the room ends in leave,
		// and shows nothing the invite never let bob see.
		rescinded := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "private_chat"})
		secret := send(t, ctx, alice, rescinded, "members only", "secret")
		invite(t, ctx, alice, rescinded, bob.UserID)
		if _, err := alice.KickUser(ctx, rescinded, &mautrix.ReqKickUser{UserID: bob.UserID}); err != nil {
			t.Fatalf("rescind invite: %v", err)
		}
		resp = bs.next(t, ctx, 0)
		if resp.Rooms.Invite[rescinded] != nil || resp.Rooms.Join[rescinded] != nil {
			t.Fatalf("rescinded invite shows in invite or join")
		}
		if lr := resp.Rooms.Leave[rescinded]; lr != nil && findEvent(lr.Timeline.Events, secret) != nil {
			t.Fatalf("rescinded invite's leave timeline shows a message from before the invite (history: shared)")
		}

		// Rejected.
		other := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "private_chat", Name: "Declined"})
		invite(t, ctx, alice, other, bob.UserID)
		if resp = bs.next(t, ctx, 0); resp.Rooms.Invite[other] == nil {
			t.Fatalf("second invite not in rooms.invite")
		}
		if _, err := bob.LeaveRoom(ctx, other); err != nil {
			t.Fatalf("reject invite: %v", err)
		}
		resp = bs.next(t, ctx, 0)
		lr := resp.Rooms.Leave[other]
		if lr == nil || resp.Rooms.Invite[other] != nil || resp.Rooms.Join[other] != nil {
			t.Fatalf("after rejecting: leave %v invite %v join %v, want the room in leave only",
				roomKeys(resp.Rooms.Leave), roomKeys(resp.Rooms.Invite), roomKeys(resp.Rooms.Join))
		}
	})
}

func keysOf(evs []*event.Event) []stateKey {
	var out []stateKey
	for _, ev := range evs {
		out = append(out, keyOf(ev))
	}
	return out
}

// TestSyncLongPollWakes starts a /sync long-poll of 10 s, then causes
// something for the user. A long-poll that times out answers empty, so a
// response holding the new data proves the write woke it.
func TestSyncLongPollWakes(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		alice := srv.register(t, ctx, "alice")
		bob := srv.register(t, ctx, "bob")
		room := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		join(t, ctx, bob, room.String())
		bs, _ := newSyncer(t, ctx, bob, "")

		// The premise: with nothing new, a long-poll times out empty.
		if resp := bs.next(t, ctx, 200); !emptySync(resp) {
			t.Fatalf("a long-poll with nothing new answered %+v; want an empty response", resp)
		}

		var woken id.EventID
		cases := []struct {
			name  string
			cause func(i int) func(*mautrix.RespSync) bool
		}{
			{"message in a joined room", func(i int) func(*mautrix.RespSync) bool {
				ev := send(t, ctx, alice, room, "wake "+itoa(i), "wake"+itoa(i))
				woken = ev
				return func(r *mautrix.RespSync) bool { return findEvent(timelineOf(r, room), ev) != nil }
			}},
			{"invite to a new room", func(int) func(*mautrix.RespSync) bool {
				other := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "private_chat"})
				invite(t, ctx, alice, other, bob.UserID)
				return func(r *mautrix.RespSync) bool { return r.Rooms.Invite[other] != nil }
			}},
			{"to-device message", func(i int) func(*mautrix.RespSync) bool {
				toDevice(t, ctx, alice, bob.UserID, bob.DeviceID, map[string]any{"wake": i})
				return func(r *mautrix.RespSync) bool { return len(r.ToDevice.Events) == 1 }
			}},
			{"read receipt", func(int) func(*mautrix.RespSync) bool {
				ev := woken // the first case's message, already synced
				if err := alice.SendReceipt(ctx, room, ev, event.ReceiptTypeRead, nil); err != nil {
					t.Fatalf("receipt: %v", err)
				}
				return func(r *mautrix.RespSync) bool { return hasReceipt(r, room, ev, "m.read", alice.UserID) }
			}},
			{"own account data", func(i int) func(*mautrix.RespSync) bool {
				if err := bob.SetAccountData(ctx, "com.example.wake", map[string]any{"i": i}); err != nil {
					t.Fatalf("account data: %v", err)
				}
				return func(r *mautrix.RespSync) bool { return accountDataOf(r.AccountData.Events, "com.example.wake") != nil }
			}},
			{"presence of a room member", func(int) func(*mautrix.RespSync) bool {
				if err := alice.SetPresence(ctx, mautrix.ReqPresence{Presence: event.PresenceOnline, StatusMsg: "awake"}); err != nil {
					t.Fatalf("presence: %v", err)
				}
				return func(r *mautrix.RespSync) bool {
					return slices.ContainsFunc(r.Presence.Events, func(ev *event.Event) bool {
						return ev.Sender == alice.UserID && ev.Content.Raw["status_msg"] == "awake"
					})
				}
			}},
			{"typing", func(int) func(*mautrix.RespSync) bool {
				if _, err := alice.UserTyping(ctx, room, true, 30*time.Second); err != nil {
					t.Fatalf("typing: %v", err)
				}
				return func(r *mautrix.RespSync) bool {
					u, _ := typingUsers(r, room)
					return slices.Equal(u, users(alice.UserID))
				}
			}},
		}
		type result struct {
			resp *mautrix.RespSync
			err  error
		}
		const pollMS = 10000
		// startPoll sends a long-poll from bs.since and returns once the
		// server has it; the returned function waits for its answer.
		startPoll := func(name string) func() (result, time.Duration) {
			ready := make(chan struct{})
			done := make(chan result, 1)
			start := time.Now()
			go func() {
				resp, err := syncRaw(ctx, bob, syncParams{since: bs.since, timeout: pollMS}, ready)
				done <- result{resp, err}
			}()
			wait(t, ready, "sending the long-poll")
			return func() (result, time.Duration) {
				select {
				case r := <-done:
					if r.err != nil {
						t.Fatalf("%s: long-poll: %v", name, r.err)
					}
					return r, time.Since(start)
				case <-time.After(waitLimit):
					t.Fatalf("%s: long-poll did not answer within %v", name, waitLimit)
				}
				return result{}, 0
			}
		}
		for i, c := range cases {
			answer := startPoll(c.name)
			check := c.cause(i)
			r, took := answer()
			// Other streams may wake the long-poll first (on the fleet, a
			// device-list row of one writer becomes readable only when the
			// other writer's position passes it); such an answer is fine as
			// long as it came before the timeout, and a long-poll from its
			// token must then carry the change.
			for attempt := 0; !check(r.resp); attempt++ {
				b, _ := json.Marshal(r.resp)
				if took >= pollMS*time.Millisecond || attempt == 3 {
					t.Fatalf("%s: long-poll answered without it (timed out instead of waking?): %s", c.name, b)
				}
				t.Logf("%s: woken by something else first: %s", c.name, b)
				bs.since = r.resp.NextBatch
				r, took = startPoll(c.name)()
			}
			bs.since = r.resp.NextBatch
		}
	})
}

// toDevice sends one to-device message of type com.example.test.
func toDevice(t testing.TB, ctx context.Context, c *mautrix.Client, user id.UserID, device id.DeviceID, content map[string]any) {
	t.Helper()
	_, err := c.SendToDevice(ctx, event.NewEventType("com.example.test"), &mautrix.ReqSendToDevice{
		Messages: map[id.UserID]map[id.DeviceID]*event.Content{user: {device: {Raw: content}}},
	})
	if err != nil {
		t.Fatalf("%s: sendToDevice: %v", c.UserID, err)
	}
}

// TestSyncTokenSurvivesRestart: a sync token from before a restart still
// gives exactly the events that came after it.
func TestSyncTokenSurvivesRestart(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		alice := srv.register(t, ctx, "alice")
		bob := srv.register(t, ctx, "bob")
		room := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		join(t, ctx, bob, room.String())
		m1 := send(t, ctx, alice, room, "one", "one")
		bs, initial := newSyncer(t, ctx, bob, "")
		if findEvent(timelineOf(initial, room), m1) == nil {
			t.Fatalf("initial sync lacks m1")
		}
		m2 := send(t, ctx, alice, room, "two", "two")

		srv.restart(t)

		m3 := send(t, ctx, alice, room, "three", "three")
		if got := ids(timelineOf(bs.next(t, ctx, 0), room), ""); !slices.Equal(got, []id.EventID{m2, m3}) {
			t.Fatalf("sync with a pre-restart token: timeline %v, want [m2 m3] = %v", got, []id.EventID{m2, m3})
		}
		if tl := timelineOf(bs.next(t, ctx, 0), room); len(tl) != 0 {
			t.Fatalf("sync after catching up repeats %v", ids(tl, ""))
		}
	})
}

// TestSyncTypingAfterRestart: the typing stream lives in memory and its
// positions restart from zero; a token from before the restart must not
// hide typing that starts after it.
func TestSyncTypingAfterRestart(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		alice := srv.register(t, ctx, "alice")
		bob := srv.register(t, ctx, "bob")
		room := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		join(t, ctx, bob, room.String())
		if _, err := alice.UserTyping(ctx, room, true, 30*time.Second); err != nil {
			t.Fatalf("typing: %v", err)
		}
		bs, _ := newSyncer(t, ctx, bob, "") // its token's typing position is 1

		srv.restart(t)

		if _, err := alice.UserTyping(ctx, room, true, 30*time.Second); err != nil {
			t.Fatalf("typing after restart: %v", err)
		}
		if u, ok := typingUsers(bs.next(t, ctx, 0), room); !ok || !slices.Equal(u, users(alice.UserID)) {
			t.Fatalf("sync with a pre-restart token: typing %v (present %v), want [alice]", u, ok)
		}
	})
}

// TestSyncLimitedBoundary: exactly the limit of new events is not limited;
// one more is. A non-limited incremental timeline's prev_batch still leads
// to the events before it, gaplessly.
func TestSyncLimitedBoundary(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		alice := srv.register(t, ctx, "alice")
		room := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "private_chat"})
		s, _ := newSyncer(t, ctx, alice, `{"room":{"timeline":{"limit":5}}}`)
		var sent []id.EventID
		for n, wantLimited := range map[int]bool{5: false, 6: true} {
			var batch []id.EventID
			for i := range n {
				batch = append(batch, send(t, ctx, alice, room, fmt.Sprintf("%d-%d", n, i), fmt.Sprintf("b%d-%d", n, i)))
			}
			jr := joinedRoom(t, s.next(t, ctx, 0), room)
			if jr.Timeline.Limited != wantLimited {
				t.Fatalf("%d new events with limit 5: limited = %v, want %v", n, jr.Timeline.Limited, wantLimited)
			}
			if got := ids(jr.Timeline.Events, ""); !slices.Equal(got, batch[n-5:]) {
				t.Fatalf("%d new events: timeline %v, want %v", n, got, batch[n-5:])
			}
			// Whatever came before the timeline is at prev_batch.
			before, _ := messagesFrom(t, ctx, alice, room, jr.Timeline.PrevBatch, 3, nil)
			wantPrev := reversed(append(slices.Clone(sent), batch[:n-5]...))
			if len(before) < len(wantPrev) {
				t.Fatalf("/messages from prev_batch has %d events, want at least %d", len(before), len(wantPrev))
			}
			if got := ids(before[:len(wantPrev)], ""); !slices.Equal(got, wantPrev) {
				t.Fatalf("/messages from prev_batch = %v, want %v first", got, wantPrev)
			}
			sent = append(sent, batch...)
		}
	})
}

// TestSyncTimelineDetails: a state change inside the timeline is not
// repeated in state; a left room's timeline stops at the leave; a kicked
// or banned user gets nothing more from the room; full_state=true resends
// full state; include_leave brings left rooms into an initial sync.
func TestSyncTimelineDetails(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		alice := srv.register(t, ctx, "alice")
		bob := srv.register(t, ctx, "bob")
		room := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		join(t, ctx, bob, room.String())
		bs, _ := newSyncer(t, ctx, bob, "")

		// State inside the timeline stays out of state.
		topic, err := alice.SendStateEvent(ctx, room, event.StateTopic, "", map[string]any{"topic": "inline"})
		if err != nil {
			t.Fatalf("topic: %v", err)
		}
		send(t, ctx, alice, room, "after topic", "after-topic")
		jr := joinedRoom(t, bs.next(t, ctx, 0), room)
		if jr.Timeline.Limited || findEvent(jr.Timeline.Events, topic.EventID) == nil {
			t.Fatalf("topic change not in an unlimited timeline: %v", ids(jr.Timeline.Events, ""))
		}
		if len(jr.State.Events) != 0 {
			t.Fatalf("state repeats timeline state: %v", keysOf(jr.State.Events))
		}

		// full_state: the whole state again, even with nothing new.
		full := doSync(t, ctx, bob, syncParams{since: bs.since, fullState: true})
		fj := joinedRoom(t, full, room)
		wantFullState(t, ctx, bob, room, fj.State.Events, fj.Timeline.Events)

		// Leave, then alice talks on: bob's leave timeline ends at his leave.
		if _, err := bob.LeaveRoom(ctx, room); err != nil {
			t.Fatalf("leave: %v", err)
		}
		after := send(t, ctx, alice, room, "after bob left", "after-leave")
		resp := bs.next(t, ctx, 0)
		lr := resp.Rooms.Leave[room]
		if lr == nil {
			t.Fatalf("left room not in leave")
		}
		tl := lr.Timeline.Events
		if len(tl) == 0 || tl[len(tl)-1].Type != event.StateMember || *tl[len(tl)-1].StateKey != bob.UserID.String() {
			t.Fatalf("leave timeline %v does not end with bob's leave", ids(tl, ""))
		}
		if findEvent(tl, after) != nil {
			t.Fatalf("leave timeline shows a message sent after bob left")
		}
		send(t, ctx, alice, room, "later still", "later")
		if resp = bs.next(t, ctx, 0); resp.Rooms.Leave[room] != nil || resp.Rooms.Join[room] != nil {
			t.Fatalf("after leaving, bob's sync still carries the room")
		}

		// include_leave: the left room in an initial sync, not without.
		if _, initial := newSyncer(t, ctx, bob, ""); initial.Rooms.Leave[room] != nil {
			t.Fatalf("initial sync without include_leave shows the left room")
		}
		_, initial := newSyncer(t, ctx, bob, `{"room":{"include_leave":true}}`)
		ilr := initial.Rooms.Leave[room]
		if ilr == nil {
			t.Fatalf("initial sync with include_leave lacks the left room")
		}
		if findEvent(ilr.Timeline.Events, after) != nil {
			t.Fatalf("include_leave timeline shows a message sent after bob left")
		}

		// Ban: the banned user sees the ban in leave, then nothing more.
		join(t, ctx, bob, room.String())
		bs.next(t, ctx, 0)
		if _, err := alice.BanUser(ctx, room, &mautrix.ReqBanUser{UserID: bob.UserID, Reason: "test"}); err != nil {
			t.Fatalf("ban: %v", err)
		}
		lr = bs.next(t, ctx, 0).Rooms.Leave[room]
		if lr == nil {
			t.Fatalf("banned room not in leave")
		}
		if ev := memberEventIn(lr.Timeline.Events, bob.UserID); ev == nil || ev.Content.Raw["membership"] != "ban" {
			t.Fatalf("leave timeline %v lacks the ban", ids(lr.Timeline.Events, ""))
		}
		send(t, ctx, alice, room, "after the ban", "after-ban")
		if resp = bs.next(t, ctx, 0); resp.Rooms.Leave[room] != nil || resp.Rooms.Join[room] != nil {
			t.Fatalf("after the ban, bob's sync still carries the room")
		}
	})
}

// TestSyncHistoryVisibility: a newly joined room's timeline shows only what
// the room's history visibility lets the joiner see, while its state is
// complete.
func TestSyncHistoryVisibility(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		alice := srv.register(t, ctx, "alice")
		bob := srv.register(t, ctx, "bob")
		for _, c := range []struct {
			visibility string
			// which of (before the invite, after the invite) bob sees
			wantBefore, wantAfter bool
		}{
			{"joined", false, false},
			{"invited", false, true},
			{"shared", true, true},
		} {
			room := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "private_chat", InitialState: []*event.Event{{
				Type: event.StateHistoryVisibility, StateKey: new(""),
				Content: event.Content{Raw: map[string]any{"history_visibility": c.visibility}},
			}}})
			bs, _ := newSyncer(t, ctx, bob, `{"room":{"timeline":{"limit":50}}}`)
			before := send(t, ctx, alice, room, "before invite", "before")
			invite(t, ctx, alice, room, bob.UserID)
			after := send(t, ctx, alice, room, "after invite", "after")
			join(t, ctx, bob, room.String())
			joined := send(t, ctx, alice, room, "after join", "joined")
			jr := joinedRoom(t, bs.until(t, ctx, "the room joined", func(r *mautrix.RespSync) bool { return r.Rooms.Join[room] != nil }), room)
			tl := jr.Timeline.Events
			if got := findEvent(tl, before) != nil; got != c.wantBefore {
				t.Errorf("%s: message before the invite in timeline = %v, want %v", c.visibility, got, c.wantBefore)
			}
			if got := findEvent(tl, after) != nil; got != c.wantAfter {
				t.Errorf("%s: message after the invite in timeline = %v, want %v", c.visibility, got, c.wantAfter)
			}
			if findEvent(tl, joined) == nil {
				t.Errorf("%s: message after the join missing from timeline", c.visibility)
			}
			wantFullState(t, ctx, bob, room, jr.State.Events, tl)
		}
	})
}

// emptySync reports whether an incremental response carries nothing.
func emptySync(r *mautrix.RespSync) bool {
	return r.Rooms.IsZero() && len(r.Presence.Events) == 0 && len(r.AccountData.Events) == 0 &&
		len(r.ToDevice.Events) == 0 && r.DeviceLists.IsZero()
}
