package sender_test

import (
	"slices"
	"testing"
	"time"

	"ganglion/internal/federation/sender"
	"ganglion/internal/rooms"
	"ganglion/internal/storage"
	"ganglion/internal/storage/storagetest"
	"ganglion/internal/typing"
)

// A server the room's m.room.server_acl denies gets none of the room's
// events sent after the ACL (the ACL event included), though its user is
// still joined; allowed servers get them all. A second room without an ACL
// proves the denied server is otherwise served, and orders the check: its
// queue is sent in stream order, so once the flush arrived, nothing of the
// ACL'd room sent before it is still on the way.
func TestSenderRespectsServerACL(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		f := newFixture(t, db)
		room, other := "!acl:"+server, "!open:"+server
		f.createRoom(t, room)
		f.createRoom(t, other)
		r := newReceiver()
		f.run(t, r, sender.Options{})
		f.remoteJoin(t, room, "@bob:good.test")
		f.remoteJoin(t, room, "@eve:evil.test")
		f.remoteJoin(t, other, "@eve:evil.test")
		before := f.messages(t, room, 1, "before the ACL")
		// The sender decides by the room's current ACL when it reads an
		// event, so the ACL comes after evil.test got what preceded it.
		waitReceived(t, r, "evil.test", before)
		acl := f.send(t, room, rooms.Draft{Type: "m.room.server_acl", StateKey: ptr(""), Sender: alice,
			Content: raw(map[string]any{"allow": []string{"*"}, "deny": []string{"evil.test"}})})
		after := f.messages(t, room, 3, "after the ACL")
		// A membership change of the denied server's user is not sent to it either.
		kick := f.send(t, room, rooms.Draft{Type: "m.room.member", StateKey: ptr("@eve:evil.test"), Sender: alice,
			Content: raw(map[string]any{"membership": "leave"})})
		flush := f.messages(t, other, 1, "flush")

		waitReceived(t, r, "good.test", slices.Concat(before, []string{acl[0].EventID}, after, []string{kick[0].EventID}))
		waitReceived(t, r, "evil.test", slices.Concat(before, flush))
	})
}

// The room's EDUs follow the same rule: typing in a room whose ACL denies
// evil.test goes to good.test only; typing in a room without an ACL (sent
// after, so evil.test's queue has it last) still reaches evil.test.
func TestSenderRespectsServerACLForEDUs(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		f := newFixture(t, db)
		room, other := "!acltyping:"+server, "!opentyping:"+server
		f.createRoom(t, room)
		f.createRoom(t, other)
		ts, err := typing.NewService(f.reg, typing.Options{}, f.log)
		if err != nil {
			t.Fatal(err)
		}
		f.edus = sender.Sources{Typing: ts}
		r := newReceiver()
		f.run(t, r, sender.Options{})
		f.remoteJoin(t, room, "@bob:good.test")
		f.remoteJoin(t, room, "@eve:evil.test")
		f.remoteJoin(t, other, "@eve:evil.test")
		acl := f.send(t, room, rooms.Draft{Type: "m.room.server_acl", StateKey: ptr(""), Sender: alice,
			Content: raw(map[string]any{"allow": []string{"*"}, "deny": []string{"evil.test"}})})
		waitReceived(t, r, "good.test", []string{acl[0].EventID})
		ctx := ctxT(t)
		if err := ts.SetTyping(ctx, room, alice, true, time.Minute); err != nil {
			t.Fatal(err)
		}
		if err := ts.SetTyping(ctx, other, alice, true, time.Minute); err != nil {
			t.Fatal(err)
		}
		if got := waitEDUs(t, r, "good.test", "m.typing", 1); got[0]["room_id"] != room {
			t.Errorf("good.test got m.typing %v", got)
		}
		waitEDUs(t, r, "evil.test", "m.typing", 1)
		for _, e := range r.edusOf(t, "evil.test", "m.typing") {
			if e["room_id"] == room {
				t.Errorf("evil.test got typing of the room whose ACL denies it: %v", e)
			}
		}
	})
}
