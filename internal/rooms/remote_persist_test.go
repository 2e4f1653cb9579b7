package rooms_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"ganglion/internal/eventauth"
	"ganglion/internal/events"
	"ganglion/internal/rooms"
	"ganglion/internal/stateres"
	"ganglion/internal/storage"
	"ganglion/internal/storage/storagetest"
)

const remoteServer = "remote.test"

// remote builds events as another server would.
type remote struct {
	t   *testing.T
	key events.SigningKey
	rv  *events.RoomVersion
}

func newRemote(t *testing.T, version string) *remote {
	t.Helper()
	key, err := events.GenerateSigningKey()
	if err != nil {
		t.Fatal(err)
	}
	rv, ok := events.LookupRoomVersion(version)
	if !ok {
		t.Fatalf("no room version %s", version)
	}
	return &remote{t: t, key: key, rv: rv}
}

func (r *remote) build(roomID, sender, typ string, stateKey *string, content any, prev []*events.Event, auth ...*events.Event) *events.Event {
	r.t.Helper()
	var prevIDs, authIDs []string
	depth := int64(0)
	for _, p := range prev {
		prevIDs = append(prevIDs, p.EventID())
		depth = max(depth, p.Depth())
	}
	for _, a := range auth {
		authIDs = append(authIDs, a.EventID())
	}
	if prevIDs == nil {
		prevIDs = []string{}
	}
	if authIDs == nil {
		authIDs = []string{}
	}
	ev, err := events.Build(events.ProtoEvent{RoomID: roomID, Sender: sender, Type: typ, StateKey: stateKey, Content: raw(content),
		PrevEvents: prevIDs, AuthEvents: authIDs, Depth: depth + 1, OriginServerTS: 1700000000000 + depth}, r.rv, r.key, remoteServer)
	if err != nil {
		r.t.Fatal(err)
	}
	return ev
}

func pduOf(evs ...*events.Event) []rooms.RemotePDU {
	var out []rooms.RemotePDU
	for _, ev := range evs {
		out = append(out, rooms.RemotePDU{Event: ev.JSON()})
	}
	return out
}

// localRoom creates a public room of alice's and returns its events by
// type (create, member, power levels, join rules).
func localRoom(t *testing.T, ctx context.Context, p *rooms.Persister, store *rooms.Store, roomID string) map[string]*events.Event {
	t.Helper()
	alice := "@alice:" + server
	drafts := createDrafts(alice, "10")
	// Power 50 for anyone is needed to send state; remote users get it
	// where a test gives it.
	res, err := p.SendEvents(ctx, roomID, drafts)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*events.Event{}
	for i, r := range res {
		se, err := store.Event(ctx, r.EventID)
		if err != nil || se == nil {
			t.Fatalf("load %s: %v", r.EventID, err)
		}
		out[drafts[i].Type] = se.Event
	}
	return out
}

func currentStateID(t *testing.T, ctx context.Context, db *storage.DB, roomID, typ, stateKey string) string {
	t.Helper()
	var id string
	err := db.Reader().QueryRowContext(ctx, `SELECT event_id FROM current_state WHERE room_id = $1 AND type = $2 AND state_key = $3`,
		roomID, typ, stateKey).Scan(&id)
	if err == sql.ErrNoRows {
		return ""
	}
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func extremities(t *testing.T, ctx context.Context, db *storage.DB, roomID string) []string {
	t.Helper()
	rows, err := db.Reader().QueryContext(ctx, `SELECT event_id FROM forward_extremities WHERE room_id = $1`, roomID)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		out = append(out, id)
	}
	slices.Sort(out)
	return out
}

func persistRemote(t *testing.T, ctx context.Context, p *rooms.Persister, roomID string, b rooms.RemoteBatch) []rooms.RemoteResult {
	t.Helper()
	res, err := p.PersistRemote(ctx, roomID, b)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func wantOutcome(t *testing.T, res rooms.RemoteResult, outcome string) {
	t.Helper()
	if res.Outcome != outcome {
		t.Fatalf("event %s: outcome %q (%s), want %q", res.EventID, res.Outcome, res.Error, outcome)
	}
}

func TestPersistRemoteJoinMessageAndLocalReply(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := ctxT(t)
		p, _ := newPersister(t, db)
		store := rooms.NewStore(db)
		roomID := "!fed1:" + server
		st := localRoom(t, ctx, p, store, roomID)
		rem := newRemote(t, "10")
		bob := "@bob:" + remoteServer
		join := rem.build(roomID, bob, "m.room.member", ptr(bob), map[string]any{"membership": "join"},
			[]*events.Event{st["m.room.join_rules"]}, st["m.room.create"], st["m.room.power_levels"], st["m.room.join_rules"])
		msg := rem.build(roomID, bob, "m.room.message", nil, map[string]any{"msgtype": "m.text", "body": "hi"},
			[]*events.Event{join}, st["m.room.create"], st["m.room.power_levels"], join)
		res := persistRemote(t, ctx, p, roomID, rooms.RemoteBatch{PDUs: pduOf(join, msg)})
		wantOutcome(t, res[0], rooms.RemotePersisted)
		wantOutcome(t, res[1], rooms.RemotePersisted)
		if res[1].StreamPos <= res[0].StreamPos {
			t.Fatalf("positions %d then %d", res[0].StreamPos, res[1].StreamPos)
		}
		if got := currentStateID(t, ctx, db, roomID, "m.room.member", bob); got != join.EventID() {
			t.Fatalf("bob's membership is %q, want the join", got)
		}
		// Sending it again changes nothing.
		res = persistRemote(t, ctx, p, roomID, rooms.RemoteBatch{PDUs: pduOf(msg)})
		wantOutcome(t, res[0], rooms.RemoteDuplicate)

		// A local event now builds on the remote one.
		alice := "@alice:" + server
		out, err := p.SendEvents(ctx, roomID, []rooms.Draft{{Type: "m.room.message", Sender: alice, Content: raw(map[string]any{"body": "hello bob", "msgtype": "m.text"})}})
		if err != nil {
			t.Fatal(err)
		}
		reply, err := store.Event(ctx, out[0].EventID)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(reply.Event.PrevEventIDs(), []string{msg.EventID()}) {
			t.Fatalf("reply's prev_events %v, want [%s]", reply.Event.PrevEventIDs(), msg.EventID())
		}
		// The state before bob's message (what /state_ids answers) holds his join.
		before, err := store.StateBeforeEvent(ctx, msg.EventID())
		if err != nil {
			t.Fatal(err)
		}
		if !hasEvent(before, join.EventID()) || len(before) != 5 {
			t.Fatalf("state before the message: %d events, join included %v", len(before), hasEvent(before, join.EventID()))
		}
	})
}

func hasEvent(evs []*rooms.StoredEvent, id string) bool {
	for _, se := range evs {
		if se.Event.EventID() == id {
			return true
		}
	}
	return false
}

func TestPersistRemoteRejectsAndSoftFails(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := ctxT(t)
		p, _ := newPersister(t, db)
		store := rooms.NewStore(db)
		roomID := "!fed2:" + server
		st := localRoom(t, ctx, p, store, roomID)
		rem := newRemote(t, "10")
		bob, eve := "@bob:"+remoteServer, "@eve:"+remoteServer

		// Eve never joined: her message fails against its auth events.
		spam := rem.build(roomID, eve, "m.room.message", nil, map[string]any{"body": "spam"},
			[]*events.Event{st["m.room.join_rules"]}, st["m.room.create"], st["m.room.power_levels"])
		// An event naming a rejected auth event is rejected too.
		ghost := rem.build(roomID, "@ghost:"+remoteServer, "m.room.member", ptr("@ghost:"+remoteServer), map[string]any{"membership": "join"},
			[]*events.Event{st["m.room.join_rules"]}, st["m.room.create"], spam)
		res := persistRemote(t, ctx, p, roomID, rooms.RemoteBatch{PDUs: pduOf(spam)})
		wantOutcome(t, res[0], rooms.RemoteRejected)
		if se, _ := store.Event(ctx, spam.EventID()); se != nil {
			t.Fatal("a rejected event is in the timeline")
		}
		// Sent again, it is still rejected: never "already stored".
		wantOutcome(t, persistRemote(t, ctx, p, roomID, rooms.RemoteBatch{PDUs: pduOf(spam)})[0], rooms.RemoteRejected)
		res = persistRemote(t, ctx, p, roomID, rooms.RemoteBatch{PDUs: pduOf(ghost)})
		wantOutcome(t, res[0], rooms.RemoteRejected)
		if !strings.Contains(res[0].Error, "was rejected") {
			t.Fatalf("ghost rejected for %q, want its rejected auth event", res[0].Error)
		}

		// Bob joins, then alice bans him; his message built before he saw
		// the ban passes against the state before it but not the current
		// state.
		join := rem.build(roomID, bob, "m.room.member", ptr(bob), map[string]any{"membership": "join"},
			[]*events.Event{st["m.room.join_rules"]}, st["m.room.create"], st["m.room.power_levels"], st["m.room.join_rules"])
		wantOutcome(t, persistRemote(t, ctx, p, roomID, rooms.RemoteBatch{PDUs: pduOf(join)})[0], rooms.RemotePersisted)
		alice := "@alice:" + server
		if _, err := p.SendEvents(ctx, roomID, []rooms.Draft{{Type: "m.room.member", StateKey: ptr(bob), Sender: alice,
			Content: raw(map[string]any{"membership": "ban"})}}); err != nil {
			t.Fatal(err)
		}
		late := rem.build(roomID, bob, "m.room.message", nil, map[string]any{"body": "did I miss anything"},
			[]*events.Event{join}, st["m.room.create"], st["m.room.power_levels"], join)
		res = persistRemote(t, ctx, p, roomID, rooms.RemoteBatch{PDUs: pduOf(late)})
		wantOutcome(t, res[0], rooms.RemoteSoftFailed)
		if se, _ := store.Event(ctx, late.EventID()); se != nil {
			t.Fatal("a soft-failed event is in the timeline")
		}
		ext := extremities(t, ctx, db, roomID)
		if slices.Contains(ext, late.EventID()) || len(ext) != 1 {
			t.Fatalf("extremities %v: a soft-failed event must not become one", ext)
		}
		wantOutcome(t, persistRemote(t, ctx, p, roomID, rooms.RemoteBatch{PDUs: pduOf(late)})[0], rooms.RemoteSoftFailed)

		// Stored first as an outlier (listed in an auth chain), a banned
		// user's event is still soft-failed when it comes as a PDU.
		sly := rem.build(roomID, bob, "m.room.message", nil, map[string]any{"body": "through the side door"},
			[]*events.Event{join}, st["m.room.create"], st["m.room.power_levels"], join)
		res = persistRemote(t, ctx, p, roomID, rooms.RemoteBatch{Outliers: []json.RawMessage{sly.JSON()}, PDUs: pduOf(sly)})
		wantOutcome(t, res[0], rooms.RemoteOutlier)
		wantOutcome(t, res[1], rooms.RemoteSoftFailed)
		if evs, err := store.RoomEvents(ctx, roomID, 1<<62, -1, true, 50); err != nil || hasEvent(evs, sly.EventID()) {
			t.Fatalf("a soft-failed event entered the timeline through its outlier (err %v)", err)
		}

		// More prev events than Synapse allows: rejected without looking.
		var many []*events.Event
		for range 21 {
			many = append(many, join)
		}
		wide := rem.build(roomID, bob, "m.room.message", nil, map[string]any{"body": "wide"}, many, st["m.room.create"], join)
		wantOutcome(t, persistRemote(t, ctx, p, roomID, rooms.RemoteBatch{PDUs: pduOf(wide)})[0], rooms.RemoteRejected)
	})
}

func TestPersistRemoteMissingPrevAndStateBefore(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := ctxT(t)
		p, _ := newPersister(t, db)
		store := rooms.NewStore(db)
		roomID := "!fed3:" + server
		st := localRoom(t, ctx, p, store, roomID)
		rem := newRemote(t, "10")
		bob := "@bob:" + remoteServer
		join := rem.build(roomID, bob, "m.room.member", ptr(bob), map[string]any{"membership": "join"},
			[]*events.Event{st["m.room.join_rules"]}, st["m.room.create"], st["m.room.power_levels"], st["m.room.join_rules"])
		unseen := rem.build(roomID, bob, "m.room.message", nil, map[string]any{"body": "lost"},
			[]*events.Event{join}, st["m.room.create"], st["m.room.power_levels"], join)
		next := rem.build(roomID, bob, "m.room.message", nil, map[string]any{"body": "after the gap"},
			[]*events.Event{unseen}, st["m.room.create"], st["m.room.power_levels"], join)
		// An outlier whose auth events are unknown is not judged, so not
		// stored: once its auth chain comes, it is taken.
		res0 := persistRemote(t, ctx, p, roomID, rooms.RemoteBatch{Outliers: []json.RawMessage{unseen.JSON()}})
		if res0[0].Outcome != rooms.RemoteMissingPrev || !slices.Contains(res0[0].Missing, join.EventID()) {
			t.Fatalf("outlier with an unknown auth event: %+v", res0[0])
		}
		var rejected int
		if err := db.Reader().QueryRowContext(ctx, `SELECT count(*) FROM event_rejections WHERE event_id = $1`, unseen.EventID()).Scan(&rejected); err != nil || rejected != 0 {
			t.Fatalf("an outlier with unknown auth events was recorded as rejected (%d, %v)", rejected, err)
		}
		// The join is sent as an outlier only (auth chain), so next's prev
		// (unseen) is unknown.
		res := persistRemote(t, ctx, p, roomID, rooms.RemoteBatch{Outliers: []json.RawMessage{join.JSON()}, PDUs: pduOf(next)})
		wantOutcome(t, res[0], rooms.RemoteOutlier)
		wantOutcome(t, res[1], rooms.RemoteMissingPrev)
		if !slices.Equal(res[1].Missing, []string{unseen.EventID()}) {
			t.Fatalf("missing %v, want [%s]", res[1].Missing, unseen.EventID())
		}
		if se, _ := store.Event(ctx, next.EventID()); se != nil {
			t.Fatal("an event with a missing prev event was stored")
		}
		// The outlier is findable by id but outside every stream window.
		if se, _ := store.Event(ctx, join.EventID()); se == nil || se.StreamOrdering >= 0 {
			t.Fatalf("outlier stored as %+v", se)
		}
		// With the state before it (as /state_ids would give it) it is
		// accepted, and the join it implies becomes current state.
		stateBefore := []string{st["m.room.create"].EventID(), st["m.room.member"].EventID(), st["m.room.power_levels"].EventID(),
			st["m.room.join_rules"].EventID(), join.EventID()}
		res = persistRemote(t, ctx, p, roomID, rooms.RemoteBatch{PDUs: []rooms.RemotePDU{{Event: next.JSON(), StateBefore: stateBefore}}})
		wantOutcome(t, res[0], rooms.RemotePersisted)
		if got := currentStateID(t, ctx, db, roomID, "m.room.member", bob); got != join.EventID() {
			t.Fatalf("bob's membership %q, want his join from the state before", got)
		}
		before, err := store.StateBeforeEvent(ctx, next.EventID())
		if err != nil {
			t.Fatal(err)
		}
		if len(before) != len(stateBefore) || !hasEvent(before, join.EventID()) {
			t.Fatalf("state before: %d events", len(before))
		}
	})
}

// TestPersistRemoteJoinsNewRoom stores a room first seen through another
// server: the auth chain and state as outliers, then our user's join.
func TestPersistRemoteJoinsNewRoom(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := ctxT(t)
		p, _ := newPersister(t, db)
		store := rooms.NewStore(db)
		rem := newRemote(t, "11")
		roomID := "!theirs:" + remoteServer
		carol := "@carol:" + remoteServer
		create := rem.build(roomID, carol, "m.room.create", ptr(""), map[string]any{"room_version": "11"}, nil)
		cj := rem.build(roomID, carol, "m.room.member", ptr(carol), map[string]any{"membership": "join"}, []*events.Event{create}, create)
		pl := rem.build(roomID, carol, "m.room.power_levels", ptr(""), map[string]any{"users": map[string]int{carol: 100}},
			[]*events.Event{cj}, create, cj)
		jr := rem.build(roomID, carol, "m.room.join_rules", ptr(""), map[string]any{"join_rule": "public"}, []*events.Event{pl}, create, cj, pl)
		alice := "@alice:" + server
		join := rem.build(roomID, alice, "m.room.member", ptr(alice), map[string]any{"membership": "join"},
			[]*events.Event{jr}, create, pl, jr)
		state := []string{create.EventID(), cj.EventID(), pl.EventID(), jr.EventID()}
		res := persistRemote(t, ctx, p, roomID, rooms.RemoteBatch{RoomVersion: "11",
			// Any order: the persister orders outliers by their auth events.
			Outliers: []json.RawMessage{jr.JSON(), pl.JSON(), create.JSON(), cj.JSON()},
			PDUs:     []rooms.RemotePDU{{Event: join.JSON(), StateBefore: state}}})
		for _, r := range res[:4] {
			wantOutcome(t, r, rooms.RemoteOutlier)
		}
		wantOutcome(t, res[4], rooms.RemotePersisted)
		cur, err := store.StateAt(ctx, roomID, res[4].StreamPos, nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(cur) != 5 {
			t.Fatalf("current state has %d events, want 5", len(cur))
		}
		// The four state events the join brought changed the current
		// state at its position without being it: sync sends them with
		// the state before a timeline that starts at the join.
		if got, err := store.StateResetsIn(ctx, roomID, res[4].StreamPos, res[4].StreamPos); err != nil || len(got) != 0 {
			t.Fatalf("a store that knows of no reset answered %d events (%v)", len(got), err)
		}
		// A process starting now learns of the room's reset from the
		// database.
		if err := store.LoadStateResets(ctx); err != nil {
			t.Fatal(err)
		}
		resets, err := store.StateResetsIn(ctx, roomID, res[4].StreamPos, res[4].StreamPos)
		if err != nil {
			t.Fatal(err)
		}
		if len(resets) != 4 || hasEvent(resets, join.EventID()) {
			t.Fatalf("state resets at the join: %d events (join included: %v), want the 4 others", len(resets), hasEvent(resets, join.EventID()))
		}
		rooms_, err := store.RoomsForUser(ctx, alice, "join")
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(rooms_, roomID) {
			t.Fatalf("alice's joined rooms %v lack %s", rooms_, roomID)
		}
		// Now a message from carol extends alice's join.
		msg := rem.build(roomID, carol, "m.room.message", nil, map[string]any{"body": "welcome"}, []*events.Event{join}, create, pl, cj)
		wantOutcome(t, persistRemote(t, ctx, p, roomID, rooms.RemoteBatch{PDUs: pduOf(msg)})[0], rooms.RemotePersisted)
		// A batch naming another version for a stored room is refused.
		if _, err := p.PersistRemote(ctx, roomID, rooms.RemoteBatch{RoomVersion: "10"}); err == nil {
			t.Fatal("a different room version was accepted")
		}
	})
}

// TestPersistRemoteForkResolves sends a remote state change concurrent
// with a local one: both become extremities, the current state is their
// resolution, and the next local event merges them.
func TestPersistRemoteForkResolves(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := ctxT(t)
		p, _ := newPersister(t, db)
		store := rooms.NewStore(db)
		roomID := "!fork:" + server
		st := localRoom(t, ctx, p, store, roomID)
		rem := newRemote(t, "10")
		bob := "@bob:" + remoteServer
		alice := "@alice:" + server
		join := rem.build(roomID, bob, "m.room.member", ptr(bob), map[string]any{"membership": "join"},
			[]*events.Event{st["m.room.join_rules"]}, st["m.room.create"], st["m.room.power_levels"], st["m.room.join_rules"])
		wantOutcome(t, persistRemote(t, ctx, p, roomID, rooms.RemoteBatch{PDUs: pduOf(join)})[0], rooms.RemotePersisted)
		out, err := p.SendEvents(ctx, roomID, []rooms.Draft{{Type: "m.room.power_levels", StateKey: ptr(""), Sender: alice,
			Content: raw(map[string]any{"users": map[string]int{alice: 100, bob: 50}, "state_default": 50})}})
		if err != nil {
			t.Fatal(err)
		}
		plEv, _ := store.Event(ctx, out[0].EventID)
		pl := plEv.Event
		// Alice and bob both set the topic on top of the power levels.
		out, err = p.SendEvents(ctx, roomID, []rooms.Draft{{Type: "m.room.topic", StateKey: ptr(""), Sender: alice,
			Content: raw(map[string]any{"topic": "alice's"})}})
		if err != nil {
			t.Fatal(err)
		}
		aliceTopic := out[0].EventID
		bobTopic := rem.build(roomID, bob, "m.room.topic", ptr(""), map[string]any{"topic": "bob's"},
			[]*events.Event{pl}, st["m.room.create"], pl, join)
		res := persistRemote(t, ctx, p, roomID, rooms.RemoteBatch{PDUs: pduOf(bobTopic)})
		wantOutcome(t, res[0], rooms.RemotePersisted)
		ext := extremities(t, ctx, db, roomID)
		want := []string{aliceTopic, bobTopic.EventID()}
		slices.Sort(want)
		if !slices.Equal(ext, want) {
			t.Fatalf("extremities %v, want %v", ext, want)
		}
		// The current state is what state resolution makes of the two.
		stateOf := func(ids ...string) map[eventauth.StateKey]string {
			var all []*rooms.StoredEvent
			for _, id := range ids {
				se, err := store.Event(ctx, id)
				if err != nil || se == nil {
					t.Fatalf("load %s: %v", id, err)
				}
				all = append(all, se)
			}
			cur, err := store.StateAt(ctx, roomID, out[0].StreamPos, nil)
			if err != nil {
				t.Fatal(err)
			}
			m := map[eventauth.StateKey]string{}
			for _, se := range cur {
				m[eventauth.StateKey{Type: se.Event.Type(), StateKey: *se.Event.StateKey()}] = se.Event.EventID()
			}
			for _, se := range all {
				m[eventauth.StateKey{Type: se.Event.Type(), StateKey: *se.Event.StateKey()}] = se.Event.EventID()
			}
			return m
		}
		rv, _ := events.LookupRoomVersion("10")
		expect, err := stateres.Resolve(ctx, rv, []map[eventauth.StateKey]string{stateOf(aliceTopic), stateOf(bobTopic.EventID())}, fetcherOf(t, store))
		if err != nil {
			t.Fatal(err)
		}
		topic := eventauth.StateKey{Type: "m.room.topic"}
		if got := currentStateID(t, ctx, db, roomID, "m.room.topic", ""); got != expect[topic] {
			t.Fatalf("current topic %s, resolution says %s", got, expect[topic])
		}
		// Bob's topic event keeps its own state (his topic), though the
		// room's may differ.
		next := rem.build(roomID, bob, "m.room.message", nil, map[string]any{"body": "x"}, []*events.Event{bobTopic}, st["m.room.create"], pl, join)
		before := persistAndStateBefore(t, ctx, p, store, roomID, next)
		if !hasEvent(before, bobTopic.EventID()) {
			t.Fatal("the state before an event on bob's branch lacks bob's topic")
		}
		// A local event merges the branches.
		out, err = p.SendEvents(ctx, roomID, []rooms.Draft{{Type: "m.room.message", Sender: alice, Content: raw(map[string]any{"body": "merge"})}})
		if err != nil {
			t.Fatal(err)
		}
		merged, _ := store.Event(ctx, out[0].EventID)
		if len(merged.Event.PrevEventIDs()) != 2 {
			t.Fatalf("merge event's prev_events %v, want both extremities", merged.Event.PrevEventIDs())
		}
		if ext := extremities(t, ctx, db, roomID); !slices.Equal(ext, []string{out[0].EventID}) {
			t.Fatalf("extremities after the merge %v", ext)
		}
	})
}

func persistAndStateBefore(t *testing.T, ctx context.Context, p *rooms.Persister, store *rooms.Store, roomID string, ev *events.Event) []*rooms.StoredEvent {
	t.Helper()
	wantOutcome(t, persistRemote(t, ctx, p, roomID, rooms.RemoteBatch{PDUs: pduOf(ev)})[0], rooms.RemotePersisted)
	before, err := store.StateBeforeEvent(ctx, ev.EventID())
	if err != nil {
		t.Fatal(err)
	}
	return before
}

// storeFetcher is a stateres.EventFetcher over the store, for computing
// the expected resolution independently of the persister.
type storeFetcher struct {
	t     *testing.T
	store *rooms.Store
}

func fetcherOf(t *testing.T, store *rooms.Store) stateres.EventFetcher {
	return &storeFetcher{t, store}
}

func (f *storeFetcher) Events(ctx context.Context, ids []string) (map[string]*events.Event, error) {
	got, err := f.store.EventsByID(ctx, ids)
	if err != nil {
		return nil, err
	}
	out := map[string]*events.Event{}
	for id, se := range got {
		out[id] = se.Event
	}
	return out, nil
}

func (f *storeFetcher) AuthChain(ctx context.Context, ids []string) ([]string, error) {
	seen := map[string]bool{}
	var out []string
	for len(ids) > 0 {
		got, err := f.Events(ctx, ids)
		if err != nil {
			return nil, err
		}
		var next []string
		for _, ev := range got {
			for _, a := range ev.AuthEventIDs() {
				if !seen[a] {
					seen[a] = true
					out = append(out, a)
					next = append(next, a)
				}
			}
		}
		ids = next
	}
	return out, nil
}

// TestPersistRemoteOutOfBandInvite stores an invite to a room we have no
// state of, then the join that brings the state.
func TestPersistRemoteOutOfBandInvite(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := ctxT(t)
		p, _ := newPersister(t, db)
		store := rooms.NewStore(db)
		rem := newRemote(t, "10")
		roomID := "!invited:" + remoteServer
		carol, alice := "@carol:"+remoteServer, "@alice:"+server
		create := rem.build(roomID, carol, "m.room.create", ptr(""), map[string]any{"room_version": "10", "creator": carol}, nil)
		cj := rem.build(roomID, carol, "m.room.member", ptr(carol), map[string]any{"membership": "join"}, []*events.Event{create}, create)
		pl := rem.build(roomID, carol, "m.room.power_levels", ptr(""), map[string]any{"users": map[string]int{carol: 100}},
			[]*events.Event{cj}, create, cj)
		jr := rem.build(roomID, carol, "m.room.join_rules", ptr(""), map[string]any{"join_rule": "invite"}, []*events.Event{pl}, create, cj, pl)
		invite := rem.build(roomID, carol, "m.room.member", ptr(alice), map[string]any{"membership": "invite"},
			[]*events.Event{jr}, create, pl, jr, cj)
		// Someone else's membership cannot be stored out of band.
		stray := rem.build(roomID, carol, "m.room.member", ptr("@dave:"+remoteServer), map[string]any{"membership": "invite"},
			[]*events.Event{jr}, create, pl, jr, cj)
		res := persistRemote(t, ctx, p, roomID, rooms.RemoteBatch{RoomVersion: "10",
			PDUs: []rooms.RemotePDU{{Event: stray.JSON(), OutOfBand: true}, {Event: invite.JSON(), OutOfBand: true}}})
		wantOutcome(t, res[0], rooms.RemoteRejected)
		wantOutcome(t, res[1], rooms.RemotePersisted)
		invited, err := store.RoomsForUser(ctx, alice, "invite")
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(invited, []string{roomID}) {
			t.Fatalf("alice's invites %v", invited)
		}
		join := rem.build(roomID, alice, "m.room.member", ptr(alice), map[string]any{"membership": "join"},
			[]*events.Event{invite}, create, pl, jr, invite)
		state := []string{create.EventID(), cj.EventID(), pl.EventID(), jr.EventID(), invite.EventID()}
		res = persistRemote(t, ctx, p, roomID, rooms.RemoteBatch{
			Outliers: []json.RawMessage{create.JSON(), cj.JSON(), pl.JSON(), jr.JSON()},
			PDUs:     []rooms.RemotePDU{{Event: join.JSON(), StateBefore: state}}})
		wantOutcome(t, res[4], rooms.RemotePersisted)
		joined, err := store.RoomsForUser(ctx, alice, "join")
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(joined, []string{roomID}) {
			t.Fatalf("alice's joined rooms %v", joined)
		}
		if got := currentStateID(t, ctx, db, roomID, "m.room.join_rules", ""); got != jr.EventID() {
			t.Fatalf("join rules %q: the join did not bring the state", got)
		}
	})
}

// TestPersistRemoteJoinsNewRoomV12: in room version 12 the create event is
// in no event's auth_events (the room id is its hash), yet every auth check
// reads it. A send_join answer listing it after the events it authorises
// must still store them all: outliers wait for the batch's create event.
func TestPersistRemoteJoinsNewRoomV12(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := ctxT(t)
		p, _ := newPersister(t, db)
		rem := newRemote(t, "12")
		carol := "@carol:" + remoteServer
		create := rem.build("", carol, "m.room.create", ptr(""), map[string]any{"room_version": "12"}, nil)
		roomID := create.RoomID()
		cj := rem.build(roomID, carol, "m.room.member", ptr(carol), map[string]any{"membership": "join"}, []*events.Event{create})
		pl := rem.build(roomID, carol, "m.room.power_levels", ptr(""), map[string]any{"users": map[string]int{}}, []*events.Event{cj}, cj)
		jr := rem.build(roomID, carol, "m.room.join_rules", ptr(""), map[string]any{"join_rule": "public"}, []*events.Event{pl}, cj, pl)
		alice := "@alice:" + server
		join := rem.build(roomID, alice, "m.room.member", ptr(alice), map[string]any{"membership": "join"}, []*events.Event{jr}, pl, jr)
		res := persistRemote(t, ctx, p, roomID, rooms.RemoteBatch{RoomVersion: "12",
			Outliers: []json.RawMessage{cj.JSON(), pl.JSON(), jr.JSON(), create.JSON()},
			PDUs: []rooms.RemotePDU{{Event: join.JSON(),
				StateBefore: []string{create.EventID(), cj.EventID(), pl.EventID(), jr.EventID()}}}})
		for _, r := range res[:4] {
			wantOutcome(t, r, rooms.RemoteOutlier)
		}
		wantOutcome(t, res[4], rooms.RemotePersisted)
	})
}
