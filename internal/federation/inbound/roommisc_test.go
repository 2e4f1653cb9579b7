package inbound_test

import (
	"net/url"
	"slices"
	"sort"
	"testing"

	"ganglion/internal/rooms"
	"ganglion/internal/storage"
	"ganglion/internal/storage/storagetest"
)

// makeRoom creates another room of alice's with the join rule (and, for
// "restricted", the rooms whose members may join).
func (f *fixture) makeRoom(roomID, joinRule string, allow ...string) {
	f.t.Helper()
	jr := map[string]any{"join_rule": joinRule}
	if len(allow) > 0 {
		var a []map[string]string
		for _, r := range allow {
			a = append(a, map[string]string{"type": "m.room_membership", "room_id": r})
		}
		jr["allow"] = a
	}
	for _, d := range []rooms.Draft{
		{Type: "m.room.create", StateKey: ptr(""), Sender: alice, RoomVersion: "10",
			Content: raw(map[string]any{"creator": alice, "room_version": "10"})},
		{Type: "m.room.member", StateKey: ptr(alice), Sender: alice, Content: raw(map[string]any{"membership": "join"})},
		{Type: "m.room.power_levels", StateKey: ptr(""), Sender: alice, Content: raw(map[string]any{"users": map[string]int{alice: 100}})},
		{Type: "m.room.join_rules", StateKey: ptr(""), Sender: alice, Content: raw(jr)},
		{Type: "m.room.name", StateKey: ptr(""), Sender: alice, Content: raw(map[string]any{"name": "room " + roomID})},
	} {
		if _, err := f.p.SendEvents(f.t.Context(), roomID, []rooms.Draft{d}); err != nil {
			f.t.Fatalf("make %s: %v", roomID, err)
		}
	}
}

func (f *fixture) addChild(child string, suggested bool) {
	f.t.Helper()
	f.send("child "+child, rooms.Draft{Type: "m.space.child", StateKey: ptr(child), Sender: alice,
		Content: raw(map[string]any{"via": []string{server}, "suggested": suggested})})
}

func roomIDs(v any) []string {
	var out []string
	for _, r := range list(v) {
		m, _ := r.(map[string]any)
		id, _ := m["room_id"].(string)
		out = append(out, id)
	}
	sort.Strings(out)
	return out
}

func TestFederationInboundHierarchy(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		f := newFixture(t, db, true)
		pub, priv, restr, unknown := "!pub:"+server, "!priv:"+server, "!restr:"+server, "!gone:elsewhere.test"
		f.makeRoom(pub, "public")
		f.makeRoom(priv, "invite")
		f.makeRoom(restr, "restricted", f.room)
		f.addChild(pub, true)
		f.addChild(priv, false)
		f.addChild(restr, false)
		f.addChild(unknown, false)
		path := "/_matrix/federation/v1/hierarchy/" + url.PathEscape(f.room)

		code, body := f.do("GET", path, nil, remote)
		if code != 200 {
			t.Fatalf("hierarchy: %d %v", code, body)
		}
		root, _ := body["room"].(map[string]any)
		if root["room_id"] != f.room || len(list(root["children_state"])) != 4 || root["join_rule"] != "public" {
			t.Errorf("room = %v, want the space with its 4 children's state", root)
		}
		// remote.test has bob in the space, which lets it into the
		// restricted child; the invite-only one and the unknown one are
		// inaccessible.
		if got := roomIDs(body["children"]); !slices.Equal(got, []string{pub, restr}) {
			t.Errorf("children = %v, want %v", got, []string{pub, restr})
		}
		inacc := strs(body["inaccessible_children"])
		sort.Strings(inacc)
		if want := []string{unknown, priv}; !slices.Equal(inacc, want) {
			t.Errorf("inaccessible_children = %v, want %v", inacc, want)
		}
		for _, c := range list(body["children"]) {
			m := c.(map[string]any)
			if m["room_id"] == restr && !slices.Equal(strs(m["allowed_room_ids"]), []string{f.room}) {
				t.Errorf("restricted child: allowed_room_ids %v, want [%s]", m["allowed_room_ids"], f.room)
			}
			if m["name"] != "room "+m["room_id"].(string) {
				t.Errorf("child summary %v has no name", m)
			}
		}

		// A server with nobody in the space sees the public space and its
		// public child only.
		code, body = f.do("GET", path, nil, stranger)
		if code != 200 || !slices.Equal(roomIDs(body["children"]), []string{pub}) || len(list(body["inaccessible_children"])) != 3 {
			t.Errorf("stranger: %d %v", code, body)
		}
		code, body = f.do("GET", path+"?suggested_only=true", nil, remote)
		if code != 200 || !slices.Equal(roomIDs(body["children"]), []string{pub}) || len(list(body["inaccessible_children"])) != 0 {
			t.Errorf("suggested_only: %d %v", code, body)
		}

		code, body = f.do("GET", "/_matrix/federation/v1/hierarchy/"+url.PathEscape(priv), nil, remote)
		want(t, "invite-only room", code, body, 404, "M_NOT_FOUND")
		code, body = f.do("GET", "/_matrix/federation/v1/hierarchy/"+url.PathEscape("!nope:"+server), nil, remote)
		want(t, "unknown room", code, body, 404, "M_NOT_FOUND")
		code, body = f.do("GET", "/_matrix/federation/v1/hierarchy/not-a-room", nil, remote)
		want(t, "not a room id", code, body, 404, "M_NOT_FOUND")
		code, body = f.do("GET", path+"?suggested_only=perhaps", nil, remote)
		want(t, "bad suggested_only", code, body, 400, "M_INVALID_PARAM")
		code, body = f.do("GET", path, nil, "")
		want(t, "unsigned", code, body, 401, "M_UNAUTHORIZED")
		code, body = f.do("GET", path, nil, "forger")
		want(t, "forged", code, body, 401, "M_UNAUTHORIZED")

		// The ACL: the space refuses remote.test; a child whose ACL denies
		// it becomes inaccessible to it.
		f.send("acl", rooms.Draft{Type: "m.room.server_acl", StateKey: ptr(""), Sender: alice,
			Content: raw(map[string]any{"allow": []string{"*"}, "deny": []string{remote}})})
		code, body = f.do("GET", path, nil, remote)
		want(t, "denied by the ACL", code, body, 403, "M_FORBIDDEN")
		if _, err := f.p.SendEvents(t.Context(), pub, []rooms.Draft{{Type: "m.room.server_acl", StateKey: ptr(""), Sender: alice,
			Content: raw(map[string]any{"allow": []string{"*"}, "deny": []string{stranger}})}}); err != nil {
			t.Fatal(err)
		}
		code, body = f.do("GET", path, nil, stranger)
		if code != 200 || len(list(body["children"])) != 0 || !slices.Contains(strs(body["inaccessible_children"]), pub) {
			t.Errorf("child denying the stranger by ACL: %d %v", code, body)
		}
	})
}

func TestFederationInboundTimestampToEvent(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		f := newFixture(t, db, true)
		path := "/_matrix/federation/v1/timestamp_to_event/" + url.PathEscape(f.room)
		code, body := f.do("GET", path+"?ts=0&dir=f", nil, remote)
		if code != 200 || body["event_id"] != f.id["create"] {
			t.Errorf("first event after 0: %d %v, want the create event %s", code, body, f.id["create"])
		}
		code, body = f.do("GET", path+"?ts=99999999999999&dir=b", nil, remote)
		if code != 200 || body["event_id"] != f.id["last"] {
			t.Errorf("last event before the end of time: %d %v, want %s", code, body, f.id["last"])
		}
		if _, ok := body["origin_server_ts"].(float64); !ok {
			t.Errorf("no origin_server_ts in %v", body)
		}
		code, body = f.do("GET", path+"?ts=99999999999999&dir=f", nil, remote)
		want(t, "nothing after", code, body, 404, "M_NOT_FOUND")
		code, body = f.do("GET", path+"?dir=f", nil, remote)
		want(t, "missing ts", code, body, 400, "M_MISSING_PARAM")
		code, body = f.do("GET", path+"?ts=soon&dir=f", nil, remote)
		want(t, "bad ts", code, body, 400, "M_INVALID_PARAM")
		code, body = f.do("GET", path+"?ts=0", nil, remote)
		want(t, "missing dir", code, body, 400, "M_MISSING_PARAM")
		code, body = f.do("GET", path+"?ts=0&dir=up", nil, remote)
		want(t, "bad dir", code, body, 400, "M_INVALID_PARAM")
		code, body = f.do("GET", path+"?ts=0&dir=f", nil, stranger)
		want(t, "server never in the room", code, body, 403, "M_FORBIDDEN")
		code, body = f.do("GET", "/_matrix/federation/v1/timestamp_to_event/"+url.PathEscape("!nope:"+server)+"?ts=0&dir=f", nil, remote)
		want(t, "unknown room", code, body, 404, "M_NOT_FOUND")
		code, body = f.do("GET", path+"?ts=0&dir=f", nil, "")
		want(t, "unsigned", code, body, 401, "M_UNAUTHORIZED")
		f.send("acl", rooms.Draft{Type: "m.room.server_acl", StateKey: ptr(""), Sender: alice,
			Content: raw(map[string]any{"allow": []string{"*"}, "deny": []string{remote}})})
		code, body = f.do("GET", path+"?ts=0&dir=f", nil, remote)
		want(t, "denied by the ACL", code, body, 403, "M_FORBIDDEN")
	})
}
