package rooms_test

import (
	"testing"

	"ganglion/internal/rooms"
	"ganglion/internal/storage"
	"ganglion/internal/storage/storagetest"
)

// MembershipChangedAfter lets sync skip the device-list membership queries:
// it may answer false only when the process saw every membership change
// after the position and there was none.
func TestMembershipChangedAfter(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := ctxT(t)
		p, _ := newPersister(t, db)
		room, alice, bob := "!watch:"+server, "@alice:"+server, "@bob:"+server
		// Events before the store watches: unknown, so always "changed".
		created, err := p.SendEvents(ctx, room, createDrafts(alice, "10"))
		if err != nil {
			t.Fatal(err)
		}
		store := rooms.NewStore(db)
		if !store.MembershipChangedAfter(created[3].StreamPos) {
			t.Fatal("a store that watches nothing must assume changes")
		}
		p.NotifyStateChanges(store.StateChanged)
		if err := store.WatchMembershipFrom(ctx); err != nil {
			t.Fatal(err)
		}
		if !store.MembershipChangedAfter(created[0].StreamPos) {
			t.Fatal("before the watch started, changes are unknown")
		}
		if store.MembershipChangedAfter(created[3].StreamPos) {
			t.Fatal("nothing changed after the watch started")
		}
		msg, err := p.SendEvents(ctx, room, []rooms.Draft{{Type: "m.room.message", Sender: alice, Content: raw(map[string]any{"body": "hi"})}})
		if err != nil {
			t.Fatal(err)
		}
		if store.MembershipChangedAfter(created[3].StreamPos) {
			t.Fatal("a message is not a membership change")
		}
		join, err := p.SendEvents(ctx, room, []rooms.Draft{{Type: "m.room.member", StateKey: ptr(bob), Sender: bob,
			Content: raw(map[string]any{"membership": "join"})}})
		if err != nil {
			t.Fatal(err)
		}
		if !store.MembershipChangedAfter(msg[0].StreamPos) {
			t.Fatal("bob's join after the message is not seen")
		}
		if store.MembershipChangedAfter(join[0].StreamPos) {
			t.Fatal("nothing changed after bob's join")
		}
	})
}

// JoinedRoomsWithEvents answers from what the process saw persisted once
// it watches, and from the database before.
func TestJoinedRoomsWithEvents(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := ctxT(t)
		p, _ := newPersister(t, db)
		alice := "@alice:" + server
		r1, r2, r3 := "!one:"+server, "!two:"+server, "!three:"+server
		var base int64
		for _, r := range []string{r1, r2, r3} {
			res, err := p.SendEvents(ctx, r, createDrafts(alice, "10"))
			if err != nil {
				t.Fatal(err)
			}
			base = res[len(res)-1].StreamPos
		}
		store := rooms.NewStore(db)
		p.NotifyPersisted(store.EventPersisted)
		// Not watching yet: the database answers, over every room.
		got, err := store.JoinedRoomsWithEvents(ctx, []string{r1}, 0, base)
		if err != nil || len(got) != 3 {
			t.Fatalf("before watching: %v, %v; want all three rooms from the database", got, err)
		}
		if err := store.WatchMembershipFrom(ctx); err != nil {
			t.Fatal(err)
		}
		msg := func(room string) int64 {
			res, err := p.SendEvents(ctx, room, []rooms.Draft{{Type: "m.room.message", Sender: alice, Content: raw(map[string]any{"body": "x"})}})
			if err != nil {
				t.Fatal(err)
			}
			return res[0].StreamPos
		}
		pos2 := msg(r2)
		pos3 := msg(r3)
		got, err = store.JoinedRoomsWithEvents(ctx, []string{r1, r2, r3}, base, pos3)
		if _, has1 := got[r1]; err != nil || len(got) != 2 || got[r2] != pos2 || got[r3] != pos3 || has1 {
			t.Fatalf("after two messages: %v, %v; want r2 and r3", got, err)
		}
		if got, _ = store.JoinedRoomsWithEvents(ctx, []string{r1, r2}, pos2, pos3); len(got) != 0 {
			t.Fatalf("after r2's message, r1 and r2: %v; want none", got)
		}
		if got, _ = store.JoinedRoomsWithEvents(ctx, []string{r1}, base, pos3); len(got) != 0 {
			t.Fatalf("only rooms asked for: %v", got)
		}
	})
}
