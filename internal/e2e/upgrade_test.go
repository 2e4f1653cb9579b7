package e2e_test

import (
	"context"
	"encoding/json"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// upgradeRoom upgrades roomID as c and returns the replacement room.
func upgradeRoom(t testing.TB, ctx context.Context, srv *server, c *mautrix.Client, roomID id.RoomID, version string) id.RoomID {
	t.Helper()
	r := srv.doJSON(t, ctx, "POST", clientPath("rooms", roomID.String(), "upgrade"), c.AccessToken, map[string]any{"new_version": version})
	if r.status != 200 {
		t.Fatalf("upgrade %s: %d %s", roomID, r.status, truncate(r.body))
	}
	repl, _ := r.object(t)["replacement_room"].(string)
	if repl == "" {
		t.Fatalf("upgrade %s: no replacement_room: %s", roomID, truncate(r.body))
	}
	return id.RoomID(repl)
}

func TestRoomUpgrade(t *testing.T) {
	runDeployments(t, relationDeployments, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		alice := srv.register(t, ctx, "alice")
		bob := srv.register(t, ctx, "bob")
		carol := srv.register(t, ctx, "carol")
		eve := srv.register(t, ctx, "eve")
		alias := "#upg:" + serverName
		old := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "Old", Topic: "the topic",
			RoomAliasName: "upg", Visibility: "public", RoomVersion: "9"})
		join(t, ctx, bob, old.String())
		join(t, ctx, eve, old.String())
		if _, err := alice.BanUser(ctx, old, &mautrix.ReqBanUser{UserID: eve.UserID}); err != nil {
			t.Fatalf("ban eve: %v", err)
		}
		oldPL := stateContent(t, ctx, alice, old, "m.room.power_levels", "")
		path := clientPath("rooms", old.String(), "upgrade")

		// Bad input and refusals first: nothing may change.
		wantRawError(t, srv.doJSON(t, ctx, "POST", path, alice.AccessToken, map[string]any{"new_version": "999"}), 400, "M_UNSUPPORTED_ROOM_VERSION")
		wantRawError(t, srv.doJSON(t, ctx, "POST", path, alice.AccessToken, map[string]any{}), 400, "M_MISSING_PARAM")
		wantRawError(t, srv.do(t, ctx, "POST", path, alice.AccessToken, []byte("{")), 400, "M_NOT_JSON", "M_BAD_JSON")
		wantRawError(t, srv.doJSON(t, ctx, "POST", path, bob.AccessToken, map[string]any{"new_version": "10"}), 403, "M_FORBIDDEN")
		wantRawError(t, srv.doJSON(t, ctx, "POST", path, carol.AccessToken, map[string]any{"new_version": "10"}), 403, "M_FORBIDDEN")
		wantRawError(t, srv.doJSON(t, ctx, "POST", clientPath("rooms", "!nope:"+serverName, "upgrade"), alice.AccessToken,
			map[string]any{"new_version": "10"}), 403, "M_FORBIDDEN")
		if tomb := srv.do(t, ctx, "GET", clientPath("rooms", old.String(), "state", "m.room.tombstone", ""), alice.AccessToken, nil); tomb.status != 404 {
			t.Fatalf("a refused upgrade left a tombstone: %d %s", tomb.status, truncate(tomb.body))
		}

		newRoom := upgradeRoom(t, ctx, srv, alice, old, "10")

		// The old room: tombstoned, quietened, no canonical alias.
		tomb := stateContent(t, ctx, bob, old, "m.room.tombstone", "")
		if tomb["replacement_room"] != newRoom.String() {
			t.Fatalf("tombstone %v, want replacement_room %s", tomb, newRoom)
		}
		pl := stateContent(t, ctx, bob, old, "m.room.power_levels", "")
		if pl["events_default"].(float64) < 50 || pl["invite"].(float64) < 50 {
			t.Fatalf("old room's power levels not restricted: %v", pl)
		}
		if _, err := bob.SendMessageEvent(ctx, old, event.EventMessage, map[string]any{"msgtype": "m.text", "body": "still here"}); err == nil {
			t.Fatalf("bob could still talk in the old room")
		}
		if ca := stateContent(t, ctx, alice, old, "m.room.canonical_alias", ""); ca["alias"] != nil {
			t.Fatalf("old room keeps its canonical alias: %v", ca)
		}

		// The new room: predecessor, version, copied state, moved alias.
		create := stateContent(t, ctx, alice, newRoom, "m.room.create", "")
		pred, _ := create["predecessor"].(map[string]any)
		if pred["room_id"] != old.String() || create["room_version"] != "10" {
			t.Fatalf("new room's create content %v", create)
		}
		if ev, _ := pred["event_id"].(string); ev == "" {
			t.Fatalf("predecessor without event_id: %v", pred)
		}
		if n := stateContent(t, ctx, alice, newRoom, "m.room.name", ""); n["name"] != "Old" {
			t.Fatalf("name not copied: %v", n)
		}
		if tp := stateContent(t, ctx, alice, newRoom, "m.room.topic", ""); tp["topic"] != "the topic" {
			t.Fatalf("topic not copied: %v", tp)
		}
		if jr := stateContent(t, ctx, alice, newRoom, "m.room.join_rules", ""); jr["join_rule"] != "public" {
			t.Fatalf("join rules not copied: %v", jr)
		}
		newPL := stateContent(t, ctx, alice, newRoom, "m.room.power_levels", "")
		if a, b := mustMarshal(t, newPL), mustMarshal(t, oldPL); a != b {
			t.Fatalf("new room's power levels %s, want the old room's %s", a, b)
		}
		if ca := stateContent(t, ctx, alice, newRoom, "m.room.canonical_alias", ""); ca["alias"] != alias {
			t.Fatalf("new room's canonical alias %v", ca)
		}
		res, err := carol.ResolveAlias(ctx, id.RoomAlias(alias))
		if err != nil || res.RoomID != newRoom {
			t.Fatalf("alias resolves to %v (%v), want %s", res, err, newRoom)
		}
		if vis := srv.do(t, ctx, "GET", clientPath("directory", "list", "room", newRoom.String()), "", nil); string(vis.body) == "" ||
			vis.object(t)["visibility"] != "public" {
			t.Fatalf("new room not published: %s", truncate(vis.body))
		}
		// Joinable by alias; the ban carried over.
		join(t, ctx, carol, alias)
		wantMembership(t, ctx, carol, newRoom, carol.UserID, event.MembershipJoin)
		if _, err := eve.JoinRoom(ctx, newRoom.String(), nil); err == nil {
			t.Fatalf("banned eve joined the new room")
		}
		send(t, ctx, carol, newRoom, "hello new room", "")
	})
}

// TestRoomUpgradeRaisesUpgraderTemporarily: an upgrader allowed to send
// the tombstone but below some of the room's levels (here bob, at 50,
// where history visibility needs 100) still gets the state copied, and the
// new room ends with exactly the old room's levels. Bob may not change the
// old room's power levels, so the old room is upgraded but not restricted.
func TestRoomUpgradeRaisesUpgraderTemporarily(t *testing.T) {
	runDeployments(t, monoliths, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		alice := srv.register(t, ctx, "alice")
		bob := srv.register(t, ctx, "bob")
		old := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "Low"})
		join(t, ctx, bob, old.String())
		pl := stateContent(t, ctx, alice, old, "m.room.power_levels", "")
		pl["users"].(map[string]any)[bob.UserID.String()] = 50
		pl["events"].(map[string]any)["m.room.tombstone"] = 50
		if _, err := alice.SendStateEvent(ctx, old, event.StatePowerLevels, "", pl); err != nil {
			t.Fatalf("set power levels: %v", err)
		}
		oldPL := stateContent(t, ctx, alice, old, "m.room.power_levels", "")
		newRoom := upgradeRoom(t, ctx, srv, bob, old, "10")
		if hv := stateContent(t, ctx, bob, newRoom, "m.room.history_visibility", ""); hv["history_visibility"] != "shared" {
			t.Fatalf("history visibility not copied: %v", hv)
		}
		if a, b := mustMarshal(t, stateContent(t, ctx, bob, newRoom, "m.room.power_levels", "")), mustMarshal(t, oldPL); a != b {
			t.Fatalf("new room's power levels %s, want %s", a, b)
		}
		if tomb := stateContent(t, ctx, alice, old, "m.room.tombstone", ""); tomb["replacement_room"] != newRoom.String() {
			t.Fatalf("tombstone %v", tomb)
		}
	})
}

func mustMarshal(t testing.TB, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
