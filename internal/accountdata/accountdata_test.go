package accountdata_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"ganglion/internal/accountdata"
	"ganglion/internal/accounts"
	"ganglion/internal/mxhttp"
	"ganglion/internal/storage"
	"ganglion/internal/storage/storagetest"
	"ganglion/internal/streams"
)

const server = "ad.test"

var discard = slog.New(slog.NewTextHandler(io.Discard, nil))

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

type fixture struct {
	db  *storage.DB
	reg *streams.Registry
	w   *accountdata.LocalWriter
	s   *accountdata.Service
}

func newFixture(t *testing.T, db *storage.DB) *fixture {
	t.Helper()
	reg, err := streams.NewRegistry("main", streams.AllDefs(), nil, streams.NewNotifier())
	if err != nil {
		t.Fatal(err)
	}
	w, err := accountdata.NewLocalWriter(ctxT(t), db, reg, discard)
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{db: db, reg: reg, w: w, s: accountdata.NewService(db, reg, w, discard)}
}

func errcode(err error) (int, string) {
	var me *mxhttp.Error
	if errors.As(err, &me) {
		return me.Status, me.Code
	}
	return 0, ""
}

func raw(s string) json.RawMessage { return json.RawMessage(s) }

// types lists event types and compact contents, for comparisons.
func types(evs []accountdata.Event) map[string]string {
	out := map[string]string{}
	for _, e := range evs {
		var buf bytes.Buffer
		_ = json.Compact(&buf, e.Content)
		out[e.Type] = buf.String()
	}
	return out
}

func TestPutGetAndSinceWindows(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := ctxT(t)
		f := newFixture(t, db)
		alice, bob := "@alice:"+server, "@bob:"+server
		room := "!r:" + server

		l := f.reg.Notifier().Listen(streams.UserKey(alice))
		defer l.Close()
		p1, err := f.w.Put(ctx, alice, "", "org.example.a", raw(`{"x": 1}`))
		if err != nil {
			t.Fatal(err)
		}
		select {
		case <-l.C:
		default:
			t.Fatal("put did not wake the user's key")
		}
		p2, err := f.w.Put(ctx, alice, room, "org.example.r", raw(`{"y":2}`))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.w.Put(ctx, bob, "", "org.example.a", raw(`{"bob":true}`)); err != nil {
			t.Fatal(err)
		}
		if !(p1 < p2) || f.s.Position() < p2 || f.w.Position() != f.s.Position() {
			t.Fatalf("positions p1=%d p2=%d service=%d writer=%d", p1, p2, f.s.Position(), f.w.Position())
		}

		got, err := f.s.Get(ctx, alice, "", "org.example.a")
		if err != nil || string(got) != `{"x":1}` {
			t.Fatalf("get = %s, %v", got, err)
		}
		if got, _ := f.s.Get(ctx, alice, "", "org.example.r"); got != nil {
			t.Fatalf("room data leaked into global: %s", got)
		}
		if got, _ := f.s.Get(ctx, alice, room, "org.example.r"); string(got) != `{"y":2}` {
			t.Fatalf("room get = %s", got)
		}

		cases := []struct {
			name       string
			from, to   int64
			wantGlobal map[string]string
			wantRoom   map[string]string
		}{
			{"initial", 0, f.s.Position(), map[string]string{"org.example.a": `{"x":1}`}, map[string]string{"org.example.r": `{"y":2}`}},
			{"after first", p1, f.s.Position(), map[string]string{}, map[string]string{"org.example.r": `{"y":2}`}},
			{"up to first", 0, p1, map[string]string{"org.example.a": `{"x":1}`}, map[string]string{}},
			{"empty window", p2, p2, map[string]string{}, map[string]string{}},
		}
		for _, c := range cases {
			g, rooms, err := f.s.Since(ctx, alice, c.from, c.to)
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(types(g)) != fmt.Sprint(c.wantGlobal) || fmt.Sprint(types(rooms[room])) != fmt.Sprint(c.wantRoom) {
				t.Errorf("%s: global %v rooms %v, want %v %v", c.name, types(g), types(rooms[room]), c.wantGlobal, c.wantRoom)
			}
		}

		// Overwriting moves the entry to a new position; the old window no
		// longer has it.
		p3, err := f.w.Put(ctx, alice, "", "org.example.a", raw(`{"x":3}`))
		if err != nil {
			t.Fatal(err)
		}
		g, _, _ := f.s.Since(ctx, alice, p2, p3)
		if types(g)["org.example.a"] != `{"x":3}` {
			t.Fatalf("overwrite not in its window: %v", types(g))
		}
		if g, _, _ := f.s.Since(ctx, alice, 0, p2); len(g) != 0 {
			t.Fatalf("overwritten entry still in old window: %v", types(g))
		}
	})
}

func TestDeleteIsEmptyContent(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := ctxT(t)
		f := newFixture(t, db)
		alice := "@alice:" + server
		p1, _ := f.w.Put(ctx, alice, "", "org.example.gone", raw(`{"a":1}`))
		if _, err := f.s.Delete(ctx, alice, "", "org.example.gone"); err != nil {
			t.Fatal(err)
		}
		if got, err := f.s.Get(ctx, alice, "", "org.example.gone"); got != nil || err != nil {
			t.Fatalf("deleted entry reads as %s, %v", got, err)
		}
		// {} written through Put is a deletion too.
		if _, err := f.s.Set(ctx, alice, "", "org.example.other", raw(` { } `)); err != nil {
			t.Fatal(err)
		}
		if g, _, _ := f.s.Since(ctx, alice, 0, f.s.Position()); len(g) != 0 {
			t.Fatalf("initial sync shows deleted entries: %v", types(g))
		}
		g, _, _ := f.s.Since(ctx, alice, p1, f.s.Position())
		if tt := types(g); tt["org.example.gone"] != "{}" || tt["org.example.other"] != "{}" {
			t.Fatalf("incremental sync must carry deletions: %v", tt)
		}
		if _, err := f.s.Delete(ctx, alice, "", accountdata.TypePushRules); err == nil {
			t.Fatal("deleting m.push_rules accepted")
		}
	})
}

func TestTags(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := ctxT(t)
		f := newFixture(t, db)
		alice, room := "@alice:"+server, "!tags:"+server
		if _, err := f.w.PutTag(ctx, alice, room, "m.favourite", raw(`{"order":0.25}`)); err != nil {
			t.Fatal(err)
		}
		p2, err := f.w.PutTag(ctx, alice, room, "u.work", raw(`{}`))
		if err != nil {
			t.Fatal(err)
		}
		tags, err := f.s.Tags(ctx, alice, room)
		if err != nil || len(tags) != 2 || string(tags["m.favourite"]) != `{"order":0.25}` {
			t.Fatalf("tags = %v, %v", tags, err)
		}
		// Tags arrive in sync as the room's m.tag account data.
		_, rooms, _ := f.s.Since(ctx, alice, 0, f.s.Position())
		if tt := types(rooms[room]); tt["m.tag"] != `{"tags":{"m.favourite":{"order":0.25},"u.work":{}}}` {
			t.Fatalf("m.tag in sync = %v", tt)
		}
		p3, err := f.w.RemoveTag(ctx, alice, room, "m.favourite")
		if err != nil || p3 <= p2 {
			t.Fatalf("remove = %d, %v", p3, err)
		}
		// Removing an absent tag writes nothing.
		p4, err := f.w.RemoveTag(ctx, alice, room, "m.favourite")
		if err != nil || p4 != p3 {
			t.Fatalf("remove absent = %d, %v (position was %d)", p4, err, p3)
		}
		if tags, _ := f.s.Tags(ctx, alice, room); len(tags) != 1 || tags["u.work"] == nil {
			t.Fatalf("after remove: %v", tags)
		}
		// Concurrent tag edits do not lose each other (read-modify-write on
		// the writer).
		var wg sync.WaitGroup
		errs := make(chan error, 10)
		for i := range 10 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := f.w.PutTag(ctx, alice, room, fmt.Sprintf("u.t%d", i), raw(`{}`)); err != nil {
					errs <- err
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		if tags, _ := f.s.Tags(ctx, alice, room); len(tags) != 11 {
			t.Fatalf("after concurrent tagging: %d tags, want 11", len(tags))
		}
	})
}

func TestSetValidation(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := ctxT(t)
		f := newFixture(t, db)
		alice := "@alice:" + server
		cases := []struct {
			name, room, typ, content string
			status                   int
			code                     string
		}{
			{"fully_read global", "", "m.fully_read", `{"event_id":"$x"}`, 405, "M_BAD_JSON"},
			{"fully_read room", "!r:x", "m.fully_read", `{"event_id":"$x"}`, 405, "M_BAD_JSON"},
			{"push_rules", "", "m.push_rules", `{}`, 405, "M_BAD_JSON"},
			{"not an object", "", "org.x", `[1]`, 400, "M_NOT_JSON"},
			{"ignored: no key", "", "m.ignored_user_list", `{"users":{}}`, 400, "M_BAD_JSON"},
			{"ignored: list", "", "m.ignored_user_list", `{"ignored_users":["@a:b"]}`, 400, "M_BAD_JSON"},
			{"ignored: bad id", "", "m.ignored_user_list", `{"ignored_users":{"bob":{}}}`, 400, "M_BAD_JSON"},
			{"ignored: value", "", "m.ignored_user_list", `{"ignored_users":{"@bob:x":true}}`, 400, "M_BAD_JSON"},
			{"ignored: ok", "", "m.ignored_user_list", `{"ignored_users":{"@bob:x":{},"@carol:y":{}}}`, 0, ""},
			{"ignored: cleared", "", "m.ignored_user_list", `{}`, 0, ""},
			{"ignored: ok again", "", "m.ignored_user_list", `{"ignored_users":{"@bob:x":{}}}`, 0, ""},
		}
		for _, c := range cases {
			_, err := f.s.Set(ctx, alice, c.room, c.typ, raw(c.content))
			if st, code := errcode(err); st != c.status || code != c.code || (c.status == 0 && err != nil) {
				t.Errorf("%s: err = %v, want %d %s", c.name, err, c.status, c.code)
			}
		}
		ignored, err := f.s.IgnoredUsers(ctx, alice)
		if err != nil || len(ignored) != 1 || !ignored["@bob:x"] {
			t.Fatalf("ignored = %v, %v", ignored, err)
		}
		if ignored, _ := f.s.IgnoredUsers(ctx, "@nobody:"+server); len(ignored) != 0 {
			t.Fatalf("ignored of a user without the list = %v", ignored)
		}
	})
}

func TestFullyReadAndRestart(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := ctxT(t)
		f := newFixture(t, db)
		alice, room := "@alice:"+server, "!fr:"+server
		if err := f.s.SetFullyRead(ctx, alice, room, "$ev1"); err != nil {
			t.Fatal(err)
		}
		got, _ := f.s.Get(ctx, alice, room, accountdata.TypeFullyRead)
		if string(got) != `{"event_id":"$ev1"}` {
			t.Fatalf("m.fully_read = %s", got)
		}
		last := f.s.Position()
		// A new writer over the same database resumes at the last write.
		f2 := newFixture(t, db)
		if f2.s.Position() != last {
			t.Fatalf("restart resumed at %d, want %d", f2.s.Position(), last)
		}
		p, err := f2.w.Put(ctx, alice, "", "org.example.after", raw(`{}`))
		if err != nil || p <= last {
			t.Fatalf("write after restart = %d, %v", p, err)
		}
		if err := f2.w.SavePosition(ctx); err != nil {
			t.Fatal(err)
		}
	})
}

// client drives the HTTP endpoints as a logged-in user.
type client struct {
	t     *testing.T
	h     http.Handler
	token string
}

func (c *client) do(method, path, body string) (int, map[string]any) {
	c.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = bytes.NewBufferString(body)
	}
	r := httptest.NewRequest(method, path, rd)
	r.Header.Set("Authorization", "Bearer "+c.token)
	w := httptest.NewRecorder()
	c.h.ServeHTTP(w, r)
	var out map[string]any
	_ = json.Unmarshal(w.Body.Bytes(), &out)
	return w.Code, out
}

func TestHTTP(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := ctxT(t)
		f := newFixture(t, db)
		acc := accounts.NewService(db, accounts.Settings{ServerName: server, BcryptRounds: 4}, discard)
		sess, err := acc.Register(ctx, accounts.NewUser{Localpart: "alice"})
		if err != nil {
			t.Fatal(err)
		}
		mux := mxhttp.NewMux()
		f.s.Routes(mux, mxhttp.NewServer(discard), acc)
		// The embedded ServeMux, not the Mux: mxhttp.Mux.ServeHTTP
		// dispatches through ServeMux.Handler, which leaves path values
		// unset (reported to the lead).
		c := &client{t: t, h: mux.ServeMux, token: sess.AccessToken}
		me := "/_matrix/client/v3/user/" + sess.UserID
		room := "!room:" + server

		steps := []struct {
			method, path, body string
			status             int
			code               string
		}{
			{"GET", me + "/account_data/org.x", "", 404, "M_NOT_FOUND"},
			{"PUT", me + "/account_data/org.x", `{"a":1}`, 200, ""},
			{"GET", me + "/account_data/org.x", "", 200, ""},
			{"PUT", "/_matrix/client/v3/user/@bob:" + server + "/account_data/org.x", `{}`, 403, "M_FORBIDDEN"},
			{"GET", "/_matrix/client/v3/user/@bob:" + server + "/account_data/org.x", "", 403, "M_FORBIDDEN"},
			{"PUT", me + "/account_data/org.x", `not json`, 400, "M_NOT_JSON"},
			{"PUT", me + "/account_data/org.x", `[1,2]`, 400, "M_NOT_JSON"},
			{"PUT", me + "/account_data/m.push_rules", `{}`, 405, "M_BAD_JSON"},
			{"PUT", me + "/rooms/" + room + "/account_data/m.fully_read", `{"event_id":"$e"}`, 405, "M_BAD_JSON"},
			{"PUT", me + "/rooms/notaroom/account_data/org.x", `{}`, 400, "M_INVALID_PARAM"},
			{"GET", me + "/rooms/notaroom/account_data/org.x", "", 400, "M_INVALID_PARAM"},
			{"GET", me + "/rooms/" + room + "/account_data/org.x", "", 404, "M_NOT_FOUND"},
			{"PUT", me + "/rooms/" + room + "/account_data/org.x", `{"r":true}`, 200, ""},
			{"GET", me + "/rooms/" + room + "/account_data/org.x", "", 200, ""},
			{"PUT", me + "/account_data/m.ignored_user_list", `{"ignored_users":"@bob:x"}`, 400, "M_BAD_JSON"},
			{"GET", me + "/rooms/" + room + "/tags", "", 200, ""},
			{"PUT", me + "/rooms/" + room + "/tags/u.work", `{"order":0.5}`, 200, ""},
			{"PUT", me + "/rooms/" + room + "/tags/u.bad", `{"order":2}`, 400, "M_BAD_JSON"},
			{"PUT", me + "/rooms/" + room + "/tags/u.bad", `{"order":"high"}`, 400, "M_BAD_JSON"},
			{"PUT", me + "/rooms/" + room + "/tags/" + string(bytes.Repeat([]byte("t"), 256)), `{}`, 400, "M_INVALID_PARAM"},
			{"PUT", me + "/rooms/" + room + "/tags/m.favourite", `{}`, 200, ""},
			{"DELETE", me + "/rooms/" + room + "/tags/m.favourite", "", 200, ""},
			{"DELETE", "/_matrix/client/unstable/org.matrix.msc3391/user/" + sess.UserID + "/account_data/org.x", "", 200, ""},
			{"GET", me + "/account_data/org.x", "", 404, "M_NOT_FOUND"},
		}
		for i, s := range steps {
			status, body := c.do(s.method, s.path, s.body)
			if status != s.status || (s.code != "" && body["errcode"] != s.code) {
				t.Fatalf("step %d %s %s: %d %v, want %d %s", i, s.method, s.path, status, body, s.status, s.code)
			}
		}
		_, body := c.do("GET", me+"/rooms/"+room+"/tags", "")
		if fmt.Sprint(body) != "map[tags:map[u.work:map[order:0.5]]]" {
			t.Fatalf("tags = %v", body)
		}
		_, body = c.do("GET", me+"/rooms/"+room+"/account_data/org.x", "")
		if body["r"] != true {
			t.Fatalf("room account data = %v", body)
		}
	})
}
