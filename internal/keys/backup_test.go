package keys_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"ganglion/internal/storage"
	"ganglion/internal/storage/storagetest"
)

func TestBackupVersions(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		f := newFixture(t, db)
		alice := f.register(t, "alice", "A")
		bob := f.register(t, "bob", "B")
		const alg = "m.megolm_backup.v1.curve25519-aes-sha2"
		cases := []struct {
			who                *device
			method, path, body string
			status             int
			code               string
			want               string // a substring of the answer
		}{
			{alice, "GET", "/room_keys/version", ``, 404, "M_NOT_FOUND", ""},
			{alice, "GET", "/room_keys/keys?version=1", ``, 404, "M_NOT_FOUND", ""},
			{alice, "PUT", "/room_keys/keys?version=1", `{"rooms":{}}`, 404, "M_NOT_FOUND", ""},
			{alice, "POST", "/room_keys/version", `{"auth_data":{}}`, 400, "M_MISSING_PARAM", ""},
			{alice, "POST", "/room_keys/version", `{"algorithm":"` + alg + `","auth_data":"x"}`, 400, "M_BAD_JSON", ""},
			{alice, "POST", "/room_keys/version", `{"algorithm":"` + alg + `","auth_data":{"public_key":"p1"}}`, 200, "", `"version":"1"`},
			{alice, "POST", "/room_keys/version", `{"algorithm":"` + alg + `","auth_data":{"public_key":"p2"}}`, 200, "", `"version":"2"`},
			{bob, "POST", "/room_keys/version", `{"algorithm":"` + alg + `","auth_data":{}}`, 200, "", `"version":"1"`},
			{alice, "GET", "/room_keys/version", ``, 200, "", `"version":"2"`},
			{alice, "GET", "/room_keys/version/1", ``, 200, "", `"public_key":"p1"`},
			{alice, "GET", "/room_keys/version/7", ``, 404, "M_NOT_FOUND", ""},
			{alice, "GET", "/room_keys/version/abc", ``, 404, "M_NOT_FOUND", ""},
			{alice, "PUT", "/room_keys/version/2", `{"algorithm":"other","auth_data":{}}`, 400, "M_INVALID_PARAM", ""},
			{alice, "PUT", "/room_keys/version/2", `{"algorithm":"` + alg + `","auth_data":{"public_key":"p3"},"version":"1"}`, 400, "M_INVALID_PARAM", ""},
			{alice, "PUT", "/room_keys/version/2", `{"algorithm":"` + alg + `","auth_data":{"public_key":"p3"},"version":"2"}`, 200, "", ""},
			{alice, "PUT", "/room_keys/version/9", `{"algorithm":"` + alg + `","auth_data":{}}`, 404, "M_NOT_FOUND", ""},
			{alice, "GET", "/room_keys/version/2", ``, 200, "", `"public_key":"p3"`},
			// Writing to a version that is not the current one.
			{alice, "PUT", "/room_keys/keys?version=1", `{"rooms":{}}`, 403, "M_WRONG_ROOM_KEYS_VERSION", `"current_version":"2"`},
			{alice, "PUT", "/room_keys/keys", `{"rooms":{}}`, 400, "M_MISSING_PARAM", ""},
			{alice, "PUT", "/room_keys/keys?version=2", `{"rooms":[]}`, 400, "M_BAD_JSON", ""},
			{alice, "PUT", "/room_keys/keys/!r/s1?version=2", `{"first_message_index":1}`, 400, "M_BAD_JSON", ""},
			{alice, "PUT", "/room_keys/keys/!r/s1?version=2", `{"first_message_index":1,"forwarded_count":0,"is_verified":false,"session_data":"x"}`, 400, "M_BAD_JSON", ""},
			{alice, "DELETE", "/room_keys/version/2", ``, 200, "", ""},
			{alice, "DELETE", "/room_keys/version/2", ``, 404, "M_NOT_FOUND", ""},
			{alice, "GET", "/room_keys/version", ``, 200, "", `"version":"1"`},
			{alice, "POST", "/room_keys/version", `{"algorithm":"` + alg + `","auth_data":{}}`, 200, "", `"version":"3"`},
		}
		for i, c := range cases {
			status, code, b := f.do(t, c.who, c.method, c.path, c.body)
			if status != c.status || code != c.code || (c.want != "" && !contains(b, c.want)) {
				t.Errorf("%d: %s %s %s: %d %s %s, want %d %s %s", i, c.method, c.path, c.body, status, code, b, c.status, c.code, c.want)
			}
		}
	})
}

func contains(b []byte, s string) bool { return strings.Contains(string(b), s) }

func TestBackupKeysReplacementRule(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		f := newFixture(t, db)
		alice := f.register(t, "alice", "A")
		if status, _, b := f.do(t, alice, "POST", "/room_keys/version", `{"algorithm":"a","auth_data":{}}`); status != 200 {
			t.Fatal(string(b))
		}
		session := func(fmi, fwd int, verified bool, tag string) string {
			return fmt.Sprintf(`{"first_message_index":%d,"forwarded_count":%d,"is_verified":%v,"session_data":{"tag":%q}}`, fmi, fwd, verified, tag)
		}
		put := func(body string) (etag string, count int) {
			t.Helper()
			status, _, b := f.do(t, alice, "PUT", "/room_keys/keys/!r/s1?version=1", body)
			var res struct {
				ETag  string `json:"etag"`
				Count int    `json:"count"`
			}
			if status != 200 || json.Unmarshal(b, &res) != nil {
				t.Fatalf("put: %d %s", status, b)
			}
			return res.ETag, res.Count
		}
		stored := func() string {
			t.Helper()
			_, _, b := f.do(t, alice, "GET", "/room_keys/keys/!r/s1?version=1", ``)
			var k struct {
				SessionData struct{ Tag string } `json:"session_data"`
			}
			_ = json.Unmarshal(b, &k)
			return k.SessionData.Tag
		}
		etag, count := put(session(5, 2, false, "first"))
		if count != 1 || stored() != "first" {
			t.Fatalf("first put: %s %d %s", etag, count, stored())
		}
		steps := []struct {
			body, want string
			changes    bool
		}{
			{session(6, 0, false, "higher index"), "first", false},
			{session(5, 3, false, "same index, more forwarded"), "first", false},
			{session(5, 2, false, "identical ranks"), "first", false},
			{session(5, 1, false, "same index, fewer forwarded"), "same index, fewer forwarded", true},
			{session(4, 9, false, "lower index"), "lower index", true},
			{session(9, 9, true, "verified"), "verified", true},
			{session(0, 0, false, "unverified never replaces verified"), "verified", false},
			{session(8, 9, true, "verified, lower index"), "verified, lower index", true},
		}
		for _, s := range steps {
			newETag, count := put(s.body)
			if got := stored(); got != s.want || count != 1 || (newETag != etag) != s.changes {
				t.Errorf("after %s: stored %q (want %q), count %d, etag %s→%s (change %v)", s.body, got, s.want, count, etag, newETag, s.changes)
			}
			etag = newETag
		}
		// Bulk forms, reads and deletes.
		if status, _, b := f.do(t, alice, "PUT", "/room_keys/keys?version=1",
			`{"rooms":{"!r":{"sessions":{"s2":`+session(0, 0, false, "s2")+`}},"!q":{"sessions":{"s3":`+session(0, 0, false, "s3")+`}}}}`); status != 200 || !contains(b, `"count":3`) {
			t.Fatalf("bulk put: %d %s", status, b)
		}
		if status, _, b := f.do(t, alice, "PUT", "/room_keys/keys/!q?version=1", `{"sessions":{"s4":`+session(0, 0, false, "s4")+`}}`); status != 200 || !contains(b, `"count":4`) {
			t.Fatalf("room put: %d %s", status, b)
		}
		var all struct {
			Rooms map[string]struct{ Sessions map[string]json.RawMessage }
		}
		_, _, b := f.do(t, alice, "GET", "/room_keys/keys?version=1", ``)
		if json.Unmarshal(b, &all) != nil || len(all.Rooms["!r"].Sessions) != 2 || len(all.Rooms["!q"].Sessions) != 2 {
			t.Fatalf("get all: %s", b)
		}
		if _, _, b := f.do(t, alice, "GET", "/room_keys/keys/!none?version=1", ``); string(b) != `{"sessions":{}}` {
			t.Fatalf("get empty room: %s", b)
		}
		if status, code, _ := f.do(t, alice, "GET", "/room_keys/keys/!r/nope?version=1", ``); status != 404 || code != "M_NOT_FOUND" {
			t.Fatalf("get missing session: %d %s", status, code)
		}
		if status, _, b := f.do(t, alice, "DELETE", "/room_keys/keys/!q?version=1", ``); status != 200 || !contains(b, `"count":2`) {
			t.Fatalf("delete room: %d %s", status, b)
		}
		if status, _, b := f.do(t, alice, "DELETE", "/room_keys/keys/!r/s1?version=1", ``); status != 200 || !contains(b, `"count":1`) {
			t.Fatalf("delete session: %d %s", status, b)
		}
		if _, _, b := f.do(t, alice, "GET", "/room_keys/version", ``); !contains(b, `"count":1`) {
			t.Fatalf("version count: %s", b)
		}
		if status, _, b := f.do(t, alice, "DELETE", "/room_keys/keys?version=1", ``); status != 200 || !contains(b, `"count":0`) {
			t.Fatalf("delete all: %d %s", status, b)
		}
	})
}
