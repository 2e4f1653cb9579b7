package e2e_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"ganglion/internal/testutil"
)

// deliveryLimit bounds how long a message may take from one server's
// client to the other server's /sync in these suites (retries after an
// outage included: the backoff is capped at 500 ms).
const deliveryLimit = 60 * time.Second

// TestFederationTwoHomeservers runs the two-server suites on one pair (see
// federation_pair_test.go): a fleet behind its router with two federation
// senders and two persisters (A) and a SQLite monolith (B), federating over
// TLS with a test CA. Starting the pair already checks that each fetched
// the other's signing key through the other's TLS front. The subtests
// share the pair, each with its own users and rooms; the fault subtests
// leave both servers up and reachable when they end.
func TestFederationTwoHomeservers(t *testing.T) {
	p := startFedPair(t)

	t.Run("keys", func(t *testing.T) {
		ctx := fedContext(t)
		p.wantKeys(t, ctx, p.a, p.b)
		p.wantKeys(t, ctx, p.b, p.a)
	})
	t.Run("harness", func(t *testing.T) { testFederationHarness(t, p) })
	t.Run("profile", func(t *testing.T) { testFederationProfile(t, p) })
	t.Run("chat", func(t *testing.T) { testFederationChat(t, p) })
	t.Run("sender_killed", func(t *testing.T) { testFederationSenderKilled(t, p) })
	t.Run("destination_down", func(t *testing.T) { testFederationDestinationDown(t, p) })
	// State resolution v2 (room version 10, the default) and v2.1
	// (room version 12, whose creators are not in the power levels).
	t.Run("partition", func(t *testing.T) { testFederationPartition(t, p, "10") })
	t.Run("partition_v12", func(t *testing.T) { testFederationPartition(t, p, "12") })
	// Issues #15/#16 suites on the same pair: every room version both
	// ways, history by backfill, server ACLs each way, end-to-end
	// encryption across the servers.
	t.Run("room_versions", func(t *testing.T) { testFederationRoomVersions(t, p) })
	t.Run("backfill", func(t *testing.T) { testFederationBackfill(t, p) })
	t.Run("acl_a_denies_b", func(t *testing.T) { testFederationACL(t, p, p.a, p.b) })
	t.Run("acl_b_denies_a", func(t *testing.T) { testFederationACL(t, p, p.b, p.a) })
	t.Run("e2ee", func(t *testing.T) { testFederationE2EE(t, p) })
	t.Run("joined_room_sync_b", func(t *testing.T) { testFederationJoinedRoomSync(t, p, p.a, p.b) })
	t.Run("joined_room_sync_a", func(t *testing.T) { testFederationJoinedRoomSync(t, p, p.b, p.a) })
}

// testFederationJoinedRoomSync: a user of joiner joins a room of home. The
// join is the first event of the room joiner's timeline holds, and the
// room's state came with it (as outliers, current state at the join's
// position): the user's initial sync and an incremental sync from before
// the join must both show that state (create, power levels, join rules,
// the creator's membership), in the state block or the timeline.
func testFederationJoinedRoomSync(t *testing.T, p *fedPair, home, joiner *fedServer) {
	ctx := fedContext(t)
	owner := home.register(t, ctx, p.unique("jrs-owner"))
	guest := joiner.register(t, ctx, p.unique("jrs-guest"))
	room := createRoom(t, ctx, owner, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "synced state"})
	before := doSync(t, ctx, guest, syncParams{})
	joinRemote(t, ctx, guest, room.String(), home.name)
	waitMembership(t, ctx, guest, room, guest.UserID, event.MembershipJoin)

	check := func(what string, resp *mautrix.RespSync) {
		t.Helper()
		jr, ok := resp.Rooms.Join[room]
		if !ok {
			t.Fatalf("%s: %s is not among the joined rooms", what, room)
		}
		have := map[string]bool{}
		for _, evs := range [][]*event.Event{jr.State.Events, jr.Timeline.Events} {
			for _, ev := range evs {
				if ev.StateKey != nil {
					have[ev.Type.Type+"|"+*ev.StateKey] = true
				}
			}
		}
		for _, k := range []string{"m.room.create|", "m.room.power_levels|", "m.room.join_rules|", "m.room.name|",
			"m.room.member|" + owner.UserID.String(), "m.room.member|" + guest.UserID.String()} {
			if !have[k] {
				t.Errorf("%s of %s lacks %s (has %v)", what, guest.UserID, k, have)
			}
		}
	}
	check("the incremental sync since before the join", doSync(t, ctx, guest, syncParams{since: before.NextBatch}))
	check("the initial sync", doSync(t, ctx, guest, syncParams{}))
}

// testFederationHarness checks the suite's own machinery, as a remote
// server sees it: each name answers over TLS with a certificate the test
// CA signed; a partition makes both names unreachable and healing it
// makes them answer again; B stopped is unreachable (connection attempts
// still counted at its gate), and restarted it answers under the same
// name with the same signing key and its users intact.
func testFederationHarness(t *testing.T, p *fedPair) {
	ctx := fedContext(t)
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: p.ca.Pool(), MinVersion: tls.VersionTLS12}, DisableKeepAlives: true}}
	keyOf := func(s *fedServer) (string, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+s.name+"/_matrix/key/v2/server", nil)
		if err != nil {
			return "", err
		}
		resp, err := hc.Do(req)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		var body struct {
			ServerName string         `json:"server_name"`
			VerifyKeys map[string]any `json:"verify_keys"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
			return "", fmt.Errorf("%d: %w", resp.StatusCode, err)
		}
		if body.ServerName != s.name || len(body.VerifyKeys) == 0 {
			return "", fmt.Errorf("%d: server_name %q, verify_keys %v", resp.StatusCode, body.ServerName, body.VerifyKeys)
		}
		return fmt.Sprint(body.VerifyKeys), nil
	}
	reachable := func(s *fedServer, want bool) {
		t.Helper()
		testutil.EventuallyState(t, 30*time.Second, func() (bool, string) {
			_, err := keyOf(s)
			return (err == nil) == want, fmt.Sprintf("GET https://%s/_matrix/key/v2/server: %v (want reachable: %v)", s.name, err, want)
		})
	}
	keyB, err := keyOf(p.b)
	if err != nil {
		t.Fatal(err)
	}
	reachable(p.a, true)

	p.partition()
	reachable(p.a, false)
	reachable(p.b, false)
	p.heal()
	reachable(p.a, true)
	reachable(p.b, true)

	user := p.unique("harness-b")
	p.b.register(t, ctx, user)
	p.stopB(t)
	tries := p.b.gate.attempts()
	reachable(p.b, false)
	if p.b.gate.attempts() == tries {
		t.Error("the gate counted no connection attempt while B was down")
	}
	p.startB(t)
	reachable(p.b, true)
	if k, err := keyOf(p.b); err != nil || k != keyB {
		t.Errorf("after the restart B publishes %v (%v), want the same key %v", k, err, keyB)
	}
	if _, err := p.b.login(t, ctx, user, password(user)); err != nil {
		t.Errorf("after the restart %s cannot log in on B: %v", user, err)
	}
}

// testFederationProfile: a user's profile on one server, as users of the
// other see it through GET /profile (query/profile over federation), both
// ways.
func testFederationProfile(t *testing.T, p *fedPair) {
	ctx := fedContext(t)
	alice := p.a.register(t, ctx, p.unique("prof-alice"))
	bob := p.b.register(t, ctx, p.unique("prof-bob"))
	if err := alice.SetDisplayName(ctx, "Alice on A"); err != nil {
		t.Fatal(err)
	}
	if err := bob.SetDisplayName(ctx, "Bob on B"); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		asker *mautrix.Client
		of    id.UserID
		want  string
	}{{alice, bob.UserID, "Bob on B"}, {bob, alice.UserID, "Alice on A"}} {
		// No waiting: the profile was set before, and a lookup asks the
		// other server there and then.
		resp, err := tc.asker.GetProfile(ctx, tc.of)
		if err != nil {
			t.Fatalf("%s: GET /profile/%s: %v", tc.asker.UserID, tc.of, err)
		}
		if resp.DisplayName != tc.want {
			t.Errorf("%s: profile of %s is %+v, want displayname %q", tc.asker.UserID, tc.of, resp, tc.want)
		}
	}
	// A user the other server does not have.
	_, err := alice.GetProfile(ctx, p.b.userID(p.unique("nobody")))
	wantMatrixError(t, err, 404, "M_NOT_FOUND")
}

// testFederationChat: users on both servers in one room — a remote invite
// joined by room id (with via), a join by alias (resolved over federation),
// messages both ways in lockstep (every member sees every message once, in
// the one order) and in a concurrent burst (once each, each sender's in
// order); a leave, a message while away, a rejoin; and the member's
// profile carried in the room.
func testFederationChat(t *testing.T, p *fedPair) {
	ctx := fedContext(t)
	alice := p.a.register(t, ctx, p.unique("chat-alice"))
	bob := p.b.register(t, ctx, p.unique("chat-bob"))
	carol := p.b.register(t, ctx, p.unique("chat-carol"))
	if err := bob.SetDisplayName(ctx, "Bob on B"); err != nil {
		t.Fatal(err)
	}
	alias := p.unique("fedchat")
	room := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", RoomAliasName: alias})

	// Bob: invited across, sees the invite in his sync, joins by id via A.
	bobSync, _ := newSyncer(t, ctx, bob, "")
	invite(t, ctx, alice, room, bob.UserID)
	bobSync.until(t, ctx, "the invite from "+p.a.name, func(r *mautrix.RespSync) bool {
		_, ok := r.Rooms.Invite[room]
		return ok
	})
	if got := joinRemote(t, ctx, bob, room.String(), p.a.name); got != room {
		t.Fatalf("bob joined %s, want %s", got, room)
	}
	// Carol: by alias, which B resolves by asking A.
	if got := joinRemote(t, ctx, carol, "#"+alias+":"+p.a.name); got != room {
		t.Fatalf("carol joined %s by alias, want %s", got, room)
	}
	for _, c := range []*mautrix.Client{alice, bob, carol} {
		for _, u := range []id.UserID{alice.UserID, bob.UserID, carol.UserID} {
			waitMembership(t, ctx, c, room, u, event.MembershipJoin)
		}
	}
	// Bob's profile came with his join.
	members, err := alice.Members(ctx, room)
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range members.Chunk {
		if ev.StateKey != nil && *ev.StateKey == bob.UserID.String() {
			if dn := ev.Content.AsMember().Displayname; dn != "Bob on B" {
				t.Errorf("bob's member event on A has displayname %q, want \"Bob on B\"", dn)
			}
		}
	}

	tls := map[*mautrix.Client]*roomTimeline{}
	clients := []*mautrix.Client{alice, bob, carol}
	for _, c := range clients {
		tls[c] = followRoom(t, ctx, c, room)
	}

	// Lockstep: each message reaches everyone before the next is sent, so
	// there is one order and every timeline must have it.
	lock := numbered("lockstep", 9)
	for i, body := range lock {
		sender := clients[i%len(clients)]
		send(t, ctx, sender, room, body, p.unique("lock"))
		for _, c := range clients {
			tls[c].waitArrived(t, ctx, deliveryLimit, "lockstep", lock[:i+1])
		}
	}
	for _, c := range clients {
		tls[c].waitFor(t, ctx, deliveryLimit, "lockstep", lock, true)
	}

	// Burst: alice (A) and bob (B) send at once.
	fromA, fromB := numbered("burst A", 15), numbered("burst B", 15)
	var wg sync.WaitGroup
	for _, s := range []struct {
		c      *mautrix.Client
		bodies []string
	}{{alice, fromA}, {bob, fromB}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, b := range s.bodies {
				if _, err := s.c.SendMessageEvent(ctx, room, event.EventMessage,
					map[string]any{"msgtype": "m.text", "body": b}, mautrix.ReqSendEvent{TransactionID: p.unique("burst")}); err != nil {
					t.Errorf("%s: send %q: %v", s.c.UserID, b, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	all := slices.Concat(fromA, fromB)
	for _, c := range clients {
		tls[c].waitFor(t, ctx, deliveryLimit, "burst", all, false)
		got := tls[c].bodies("burst")
		wantSubsequence(t, c.UserID.String(), got, fromA)
		wantSubsequence(t, c.UserID.String(), got, fromB)
	}

	// Bob leaves: A sees it; what alice sends meanwhile reaches carol
	// (still on B) but not bob.
	if _, err := bob.LeaveRoom(ctx, room); err != nil {
		t.Fatalf("bob leaves: %v", err)
	}
	waitMembership(t, ctx, alice, room, bob.UserID, event.MembershipLeave)
	away := numbered("while bob is away", 3)
	sendAll(t, ctx, alice, room, away)
	tls[carol].waitFor(t, ctx, deliveryLimit, "while bob", away, true)
	tls[bob].pull(t, ctx)
	if got := tls[bob].bodies("while bob"); len(got) > 0 {
		t.Errorf("bob, who left, got %q in a joined room's timeline", got)
	}

	// And rejoins by id through A; messages flow both ways again. (His
	// first sync after the rejoin may carry recent history, which he is
	// allowed to see: a new follower starts after it.)
	joinRemote(t, ctx, bob, room.String(), p.a.name)
	waitMembership(t, ctx, alice, room, bob.UserID, event.MembershipJoin)
	tls[bob] = followRoom(t, ctx, bob, room)
	back := []string{"after the rejoin 00"}
	send(t, ctx, alice, room, back[0], p.unique("back"))
	// Bob answers what he saw: until alice's message reached B, his own
	// would come first there, rightly.
	tls[bob].waitArrived(t, ctx, deliveryLimit, "after the rejoin", back)
	send(t, ctx, bob, room, "after the rejoin 01", p.unique("back"))
	back = append(back, "after the rejoin 01")
	for _, c := range clients {
		tls[c].waitFor(t, ctx, deliveryLimit, "after the rejoin", back, true)
	}

	// On A, B's transactions came through the router to one generic
	// worker: inbound /send is sticky by origin, so one server's
	// transactions are processed in order by one process.
	f := p.a.fleet
	inbound, err := f.front.requestsPerBackend(f, func(labels string) bool {
		return strings.Contains(labels, `class="federation_inbound"`)
	})
	if err != nil {
		t.Fatalf("router metrics: %v", err)
	}
	if len(inbound) != 1 {
		t.Errorf("B's transactions reached A's workers %v through the router, want all on one worker", inbound)
	}
}

// testFederationSenderKilled: alice (A) sends a stream of messages to a
// room bob (B) is in; the federation sender worker that owns B is killed
// (-9) mid-stream and restarted. Bob receives every message exactly once,
// in order.
func testFederationSenderKilled(t *testing.T, p *fedPair) {
	ctx := fedContext(t)
	alice, bob, room := p.twoPartyRoom(t, ctx, "kill")
	bt := followRoom(t, ctx, bob, room)

	bodies := numbered("stream", 30)
	owner := p.senderOf()
	f := p.a.fleet
	sendAll(t, ctx, alice, room, bodies[:5])
	// The first messages are out: the sender is mid-stream.
	bt.waitArrived(t, ctx, deliveryLimit, "stream", bodies[:1])
	done := make(chan struct{})
	go func() {
		defer close(done)
		for _, b := range bodies[5:] {
			if _, err := alice.SendMessageEvent(ctx, room, event.EventMessage,
				map[string]any{"msgtype": "m.text", "body": b}, mautrix.ReqSendEvent{TransactionID: p.unique("stream")}); err != nil {
				t.Errorf("send %q: %v", b, err)
				return
			}
		}
	}()
	f.killProc(t, owner)
	<-done
	f.restartProc(t, owner)
	bt.waitFor(t, ctx, deliveryLimit, "stream", bodies, true)
}

// testFederationDestinationDown: B is stopped while alice (A) sends; A's
// sender keeps trying (connections reach B's address and fail); B starts
// again on the same port and database and bob receives every message
// exactly once, in order, and B's own traffic to A resumes. Then A is
// cut off while bob sends, and gets everything once, in order, when it
// is reachable again.
func testFederationDestinationDown(t *testing.T, p *fedPair) {
	ctx := fedContext(t)
	alice, bob, room := p.twoPartyRoom(t, ctx, "down")
	bt := followRoom(t, ctx, bob, room)
	at := followRoom(t, ctx, alice, room)
	before := numbered("before the outage", 3)
	sendAll(t, ctx, alice, room, before)
	bt.waitFor(t, ctx, deliveryLimit, "before the outage", before, true)

	p.stopB(t)
	tries := p.b.gate.attempts()
	during := numbered("during the outage", 10)
	sendAll(t, ctx, alice, room, during)
	// Down for a while: A's sender has failed and retried several times.
	testutil.EventuallyState(t, 60*time.Second, func() (bool, string) {
		n := p.b.gate.attempts() - tries
		return n >= 8, fmt.Sprintf("%d connection attempts reached B's address while it was down, want 8", n)
	})
	p.startB(t)

	bt.waitFor(t, ctx, deliveryLimit, "", slices.Concat(before, during), true)
	send(t, ctx, bob, room, "bob is back", p.unique("back"))
	at.waitFor(t, ctx, deliveryLimit, "bob is back", []string{"bob is back"}, true)

	// The other way: A unreachable (its gate cut, the fleet running) while
	// bob sends; B's sender (the monolith's, queue on SQLite) retries
	// until A answers again.
	p.a.gate.cut()
	healed := false
	defer func() {
		if !healed {
			p.a.gate.heal()
		}
	}()
	tries = p.a.gate.attempts()
	fromB := numbered("while A is unreachable", 5)
	sendAll(t, ctx, bob, room, fromB)
	testutil.EventuallyState(t, 60*time.Second, func() (bool, string) {
		n := p.a.gate.attempts() - tries
		return n >= 8, fmt.Sprintf("%d connection attempts reached A's address while it was cut off, want 8", n)
	})
	p.a.gate.heal()
	healed = true
	at.waitFor(t, ctx, deliveryLimit, "while A is unreachable", fromB, true)
}

// testFederationPartition: a room of roomVersion with two users on each
// server, alice (A, the creator) and bob (B) both at power 100 (in room
// version 12 alice's is the creator's, above any level). The servers are cut off each other; on
// each side the local admin changes the power levels and removes a member
// of the other server (alice kicks dave of B, bob bans carol of A), and
// both sides send messages. After the partition heals, both servers
// resolve the forked state to the same current state: the same event for
// every (type, state_key) in GET /rooms/{roomId}/state on both, with both
// removals in it.
func testFederationPartition(t *testing.T, p *fedPair, roomVersion string) {
	ctx := fedContext(t)
	alice := p.a.register(t, ctx, p.unique("part-alice"))
	carol := p.a.register(t, ctx, p.unique("part-carol"))
	bob := p.b.register(t, ctx, p.unique("part-bob"))
	dave := p.b.register(t, ctx, p.unique("part-dave"))
	// Room version 12 refuses creators in the power levels' users.
	v12 := roomVersion == "12"
	users := func(extra id.UserID) map[string]any {
		u := map[string]any{bob.UserID.String(): 100}
		if !v12 {
			u[alice.UserID.String()] = 100
		}
		if extra != "" {
			u[extra.String()] = 50
		}
		return u
	}
	initial := map[id.UserID]int{bob.UserID: 100}
	if !v12 {
		initial[alice.UserID] = 100
	}
	room := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{
		Preset:             "public_chat",
		RoomVersion:        id.RoomVersion(roomVersion),
		PowerLevelOverride: &event.PowerLevelsEventContent{Users: initial},
	})
	join(t, ctx, carol, room.String())
	joinRemote(t, ctx, bob, room.String(), p.a.name)
	joinRemote(t, ctx, dave, room.String(), p.a.name)
	for _, c := range []*mautrix.Client{alice, bob} {
		for _, u := range []id.UserID{alice.UserID, bob.UserID, carol.UserID, dave.UserID} {
			waitMembership(t, ctx, c, room, u, event.MembershipJoin)
		}
	}
	at := followRoom(t, ctx, alice, room)
	bt := followRoom(t, ctx, bob, room)

	p.partition()
	healed := false
	defer func() {
		if !healed {
			p.heal()
		}
	}()
	// Each side changes only the users of the current power levels (in
	// v12 the room's creator set m.room.tombstone above 100, which a
	// user at 100 may not lower).
	var current map[string]any
	if err := alice.StateEvent(ctx, room, event.StatePowerLevels, "", &current); err != nil {
		t.Fatalf("read the power levels: %v", err)
	}
	withUsers := func(u map[string]any) map[string]any {
		out := maps.Clone(current)
		out["users"] = u
		return out
	}
	plA := withUsers(users(carol.UserID))
	plB := withUsers(users(dave.UserID))
	evPLA, err := alice.SendStateEvent(ctx, room, event.StatePowerLevels, "", plA)
	if err != nil {
		t.Fatalf("alice sets power levels in the partition: %v", err)
	}
	evPLB, err := bob.SendStateEvent(ctx, room, event.StatePowerLevels, "", plB)
	if err != nil {
		t.Fatalf("bob sets power levels in the partition: %v", err)
	}
	fromA, fromB := numbered("partitioned A", 3), numbered("partitioned B", 3)
	sendAll(t, ctx, alice, room, fromA)
	sendAll(t, ctx, bob, room, fromB)
	if _, err := alice.KickUser(ctx, room, &mautrix.ReqKickUser{UserID: dave.UserID, Reason: "partition test"}); err != nil {
		t.Fatalf("alice kicks dave in the partition: %v", err)
	}
	if _, err := bob.BanUser(ctx, room, &mautrix.ReqBanUser{UserID: carol.UserID, Reason: "partition test"}); err != nil {
		t.Fatalf("bob bans carol in the partition: %v", err)
	}
	// Each side saw only its own: the state has forked.
	stA, err := stateIDs(t, ctx, alice, room)
	if err != nil {
		t.Fatal(err)
	}
	stB, err := stateIDs(t, ctx, bob, room)
	if err != nil {
		t.Fatal(err)
	}
	if stA["m.room.power_levels|"] != evPLA.EventID || stB["m.room.power_levels|"] != evPLB.EventID {
		t.Fatalf("during the partition, power levels are %s on A and %s on B, want each side's own (%s, %s)",
			stA["m.room.power_levels|"], stB["m.room.power_levels|"], evPLA.EventID, evPLB.EventID)
	}

	p.heal()
	healed = true
	// Each side's partition messages reach the other, and a message sent
	// after the heal on each side (whose prev_events join the fork)
	// reaches the other too.
	at.waitFor(t, ctx, deliveryLimit, "partitioned B", fromB, true)
	bt.waitFor(t, ctx, deliveryLimit, "partitioned A", fromA, true)
	send(t, ctx, alice, room, "healed A", p.unique("healed"))
	send(t, ctx, bob, room, "healed B", p.unique("healed"))
	at.waitFor(t, ctx, deliveryLimit, "healed", []string{"healed A", "healed B"}, false)
	bt.waitFor(t, ctx, deliveryLimit, "healed", []string{"healed A", "healed B"}, false)

	var sa, sb map[string]id.EventID
	testutil.EventuallyState(t, deliveryLimit, func() (bool, string) {
		var errA, errB error
		sa, errA = stateIDs(t, ctx, alice, room)
		sb, errB = stateIDs(t, ctx, bob, room)
		if errA != nil || errB != nil {
			return false, fmt.Sprintf("state: A %v, B %v", errA, errB)
		}
		return maps.Equal(sa, sb), "current state differs between A and B: " + diffState(sa, sb)
	})
	if pl := sa["m.room.power_levels|"]; pl != evPLA.EventID && pl != evPLB.EventID {
		t.Errorf("resolved power levels are %s, want one of the partition's (%s, %s)", pl, evPLA.EventID, evPLB.EventID)
	}
	for _, c := range []*mautrix.Client{alice, bob} {
		wantMembershipNow(t, ctx, c, room, dave.UserID, event.MembershipLeave)
		wantMembershipNow(t, ctx, c, room, carol.UserID, event.MembershipBan)
	}
}

// wantMembershipNow checks target's membership in room on c's server.
func wantMembershipNow(t testing.TB, ctx context.Context, c *mautrix.Client, room id.RoomID, target id.UserID, want event.Membership) {
	t.Helper()
	st, err := c.State(ctx, room)
	if err != nil {
		t.Fatalf("%s: state of %s: %v", c.UserID, room, err)
	}
	ev := st[event.StateMember][target.String()]
	if ev == nil {
		t.Errorf("%s: no membership of %s in %s", c.UserID, target, room)
		return
	}
	if got := ev.Content.AsMember().Membership; got != want {
		t.Errorf("%s: %s's membership in %s is %q, want %q", c.UserID, target, room, got, want)
	}
}

// twoPartyRoom makes a room on A with alice (A) and bob (B, joined by id
// through A) and waits until both servers hold both joins.
func (p *fedPair) twoPartyRoom(t testing.TB, ctx context.Context, prefix string) (alice, bob *mautrix.Client, room id.RoomID) {
	t.Helper()
	alice = p.a.register(t, ctx, p.unique(prefix+"-alice"))
	bob = p.b.register(t, ctx, p.unique(prefix+"-bob"))
	room = createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	joinRemote(t, ctx, bob, room.String(), p.a.name)
	for _, c := range []*mautrix.Client{alice, bob} {
		waitMembership(t, ctx, c, room, alice.UserID, event.MembershipJoin)
		waitMembership(t, ctx, c, room, bob.UserID, event.MembershipJoin)
	}
	return alice, bob, room
}
