package e2e_test

import (
	"strings"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// isHashRoomID: room version 12's room ids are "!" + the create event's
// hash (43 characters of unpadded URL-safe base64), with no server part.
func isHashRoomID(roomID id.RoomID) bool {
	s := string(roomID)
	return len(s) == 44 && s[0] == '!' && !strings.ContainsAny(s, ":+/=")
}

// TestRoomVersion12 creates, joins, talks in, moderates and upgrades to
// room version 12 rooms (MSC4291 room ids, MSC4289 creators, MSC4297 state
// resolution) through the client API on a monolith (both engines) and a
// fleet behind the router.
func TestRoomVersion12(t *testing.T) {
	runDeployments(t, []string{engineSQLite, enginePostgres, engineFleetRouter}, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		alice := srv.register(t, ctx, "alice")
		bob := srv.register(t, ctx, "bob")
		carol := srv.register(t, ctx, "carol")

		caps := srv.do(t, ctx, "GET", clientPath("capabilities"), alice.AccessToken, nil)
		if caps.status != 200 || !strings.Contains(string(caps.body), `"12":"stable"`) {
			t.Fatalf("capabilities do not offer room version 12: %d %s", caps.status, truncate(caps.body))
		}

		// Bad creation requests are refused before anything is created.
		wantRawError(t, srv.doJSON(t, ctx, "POST", clientPath("createRoom"), alice.AccessToken, map[string]any{
			"room_version": "12", "creation_content": map[string]any{"additional_creators": "not a list"}}), 400, "M_BAD_JSON")
		wantRawError(t, srv.doJSON(t, ctx, "POST", clientPath("createRoom"), alice.AccessToken, map[string]any{
			"room_version": "12", "creation_content": map[string]any{"additional_creators": []string{"carol"}}}), 400, "M_BAD_JSON")
		wantRawError(t, srv.doJSON(t, ctx, "POST", clientPath("createRoom"), alice.AccessToken, map[string]any{
			"room_version": "12", "power_level_content_override": map[string]any{"users": map[string]any{alice.UserID.String(): 100}}}), 400, "M_BAD_JSON")

		room := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "Twelve", Topic: "hash ids",
			RoomVersion: "12", CreationContent: map[string]any{"additional_creators": []string{carol.UserID.String()}}})
		if !isHashRoomID(room) {
			t.Fatalf("room version 12 room id %q is not a create event hash", room)
		}
		create := stateContent(t, ctx, alice, room, "m.room.create", "")
		if create["room_version"] != "12" {
			t.Fatalf("create content %v", create)
		}
		// The create event's id is the room id with '$' for '!'.
		createID := id.EventID("$" + strings.TrimPrefix(room.String(), "!"))
		ev, err := alice.GetEvent(ctx, room, createID)
		if err != nil {
			t.Fatalf("get create event %s: %v", createID, err)
		}
		if ev.RoomID != room || ev.Type != event.StateCreate {
			t.Fatalf("create event %s: room %s type %s", createID, ev.RoomID, ev.Type.Type)
		}
		pl := stateContent(t, ctx, alice, room, "m.room.power_levels", "")
		users, _ := pl["users"].(map[string]any)
		if _, listed := users[alice.UserID.String()]; listed {
			t.Fatalf("power levels list the creator: %v", pl)
		}
		if evs, _ := pl["events"].(map[string]any); evs["m.room.tombstone"] != float64(150) {
			t.Fatalf("tombstone level %v, want 150", evs["m.room.tombstone"])
		}

		bobSync, _ := newSyncer(t, ctx, bob, "")
		if got := join(t, ctx, bob, room.String()); got != room {
			t.Fatalf("joined %s, want %s", got, room)
		}
		join(t, ctx, carol, room.String())
		msg := send(t, ctx, alice, room, "hello twelve", "t1")
		bobSync.until(t, ctx, "alice's message in the v12 room", func(resp *mautrix.RespSync) bool {
			for _, ev := range timelineOf(resp, room) {
				if ev.ID == msg {
					return true
				}
			}
			return false
		})

		// Bob (level 0) may not change the power levels; carol, an
		// additional creator with no entry in them, may moderate.
		if _, err := bob.SendStateEvent(ctx, room, event.StatePowerLevels, "", map[string]any{"users": map[string]any{bob.UserID.String(): 100}}); err == nil {
			t.Fatal("bob changed the power levels")
		}
		bobMsg := send(t, ctx, bob, room, "to be redacted", "t2")
		if _, err := carol.RedactEvent(ctx, room, bobMsg); err != nil {
			t.Fatalf("additional creator may not redact: %v", err)
		}
		if _, err := carol.SendStateEvent(ctx, room, event.StateTopic, "", map[string]any{"topic": "set by carol"}); err != nil {
			t.Fatalf("additional creator may not set the topic: %v", err)
		}
		if _, err := bob.KickUser(ctx, room, &mautrix.ReqKickUser{UserID: carol.UserID}); err == nil {
			t.Fatal("bob kicked a creator")
		}

		// Upgrading a v11 room to 12 makes a hash-id room whose power
		// levels do not list the upgrader (its creator).
		old := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "private_chat", RoomVersion: "11"})
		upgraded := upgradeRoom(t, ctx, srv, alice, old, "12")
		if !isHashRoomID(upgraded) {
			t.Fatalf("upgraded room id %q is not a create event hash", upgraded)
		}
		pl = stateContent(t, ctx, alice, upgraded, "m.room.power_levels", "")
		users, _ = pl["users"].(map[string]any)
		if _, listed := users[alice.UserID.String()]; listed {
			t.Fatalf("upgraded room's power levels list the creator: %v", pl)
		}
		if _, err := alice.SendStateEvent(ctx, upgraded, event.StateTopic, "", map[string]any{"topic": "after upgrade"}); err != nil {
			t.Fatalf("creator may not set the topic of the upgraded room: %v", err)
		}
	})
}
