package events_test

import (
	"bytes"
	"strings"
	"testing"

	"ganglion/internal/events"
)

// TestRoomV12CreateEventImpliesRoomID: in room version 12 (MSC4291) the
// create event has no room_id; the room id is "!" + its reference hash,
// which is its event id with '!' for '$'. Other events still need one.
func TestRoomV12CreateEventImpliesRoomID(t *testing.T) {
	rv := roomVersion(t, "12")
	empty := ""
	create, err := events.Build(events.ProtoEvent{Sender: "@alice:example.org", Type: "m.room.create", StateKey: &empty,
		Content: []byte(`{"room_version":"12"}`), OriginServerTS: 1700000000000, Depth: 1}, rv, specKey(t), "example.org")
	if err != nil {
		t.Fatalf("build v12 create: %v", err)
	}
	if bytes.Contains(create.JSON(), []byte(`"room_id"`)) {
		t.Errorf("v12 create event has a room_id: %s", create.JSON())
	}
	if !create.HasImpliedRoomID() || create.RoomID() != "!"+strings.TrimPrefix(create.EventID(), "$") {
		t.Errorf("room id %q, create event id %q", create.RoomID(), create.EventID())
	}
	if id, ok := events.CreateEventIDForRoom(create.RoomID()); !ok || id != create.EventID() {
		t.Errorf("CreateEventIDForRoom(%s) = %q, %v", create.RoomID(), id, ok)
	}
	predicted, err := events.EventIDOf(events.ProtoEvent{Sender: "@alice:example.org", Type: "m.room.create", StateKey: &empty,
		Content: []byte(`{"room_version":"12"}`), OriginServerTS: 1700000000000, Depth: 1}, rv)
	if err != nil || predicted != create.EventID() {
		t.Errorf("EventIDOf = %q, %v; Build gave %q", predicted, err, create.EventID())
	}
	parsed, err := events.Parse(create.JSON(), rv)
	if err != nil || parsed.EventID() != create.EventID() || parsed.RoomID() != create.RoomID() || !parsed.HasImpliedRoomID() {
		t.Fatalf("reparse: %v, %+v", err, parsed)
	}
	if err := events.CheckContentHash(parsed); err != nil {
		t.Error(err)
	}
	if err := events.VerifyEventSignature(parsed, "example.org", specKey(t).ID, specKey(t).Public()); err != nil {
		t.Error(err)
	}

	// A create event that names a room id is refused when building and kept
	// (for the auth rules to reject) when parsing.
	if _, err := events.Build(events.ProtoEvent{RoomID: "!x:example.org", Sender: "@alice:example.org", Type: "m.room.create", StateKey: &empty,
		Content: []byte(`{}`)}, rv, specKey(t), "example.org"); err == nil {
		t.Error("built a v12 create event with a room_id")
	}
	withRoom, err := events.Parse([]byte(`{"type":"m.room.create","state_key":"","sender":"@a:x","room_id":"!r:x","content":{},"depth":1,"origin_server_ts":1,"prev_events":[],"auth_events":[],"hashes":{"sha256":"x"}}`), rv)
	if err != nil || withRoom.HasImpliedRoomID() || withRoom.RoomID() != "!r:x" {
		t.Errorf("parse v12 create with room_id: %v %+v", err, withRoom)
	}
	// Other events need their room_id in every version.
	if _, err := events.Parse([]byte(`{"type":"m.room.topic","state_key":"","sender":"@a:x","content":{},"depth":1,"origin_server_ts":1,"prev_events":[],"auth_events":[],"hashes":{"sha256":"x"}}`), rv); err == nil {
		t.Error("parsed a v12 topic without room_id")
	}
	// Before v12 a create event without room_id is malformed.
	if _, err := events.Parse([]byte(`{"type":"m.room.create","state_key":"","sender":"@a:x","content":{},"depth":1,"origin_server_ts":1,"prev_events":[],"auth_events":[],"hashes":{"sha256":"x"}}`), roomVersion(t, "11")); err == nil {
		t.Error("parsed a v11 create without room_id")
	}
	if _, ok := events.CreateEventIDForRoom("!opaque:example.org"); ok {
		t.Error("CreateEventIDForRoom accepted a server-qualified room id")
	}
}

// TestRoomV12Flags: version 12 is v11 plus MSC4291, MSC4289 and MSC4297,
// and is offered to clients.
func TestRoomV12Flags(t *testing.T) {
	rv := roomVersion(t, "12")
	if !rv.RoomIDFromCreate || !rv.PrivilegedCreators || rv.StateRes != events.StateResV21 || !rv.ImplicitRoomCreator || !rv.RedactsInContent {
		t.Errorf("room version 12 flags: %+v", rv)
	}
	if !events.IsSupportedRoomVersion("12") || events.IsSupportedRoomVersion("13") {
		t.Error("IsSupportedRoomVersion")
	}
}
