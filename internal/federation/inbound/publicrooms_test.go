package inbound_test

import (
	"net/url"
	"slices"
	"testing"

	"ganglion/internal/rooms"
	"ganglion/internal/storage"
	"ganglion/internal/storage/storagetest"
)

// publish adds a second room, "Garden" with alice alone, and publishes
// both rooms in the directory.
func (kf *keysFixture) publish(t *testing.T) string {
	t.Helper()
	garden := "!garden:" + server
	for _, d := range []rooms.Draft{
		{Type: "m.room.create", StateKey: ptr(""), Sender: alice, RoomVersion: "10", Content: raw(map[string]any{"creator": alice, "room_version": "10"})},
		{Type: "m.room.member", StateKey: ptr(alice), Sender: alice, Content: raw(map[string]any{"membership": "join"})},
		{Type: "m.room.name", StateKey: ptr(""), Sender: alice, Content: raw(map[string]any{"name": "Garden"})},
	} {
		if _, err := kf.p.SendEvents(t.Context(), garden, []rooms.Draft{d}); err != nil {
			t.Fatal(err)
		}
	}
	for _, room := range []string{kf.room, garden} {
		if _, err := kf.db.Exec(t.Context(), `UPDATE rooms SET is_public = TRUE WHERE room_id = $1`, room); err != nil {
			t.Fatal(err)
		}
	}
	return garden
}

func chunkIDs(body map[string]any) []string {
	var out []string
	for _, c := range list(body["chunk"]) {
		id, _ := obj(c)["room_id"].(string)
		out = append(out, id)
	}
	return out
}

func TestFederationInboundPublicRooms(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		kf := newKeysFixture(t, db, true)
		garden := kf.publish(t)
		path := "/_matrix/federation/v1/publicRooms"
		get := func(q string) (int, map[string]any) { return kf.do("GET", path+"?"+q, nil, remote) }

		// Most members first: the fixture room has alice and bob.
		code, body := get("")
		if code != 200 || !slices.Equal(chunkIDs(body), []string{kf.room, garden}) || body["total_room_count_estimate"] != float64(2) {
			t.Fatalf("publicRooms: %d %v", code, body)
		}
		code, body = get("limit=1")
		if code != 200 || !slices.Equal(chunkIDs(body), []string{kf.room}) || body["next_batch"] == nil {
			t.Fatalf("publicRooms limit 1: %d %v", code, body)
		}
		_, body = get("limit=1&since=" + url.QueryEscape(body["next_batch"].(string)))
		if !slices.Equal(chunkIDs(body), []string{garden}) || body["prev_batch"] == nil {
			t.Errorf("second page: %v", body)
		}
		_, body = get("include_all_networks=true")
		if len(chunkIDs(body)) != 2 {
			t.Errorf("include_all_networks: %v", body)
		}
		// No third-party network has rooms here.
		if code, body = get("third_party_instance_id=irc"); code != 200 || len(chunkIDs(body)) != 0 {
			t.Errorf("third_party_instance_id: %d %v", code, body)
		}

		code, body = kf.do("POST", path, map[string]any{"filter": map[string]any{"generic_search_term": "GARD"}}, remote)
		if code != 200 || !slices.Equal(chunkIDs(body), []string{garden}) {
			t.Errorf("POST with a search term: %d %v", code, body)
		}
		code, body = kf.do("POST", path, map[string]any{"limit": 1, "include_all_networks": true}, remote)
		if code != 200 || !slices.Equal(chunkIDs(body), []string{kf.room}) {
			t.Errorf("POST limit 1: %d %v", code, body)
		}
		code, body = kf.do("POST", path, map[string]any{"third_party_instance_id": "irc"}, remote)
		if code != 200 || len(chunkIDs(body)) != 0 {
			t.Errorf("POST third_party_instance_id: %d %v", code, body)
		}

		code, body = get("limit=x")
		want(t, "bad limit", code, body, 400, "M_INVALID_PARAM")
		code, body = get("limit=-1")
		want(t, "negative limit", code, body, 400, "M_INVALID_PARAM")
		code, body = get("since=nonsense")
		want(t, "bad since", code, body, 400, "M_INVALID_PARAM")
		code, body = get("include_all_networks=maybe")
		want(t, "bad include_all_networks", code, body, 400, "M_INVALID_PARAM")
		code, body = kf.do("POST", path, map[string]any{"filter": "garden"}, remote)
		want(t, "filter not an object", code, body, 400, "M_BAD_JSON")
		code, body = kf.do("POST", path, map[string]any{"limit": "ten"}, remote)
		want(t, "limit not a number", code, body, 400, "M_BAD_JSON")
		code, body = kf.doRaw(path, []byte("[]"))
		want(t, "body not an object", code, body, 400, "M_NOT_JSON")
		code, body = kf.do("GET", path, nil, "")
		want(t, "unsigned", code, body, 401, "M_UNAUTHORIZED")
	})
}

// allow_public_rooms_over_federation is off by default, as in Synapse:
// every request is refused, published rooms or not.
func TestFederationInboundPublicRoomsDisabled(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		kf := newKeysFixture(t, db, false)
		kf.publish(t)
		path := "/_matrix/federation/v1/publicRooms"
		code, body := kf.do("GET", path, nil, remote)
		want(t, "GET with allow_public_rooms_over_federation: false", code, body, 403, "M_FORBIDDEN")
		code, body = kf.do("POST", path, map[string]any{}, remote)
		want(t, "POST with allow_public_rooms_over_federation: false", code, body, 403, "M_FORBIDDEN")
		code, body = kf.do("GET", path, nil, "")
		want(t, "unsigned", code, body, 401, "M_UNAUTHORIZED")
	})
}
