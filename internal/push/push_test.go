package push_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"ganglion/internal/accounts"
	"ganglion/internal/mxhttp"
	"ganglion/internal/push"
	"ganglion/internal/storage"
	"ganglion/internal/storage/storagetest"
	"ganglion/internal/streams"
)

const server = "push.test"

var discard = slog.New(slog.NewTextHandler(io.Discard, nil))

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

type fixture struct {
	reg *streams.Registry
	w   *push.LocalWriter
	s   *push.Service
}

func newFixture(t *testing.T, db *storage.DB) *fixture {
	t.Helper()
	reg, err := streams.NewRegistry("main", streams.AllDefs(), nil, streams.NewNotifier())
	if err != nil {
		t.Fatal(err)
	}
	s := push.NewService(db, reg, discard)
	w, err := push.NewLocalWriter(ctxT(t), db, reg, s.Changed, discard)
	if err != nil {
		t.Fatal(err)
	}
	s.SetWriter(w)
	return &fixture{reg: reg, w: w, s: s}
}

type client struct {
	t     *testing.T
	h     http.Handler
	token string
}

func (c *client) do(method, path, body string) (int, []byte) {
	c.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = bytes.NewBufferString(body)
	}
	r := httptest.NewRequest(method, path, rd)
	r.Header.Set("Authorization", "Bearer "+c.token)
	w := httptest.NewRecorder()
	c.h.ServeHTTP(w, r)
	return w.Code, w.Body.Bytes()
}

func ids(rules []push.Rule) []string {
	var out []string
	for _, r := range rules {
		out = append(out, r.RuleID)
	}
	return out
}

// TestHTTP drives every push rules endpoint, good and bad requests, on
// both engines.
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
		c := &client{t: t, h: mux.ServeMux, token: sess.AccessToken}
		const p = "/_matrix/client/v3/pushrules/global/"
		const r0 = "/_matrix/client/r0/pushrules/global/"
		steps := []struct {
			method, path, body string
			status             int
			code               string
		}{
			{"GET", "/_matrix/client/v3/pushrules/", "", 200, ""},
			{"GET", r0, "", 200, ""},
			{"GET", p + "override/", "", 200, ""},
			{"GET", p + "override/.m.rule.master", "", 200, ""},
			{"GET", p + "underride/.m.rule.master", "", 404, "M_NOT_FOUND"},
			{"GET", p + "bogus/x", "", 400, "M_INVALID_PARAM"},
			{"GET", "/_matrix/client/v3/pushrules/device/override/x", "", 400, "M_INVALID_PARAM"},
			{"PUT", p + "bogus/x", `{"actions":[]}`, 400, "M_INVALID_PARAM"},
			{"PUT", p + "override/a", `{"actions":["notify"],"conditions":[{"kind":"event_match","key":"type","pattern":"org.a"}]}`, 200, ""},
			{"PUT", p + "override/b?before=a", `{"actions":[]}`, 200, ""},
			{"PUT", p + "override/c?after=a", `{"actions":["notify",{"set_tweak":"sound","value":"x"}]}`, 200, ""},
			{"PUT", p + "override/d?before=missing", `{"actions":[]}`, 400, "M_UNKNOWN"},
			{"PUT", p + "override/d?after=.m.rule.master", `{"actions":[]}`, 400, "M_UNKNOWN"},
			{"PUT", p + "override/.m.rule.mine", `{"actions":[]}`, 400, "M_INVALID_PARAM"},
			{"PUT", p + "override/.m.rule.master", `{"actions":[]}`, 400, "M_INVALID_PARAM"},
			{"PUT", p + "override/x%5Cy", `{"actions":[]}`, 400, "M_INVALID_PARAM"},
			{"PUT", p + "override/e", `not json`, 400, "M_NOT_JSON"},
			{"PUT", p + "override/e", `[1]`, 400, "M_NOT_JSON"},
			{"PUT", p + "override/e", `{}`, 400, "M_BAD_JSON"},
			{"PUT", p + "override/e", `{"actions":"notify"}`, 400, "M_BAD_JSON"},
			{"PUT", p + "override/e", `{"actions":["shout"]}`, 400, "M_BAD_JSON"},
			{"PUT", p + "override/e", `{"actions":[{"value":1}]}`, 400, "M_BAD_JSON"},
			{"PUT", p + "override/e", `{"actions":[],"conditions":{}}`, 400, "M_BAD_JSON"},
			{"PUT", p + "override/e", `{"actions":[],"conditions":[{"key":"type"}]}`, 400, "M_BAD_JSON"},
			{"PUT", p + "override/e", `{"actions":[],"conditions":[1]}`, 400, "M_BAD_JSON"},
			{"PUT", p + "content/e", `{"actions":[]}`, 400, "M_BAD_JSON"},
			{"PUT", p + "content/kw", `{"actions":["notify"],"pattern":"cake"}`, 200, ""},
			{"PUT", p + "postcontent/pc", `{"actions":[],"conditions":[{"kind":"org.example"}]}`, 200, ""},
			{"PUT", p + "room/!r:x", `{"actions":[]}`, 200, ""},
			{"PUT", p + "sender/@spam:x", `{"actions":[]}`, 200, ""},
			{"GET", p + "override/a/enabled", "", 200, ""},
			{"PUT", p + "override/a/enabled", `{"enabled":false}`, 200, ""},
			{"PUT", p + "override/a/enabled", `{"enabled":"no"}`, 400, "M_BAD_JSON"},
			{"PUT", p + "override/a/enabled", `{}`, 400, "M_BAD_JSON"},
			{"PUT", p + "override/zz/enabled", `{"enabled":true}`, 404, "M_NOT_FOUND"},
			{"PUT", p + "override/.m.rule.master/enabled", `{"enabled":true}`, 200, ""},
			{"PUT", p + "underride/.m.rule.message/actions", `{"actions":["dont_notify"]}`, 200, ""},
			{"PUT", p + "underride/.m.rule.message/actions", `{"actions":5}`, 400, "M_BAD_JSON"},
			{"PUT", p + "underride/.m.rule.encrypted/actions", `{"actions":[]}`, 200, ""},
			{"PUT", p + "override/.m.rule.message/actions", `{"actions":[]}`, 404, "M_NOT_FOUND"},
			{"GET", p + "override/a/bogus", "", 404, "M_UNRECOGNIZED"},
			{"DELETE", p + "override/.m.rule.master", "", 400, "M_UNKNOWN"},
			{"DELETE", p + "override/nope", "", 404, "M_NOT_FOUND"},
			{"DELETE", p + "sender/@spam:x", "", 200, ""},
			{"GET", p + "sender/@spam:x", "", 404, "M_NOT_FOUND"},
		}
		for i, s := range steps {
			status, body := c.do(s.method, s.path, s.body)
			var e struct {
				Errcode string `json:"errcode"`
			}
			_ = json.Unmarshal(body, &e)
			if status != s.status || e.Errcode != s.code {
				t.Fatalf("step %d %s %s: %d %s, want %d %s", i, s.method, s.path, status, body, s.status, s.code)
			}
		}
		rs, err := f.s.Ruleset(ctx, sess.UserID)
		if err != nil {
			t.Fatal(err)
		}
		wantOverride := []string{".m.rule.master", "b", "a", "c", ".m.rule.suppress_notices"}
		if got := ids(rs[push.Override]); !slices.Equal(got[:5], wantOverride) {
			t.Fatalf("override order %v, want prefix %v", got, wantOverride)
		}
		if m, _ := rs.Find(push.Override, ".m.rule.master"); !m.Enabled || !m.Default {
			t.Fatalf("master = %+v", m)
		}
		if a, _ := rs.Find(push.Override, "a"); a.Enabled || a.Default {
			t.Fatalf("a = %+v", a)
		}
		if m, _ := rs.Find(push.Underride, ".m.rule.message"); len(m.Actions) != 1 || string(m.Actions[0]) != `"dont_notify"` {
			t.Fatalf("message actions = %s", m.Actions)
		}
		if e, _ := rs.Find(push.Underride, ".m.rule.encrypted"); e.Actions == nil || len(e.Actions) != 0 {
			t.Fatalf("encrypted actions set to [] read back as %s", e.Actions)
		}
		if got := ids(rs[push.Content]); !slices.Equal(got, []string{"kw", ".m.rule.contains_user_name"}) {
			t.Fatalf("content = %v", got)
		}
		// Updating in place keeps the place and the enabled state; with
		// after= it moves.
		for _, s := range []struct{ path, body string }{
			{p + "override/a", `{"actions":[]}`},
			{p + "override/b?after=c", `{"actions":[]}`},
		} {
			if st, b := c.do("PUT", s.path, s.body); st != 200 {
				t.Fatalf("%s: %d %s", s.path, st, b)
			}
		}
		rs, _ = f.s.Ruleset(ctx, sess.UserID)
		if got := ids(rs[push.Override]); !slices.Equal(got[:4], []string{".m.rule.master", "a", "c", "b"}) {
			t.Fatalf("after moves: %v", got)
		}
		if a, _ := rs.Find(push.Override, "a"); a.Enabled {
			t.Fatal("update re-enabled a disabled rule")
		}
		// The wire form of GET /pushrules/ includes postcontent once used.
		_, b := c.do("GET", "/_matrix/client/v3/pushrules/", "")
		var g struct {
			Global map[string][]push.Rule `json:"global"`
		}
		if err := json.Unmarshal(b, &g); err != nil || len(g.Global["postcontent"]) != 1 || len(g.Global["room"]) != 1 {
			t.Fatalf("GET /pushrules/: %s", b)
		}
	})
}

// TestAccountDataWindows: m.push_rules is in every initial sync and in an
// incremental one only when the user's rules changed in its window.
func TestAccountDataWindows(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := ctxT(t)
		f := newFixture(t, db)
		alice, bob := "@alice:"+server, "@bob:"+server
		l := f.reg.Notifier().Listen(streams.UserKey(alice))
		defer l.Close()
		got, err := f.s.AccountData(ctx, alice, 0, f.s.Position())
		if err != nil || got == nil {
			t.Fatalf("initial, no changes: %s %v", got, err)
		}
		var g push.Global
		if err := json.Unmarshal(got, &g); err != nil || len(g.Global[push.Override]) != 12 {
			t.Fatalf("initial content: %s", got)
		}
		if got, _ := f.s.AccountData(ctx, alice, 1, 5); got != nil {
			t.Fatal("incremental without changes carries m.push_rules")
		}
		p1, err := f.w.Apply(ctx, alice, push.Op{Op: push.OpSetEnabled, Kind: push.Override, RuleID: ".m.rule.master", Enabled: true})
		if err != nil {
			t.Fatal(err)
		}
		select {
		case <-l.C:
		default:
			t.Fatal("a change did not wake the user")
		}
		if _, err := f.w.Apply(ctx, bob, push.Op{Op: push.OpSetEnabled, Kind: push.Override, RuleID: ".m.rule.master", Enabled: true}); err != nil {
			t.Fatal(err)
		}
		if f.s.Position() <= p1 || f.w.Position() != f.s.Position() {
			t.Fatalf("positions: %d %d %d", p1, f.s.Position(), f.w.Position())
		}
		if got, _ := f.s.AccountData(ctx, alice, p1-1, f.s.Position()); got == nil {
			t.Fatal("incremental over the change lacks m.push_rules")
		}
		if got, _ := f.s.AccountData(ctx, alice, p1, f.s.Position()); got != nil {
			t.Fatal("incremental after the change (bob's only) carries alice's rules")
		}
		// The replication source reads the rows back.
		rows, err := push.NewSource(db, nil).Rows(ctx, "main", 0, f.s.Position(), 10)
		if err != nil || len(rows) != 2 || string(rows[0].Data) != `["`+alice+`"]` {
			t.Fatalf("rows = %v, %v", rows, err)
		}
		// A new writer over the same database resumes at the last write.
		f2 := newFixture(t, db)
		if f2.w.Position() != f.w.Position() {
			t.Fatalf("restart at %d, want %d", f2.w.Position(), f.w.Position())
		}
	})
}
