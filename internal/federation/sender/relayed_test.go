package sender_test

import (
	"slices"
	"testing"

	"ganglion/internal/federation/sender"
	"ganglion/internal/rooms"
	"ganglion/internal/storage"
	"ganglion/internal/storage/storagetest"
	"ganglion/internal/streams"
)

// A remote user's join that came through our send_join (marked in
// federation_relayed_events) is relayed to the other servers in the room,
// as the resident server must, but not back to the server it came from;
// other remote events are still not sent.
func TestSenderRelaysEventsAcceptedAsResidentServer(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		f := newFixture(t, db)
		room := "!relay:" + server
		f.createRoom(t, room)
		f.remoteJoin(t, room, "@carol:two.test")
		from := f.reg.Current(streams.Events)
		join := f.send(t, room, rooms.Draft{Type: "m.room.member", StateKey: ptr("@bob:one.test"), Sender: "@bob:one.test",
			Content: raw(map[string]any{"membership": "join"})})[0].EventID
		if _, err := db.Exec(ctxT(t), `INSERT INTO federation_relayed_events (event_id, origin) VALUES ($1, $2)`,
			join, "one.test"); err != nil {
			t.Fatal(err)
		}
		f.remoteJoin(t, room, "@dan:three.test") // not relayed: three.test sent it to everyone itself
		sent := f.messages(t, room, 2, "after")
		// The sender reads from before the join.
		if _, err := db.Exec(ctxT(t), `INSERT INTO federation_sender_positions (instance_name, stream_id) VALUES ('main', $1)`,
			from); err != nil {
			t.Fatal(err)
		}
		r := newReceiver()
		f.run(t, r, sender.Options{})
		waitReceived(t, r, "two.test", append([]string{join}, sent...))
		waitReceived(t, r, "one.test", sent)
		// Servers in the room as the sender reads the event (three.test
		// joined by then) get it.
		waitReceived(t, r, "three.test", append([]string{join}, sent...))
		if slices.Contains(r.received("one.test"), join) {
			t.Error("the join was sent back to the server it came from")
		}
	})
}
