package sender_test

import (
	"slices"
	"testing"

	"ganglion/internal/federation/sender"
	"ganglion/internal/rooms"
	"ganglion/internal/storage"
	"ganglion/internal/storage/storagetest"
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
