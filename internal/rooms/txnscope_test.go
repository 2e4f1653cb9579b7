package rooms_test

import (
	"testing"

	"ganglion/internal/rooms"
	"ganglion/internal/storage"
	"ganglion/internal/storage/storagetest"
)

// TestPersisterTxnIDsAreScopedToTheEndpoint checks that a transaction id is
// scoped to the endpoint as well as the device: the same id on /send with
// another event type, or on /redact, is a new request, while the same id
// on the same endpoint is a retry — both against stored events (a later
// request) and within one batch (two drafts of one request).
func TestPersisterTxnIDsAreScopedToTheEndpoint(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := ctxT(t)
		p, _ := newPersister(t, db)
		room := "!scope:" + server
		alice := "@alice:" + server
		if _, err := p.SendEvents(ctx, room, createDrafts(alice, "10")); err != nil {
			t.Fatal(err)
		}
		msg := func(typ, scope string) rooms.Draft {
			return rooms.Draft{Type: typ, Sender: alice, Content: raw(map[string]string{"body": typ}),
				TxnID: "1", TxnScope: scope, DeviceID: "DEV"}
		}
		first, err := p.SendEvents(ctx, room, []rooms.Draft{msg("m.room.message", "send/m.room.message")})
		if err != nil {
			t.Fatal(err)
		}
		target := first[0].EventID

		cases := []struct {
			name  string
			draft rooms.Draft
			dup   bool
		}{
			{"same endpoint", msg("m.room.message", "send/m.room.message"), true},
			{"other event type", msg("m.room.other", "send/m.room.other"), false},
			{"redact endpoint", rooms.Draft{Type: "m.room.redaction", Sender: alice, Content: raw(map[string]string{"redacts": target}),
				Redacts: target, TxnID: "1", TxnScope: "redact/" + target, DeviceID: "DEV"}, false},
		}
		seen := map[string]string{target: "first send"}
		for _, tc := range cases {
			res, err := p.SendEvents(ctx, room, []rooms.Draft{tc.draft})
			if err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
			got := res[0]
			if tc.dup {
				if got.EventID != target || !got.Deduplicated {
					t.Fatalf("%s: got %+v, want the first event %s again", tc.name, got, target)
				}
				continue
			}
			if prev, ok := seen[got.EventID]; ok || got.Deduplicated {
				t.Fatalf("%s: got %+v, the event of %q", tc.name, got, prev)
			}
			seen[got.EventID] = tc.name
		}

		// One request repeating an id on one endpoint and using it on
		// another: the repeat is the first draft's event, the other is new.
		res, err := p.SendEvents(ctx, room, []rooms.Draft{
			msg("m.room.message", "send/m.room.message.batch"),
			msg("m.room.message", "send/m.room.message.batch"),
			msg("m.room.message", "send/m.room.notice.batch"),
		})
		if err != nil {
			t.Fatal(err)
		}
		if res[0].EventID != res[1].EventID || res[0].EventID == res[2].EventID {
			t.Fatalf("batch results %+v: want drafts 0 and 1 to share an event and draft 2 its own", res)
		}
		if _, ok := seen[res[2].EventID]; ok {
			t.Fatalf("batch draft on a new endpoint returned an earlier event %s", res[2].EventID)
		}
	})
}
