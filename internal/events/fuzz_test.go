package events_test

import (
	"bytes"
	"testing"

	"ganglion/internal/events"
)

func fuzzSeeds(f *testing.F) {
	for _, s := range []string{
		basePDU, baseV1PDU, `{}`, `[]`,
		`{"type":"m.room.member","content":{"membership":"join","third_party_invite":{"signed":{"a":1}},"join_authorised_via_users_server":"@a:x"},"state_key":"@a:x","room_id":"!r:x","sender":"@a:x","depth":1,"origin_server_ts":1,"prev_events":[],"auth_events":[]}`,
		`{"type":"m.room.create","content":{"creator":"@a:x","room_version":"11"},"state_key":"","origin":"x","membership":"join","room_id":"!r:x","sender":"@a:x","depth":1,"origin_server_ts":1,"prev_events":[],"auth_events":[],"unsigned":{"age":1}}`,
		`{"type":"m.room.power_levels","content":{"users":{"@a:x":100},"invite":0,"notifications":{"room":50}},"state_key":"","room_id":"!r:x","sender":"@a:x","depth":1,"origin_server_ts":1,"prev_events":[["$a:x",{}]],"auth_events":[]}`,
		`{"type":"m.room.redaction","content":{"redacts":"$x","reason":1.5},"redacts":"$x","room_id":"!r:x","sender":"@a:x","depth":1e3,"origin_server_ts":-0,"prev_events":[],"auth_events":[]}`,
	} {
		for _, v := range []uint8{0, 3, 5, 10} {
			f.Add([]byte(s), v)
		}
	}
}

func fuzzVersion(tb testing.TB, v uint8) *events.RoomVersion {
	ids := events.SupportedRoomVersions()
	return roomVersion(tb, ids[int(v)%len(ids)])
}

func FuzzParse(f *testing.F) {
	fuzzSeeds(f)
	f.Fuzz(func(t *testing.T, raw []byte, v uint8) {
		rv := fuzzVersion(t, v)
		e, err := events.Parse(raw, rv)
		if err != nil {
			return
		}
		again, err := events.Parse(e.JSON(), rv)
		if err != nil {
			t.Fatalf("canonical form of an accepted event rejected: %v\n%s", err, e.JSON())
		}
		if again.EventID() != e.EventID() || !bytes.Equal(again.JSON(), e.JSON()) {
			t.Fatalf("reparse changed the event: %s vs %s", again.EventID(), e.EventID())
		}
		red, err := e.Redact()
		if err != nil {
			t.Fatalf("Redact of a parsed event: %v", err)
		}
		if red.EventID() != e.EventID() {
			t.Fatal("redaction changed the event id")
		}
		if rv.Format != events.FormatV1 {
			reparsed, err := events.Parse(red.JSON(), rv)
			if err != nil || reparsed.EventID() != e.EventID() {
				t.Fatalf("redacted event reparsed with %v / different id", err)
			}
		}
		_ = events.CheckContentHash(e)
		_ = e.Membership()
		_ = e.Redacts()
		_ = e.SetUnsigned([]byte(`{"age":1}`))
	})
}

func FuzzRedact(f *testing.F) {
	fuzzSeeds(f)
	f.Fuzz(func(t *testing.T, raw []byte, v uint8) {
		rv := fuzzVersion(t, v)
		once, err := events.Redact(raw, rv)
		if err != nil {
			return
		}
		twice, err := events.Redact(once, rv)
		if err != nil {
			t.Fatalf("redacted output rejected: %v\n%s", err, once)
		}
		if !bytes.Equal(once, twice) {
			t.Fatalf("redaction not idempotent:\n%s\n%s", once, twice)
		}
		h1, err1 := events.ReferenceHash(raw, rv)
		h2, err2 := events.ReferenceHash(once, rv)
		if err1 != nil || err2 != nil || !bytes.Equal(h1, h2) {
			t.Fatalf("reference hash differs after redaction (%v, %v)", err1, err2)
		}
	})
}
