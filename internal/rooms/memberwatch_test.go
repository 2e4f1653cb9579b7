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
