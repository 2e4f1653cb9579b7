package media_test

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"ganglion/internal/storage"
	"ganglion/internal/storage/storagetest"
)

func TestAdminMedia(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		e := newEnv(t, db, nil)
		ctx := t.Context()
		a1 := e.upload(e.alice, "text/plain", "", []byte("alice one"))
		a2 := e.upload(e.alice, "text/plain", "", []byte("alice two"))
		a3 := e.upload(e.alice, "text/plain", "", []byte("alice three"))
		b1 := e.upload(e.bob, "image/png", "", pngBytes(t, 40, 40))
		b2 := e.upload(e.bob, "text/plain", "", []byte("bob two"))
		get := func(id, token string) int {
			resp, _ := e.do("GET", authed+"/download/"+serverName+"/"+id, token, nil, nil)
			return resp.StatusCode
		}
		post := func(path string) (int, map[string]any) {
			resp, body := e.do("POST", "/_synapse/admin/v1"+path, e.admin, nil, nil)
			var out map[string]any
			_ = json.Unmarshal(body, &out)
			return resp.StatusCode, out
		}

		// Only admins.
		for _, p := range []string{"/media/quarantine/" + serverName + "/" + a1, "/user/@alice:" + serverName + "/media/quarantine",
			"/media/protect/" + a1, "/media/delete?before_ts=1"} {
			resp, body := e.do("POST", "/_synapse/admin/v1"+p, e.alice, nil, nil)
			wantError(t, "non-admin "+p, resp, body, 403, "M_FORBIDDEN")
		}
		resp, body := e.do("GET", "/_synapse/admin/v1/users/@alice:"+serverName+"/media", e.bob, nil, nil)
		wantError(t, "non-admin list", resp, body, 403, "M_FORBIDDEN")

		// Quarantine by id; unquarantine.
		if st, _ := post("/media/quarantine/" + serverName + "/" + a1); st != 200 {
			t.Fatalf("quarantine: %d", st)
		}
		if st := get(a1, e.bob); st != 404 {
			t.Fatalf("quarantined media served: %d", st)
		}
		if st, _ := post("/media/unquarantine/" + serverName + "/" + a1); st != 200 || get(a1, e.bob) != 200 {
			t.Fatalf("unquarantine: %d, download %d", st, get(a1, e.bob))
		}

		// Protected media escapes quarantine by user.
		if st, _ := post("/media/protect/" + a2); st != 200 {
			t.Fatalf("protect: %d", st)
		}
		st, out := post("/user/@alice:" + serverName + "/media/quarantine")
		if st != 200 || out["num_quarantined"] != float64(2) {
			t.Fatalf("quarantine user: %d %v", st, out)
		}
		if get(a1, e.bob) != 404 || get(a3, e.bob) != 404 || get(a2, e.bob) != 200 {
			t.Fatalf("after user quarantine: a1 %d a2 %d a3 %d", get(a1, e.bob), get(a2, e.bob), get(a3, e.bob))
		}

		// Quarantine by room: the media its events point to.
		room := "!room:" + serverName
		for i, content := range []string{
			fmt.Sprintf(`{"msgtype":"m.image","url":"mxc://%s/%s"}`, serverName, b1),
			fmt.Sprintf(`{"msgtype":"m.file","url":"mxc://other.example/zzz","info":{"thumbnail_url":"mxc://%s/%s"}}`, serverName, b2),
		} {
			js := fmt.Sprintf(`{"type":"m.room.message","room_id":%q,"content":%s}`, room, content)
			if _, err := db.Exec(ctx, `INSERT INTO events (stream_ordering, event_id, room_id, instance_name, type, sender,
				depth, origin_server_ts, json) VALUES ($1, $2, $3, 'main', 'm.room.message', '@bob:media.test', $1, 0, $4)`,
				i+1, fmt.Sprintf("$ev%d", i), room, js); err != nil {
				t.Fatal(err)
			}
		}
		st, out = post("/room/" + room + "/media/quarantine")
		if st != 200 || out["num_quarantined"] != float64(2) {
			t.Fatalf("quarantine room: %d %v", st, out)
		}
		if get(b1, e.alice) != 404 || get(b2, e.alice) != 404 {
			t.Fatal("room media still served")
		}
		// Thumbnails of quarantined media are not served either.
		resp, _ = e.do("GET", authed+"/thumbnail/"+serverName+"/"+b1+"?width=32&height=32", e.alice, nil, nil)
		if resp.StatusCode != 404 {
			t.Fatalf("thumbnail of quarantined media: %d", resp.StatusCode)
		}

		// List a user's media.
		resp, body = e.do("GET", "/_synapse/admin/v1/users/@alice:"+serverName+"/media?limit=2", e.admin, nil, nil)
		var list struct {
			Media []struct {
				MediaID            string  `json:"media_id"`
				MediaLength        int64   `json:"media_length"`
				QuarantinedBy      *string `json:"quarantined_by"`
				SafeFromQuarantine bool    `json:"safe_from_quarantine"`
			} `json:"media"`
			Total     int   `json:"total"`
			NextToken int64 `json:"next_token"`
		}
		if err := json.Unmarshal(body, &list); err != nil || resp.StatusCode != 200 {
			t.Fatalf("list: %d %s", resp.StatusCode, body)
		}
		if list.Total != 3 || len(list.Media) != 2 || list.NextToken != 2 || list.Media[0].MediaID != a1 ||
			list.Media[0].QuarantinedBy == nil || !list.Media[1].SafeFromQuarantine {
			t.Fatalf("list = %s", body)
		}

		// Delete by id: the row and the content go.
		contentFiles := countFiles(t, filepath.Join(e.dir, "content"))
		resp, body = e.do("DELETE", "/_synapse/admin/v1/media/"+serverName+"/"+a3, e.admin, nil, nil)
		if resp.StatusCode != 200 || !strings.Contains(string(body), a3) {
			t.Fatalf("delete: %d %s", resp.StatusCode, body)
		}
		if n := countFiles(t, filepath.Join(e.dir, "content")); n != contentFiles-1 {
			t.Fatalf("content files %d -> %d after delete", contentFiles, n)
		}
		resp, body = e.do("DELETE", "/_synapse/admin/v1/media/"+serverName+"/"+a3, e.admin, nil, nil)
		wantError(t, "delete again", resp, body, 404, "M_NOT_FOUND")
		resp, body = e.do("DELETE", "/_synapse/admin/v1/media/other.example/"+a3, e.admin, nil, nil)
		wantError(t, "delete remote", resp, body, 400, "M_INVALID_PARAM")

		// Delete by date: everything before now except protected media
		// and profile pictures; the content shared by two uploads stays
		// while one of them remains.
		dup := e.upload(e.bob, "text/plain", "", []byte("alice one")) // same content as a1
		if _, err := db.Exec(ctx, `UPDATE profiles SET avatar_url = $1 WHERE user_id = $2`,
			"mxc://"+serverName+"/"+b2, "@bob:"+serverName); err != nil {
			t.Fatal(err)
		}
		if _, err := db.Exec(ctx, `UPDATE media SET created_ts = 0 WHERE media_id <> $1`, dup); err != nil {
			t.Fatal(err)
		}
		resp, body = e.do("POST", "/_synapse/admin/v1/media/delete", e.admin, nil, nil)
		wantError(t, "delete without before_ts", resp, body, 400, "M_MISSING_PARAM")
		st, out = post(fmt.Sprintf("/media/delete?before_ts=%d", time.Now().Add(-time.Minute).UnixMilli()))
		if st != 200 || out["total"] != float64(2) {
			t.Fatalf("delete before: %d %v", st, out)
		}
		deleted := fmt.Sprint(out["deleted_media"])
		if !strings.Contains(deleted, a1) || !strings.Contains(deleted, b1) {
			t.Fatalf("deleted %v, want %s and %s", deleted, a1, b1)
		}
		if resp, body := e.do("GET", authed+"/download/"+serverName+"/"+dup, e.alice, nil, nil); resp.StatusCode != 200 || string(body) != "alice one" {
			t.Fatalf("media sharing deleted content: %d %q", resp.StatusCode, body)
		}
		var n int
		if err := db.Reader().QueryRowContext(ctx, `SELECT count(*) FROM media_thumbnails WHERE media_id = $1`, b1).Scan(&n); err != nil || n != 0 {
			t.Fatalf("thumbnails of deleted media: %d %v", n, err)
		}

		// Delete a user's media.
		resp, body = e.do("DELETE", "/_synapse/admin/v1/users/@alice:"+serverName+"/media", e.admin, nil, nil)
		if resp.StatusCode != 200 || !strings.Contains(string(body), a2) {
			t.Fatalf("delete user media: %d %s", resp.StatusCode, body)
		}
		if get(a2, e.bob) != 404 {
			t.Fatal("deleted user media still served")
		}
	})
}
