package push_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"ganglion/internal/accounts"
	"ganglion/internal/mxhttp"
	"ganglion/internal/push"
	"ganglion/internal/rooms"
	"ganglion/internal/storage"
	"ganglion/internal/storage/storagetest"
	"ganglion/internal/testutil"
)

// gateway is a fake push gateway: it answers each request with the next
// status of script (the last one repeats) and records the bodies.
type gateway struct {
	srv      *httptest.Server
	bodies   chan map[string]any
	script   []int
	rejected atomic.Value // []string
	n        atomic.Int32
}

func newGateway(t *testing.T, script ...int) *gateway {
	g := &gateway{bodies: make(chan map[string]any, 100), script: script}
	g.rejected.Store([]string{})
	g.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		i := int(g.n.Add(1)) - 1
		b, _ := io.ReadAll(r.Body)
		var body map[string]any
		_ = json.Unmarshal(b, &body)
		g.bodies <- body
		status := g.script[min(i, len(g.script)-1)]
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(map[string]any{"rejected": g.rejected.Load()})
	}))
	t.Cleanup(g.srv.Close)
	return g
}

func (g *gateway) next(t *testing.T) map[string]any {
	t.Helper()
	select {
	case b := <-g.bodies:
		return b
	case <-time.After(20 * time.Second):
		t.Fatal("the push gateway got no request")
		return nil
	}
}

// TestPushers: the pusher endpoints' validation and lifecycle, and
// delivery to a gateway that first fails (retried with backoff), then
// takes the notification, then rejects the pushkey (the pusher goes).
func TestPushers(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := ctxT(t)
		f := newFixture(t, db)
		acc := accounts.NewService(db, accounts.Settings{ServerName: server, BcryptRounds: 4}, discard)
		sess, err := acc.Register(ctx, accounts.NewUser{Localpart: "bob"})
		if err != nil {
			t.Fatal(err)
		}
		other, err := acc.Register(ctx, accounts.NewUser{Localpart: "carol"})
		if err != nil {
			t.Fatal(err)
		}
		mux := mxhttp.NewMux()
		f.s.PushersRoutes(mux, mxhttp.NewServer(discard), acc)
		c := &client{t: t, h: mux.ServeMux, token: sess.AccessToken}
		carol := &client{t: t, h: mux.ServeMux, token: other.AccessToken}
		g := newGateway(t, 500, 200)
		pusher := func(url string, extra string) string {
			return `{"pushkey":"pk1","kind":"http","app_id":"org.example.app","app_display_name":"App",
				"device_display_name":"Phone","lang":"en","data":{"url":"` + url + `","custom":1}` + extra + `}`
		}
		const set = "/_matrix/client/v3/pushers/set"
		steps := []struct {
			c      *client
			body   string
			status int
			code   string
		}{
			{c, `{"kind":"http"}`, 400, "M_MISSING_PARAM"},
			{c, pusher("ftp://gw.example/_matrix/push/v1/notify", ""), 400, "M_INVALID_PARAM"},
			{c, pusher("https://gw.example/push", ""), 400, "M_INVALID_PARAM"},
			{c, pusher("not a url", ""), 400, "M_INVALID_PARAM"},
			{c, `{"pushkey":"pk1","kind":"email","app_id":"a","app_display_name":"A","device_display_name":"D","lang":"en","data":{}}`, 400, "M_INVALID_PARAM"},
			{c, `{"pushkey":"pk1","kind":"http","app_id":"a","app_display_name":"A","device_display_name":"D","lang":"en","data":{}}`, 400, "M_MISSING_PARAM"},
			{c, `{"pushkey":"pk1","kind":"http","app_id":"a","app_display_name":"A","device_display_name":"D","lang":"en"}`, 400, "M_MISSING_PARAM"},
			{c, `not json`, 400, "M_NOT_JSON"},
			// carol first holds the same app id and pushkey; bob taking it
			// without append removes hers.
			{carol, pusher(g.srv.URL+"/_matrix/push/v1/notify", ""), 200, ""},
			{c, pusher(g.srv.URL+"/_matrix/push/v1/notify", ""), 200, ""},
		}
		for i, s := range steps {
			status, body := s.c.do("POST", set, s.body)
			var e struct {
				Errcode string `json:"errcode"`
			}
			_ = json.Unmarshal(body, &e)
			if status != s.status || e.Errcode != s.code {
				t.Fatalf("step %d: %d %s, want %d %s", i, status, body, s.status, s.code)
			}
		}
		list := func(cl *client) []push.Pusher {
			t.Helper()
			_, b := cl.do("GET", "/_matrix/client/v3/pushers", "")
			var out struct {
				Pushers []push.Pusher `json:"pushers"`
			}
			if err := json.Unmarshal(b, &out); err != nil || out.Pushers == nil {
				t.Fatalf("GET /pushers: %s", b)
			}
			return out.Pushers
		}
		if l := list(carol); len(l) != 0 {
			t.Fatalf("carol's pusher survived bob taking the pushkey: %+v", l)
		}
		if l := list(c); len(l) != 1 || l[0].Kind != "http" || l[0].PushKey != "pk1" || l[0].AppDisplayName != "App" {
			t.Fatalf("bob's pushers = %+v", l)
		}
		// With append, carol's pusher coexists with bob's.
		if st, b := carol.do("POST", set, pusher(g.srv.URL+"/_matrix/push/v1/notify", `,"append":true`)); st != 200 {
			t.Fatalf("append: %d %s", st, b)
		}
		if len(list(c)) != 1 || len(list(carol)) != 1 {
			t.Fatal("append removed a pusher")
		}
		if st, _ := carol.do("POST", set, `{"pushkey":"pk1","app_id":"org.example.app","kind":null}`); st != 200 || len(list(carol)) != 0 {
			t.Fatal("kind null did not delete carol's pusher")
		}
		// Deleting the device that set a pusher deletes the pusher; another
		// device's stays.
		if st, _ := carol.do("POST", set, pusher(g.srv.URL+"/_matrix/push/v1/notify", `,"append":true`)); st != 200 {
			t.Fatal("carol's pusher again")
		}
		if err := f.s.DeviceGone(ctx, other.UserID, "OTHERDEVICE"); err != nil || len(list(carol)) != 1 {
			t.Fatalf("another device's deletion removed carol's pusher: %v", err)
		}
		if err := f.s.DeviceGone(ctx, other.UserID, other.DeviceID); err != nil || len(list(carol)) != 0 {
			t.Fatalf("carol's device deletion kept her pusher: %v", err)
		}

		// bob's second device has a gateway that always fails: it retries
		// on its own without holding back the first device.
		dead := newGateway(t, 503)
		if st, b := c.do("POST", set, `{"pushkey":"pk2","kind":"http","app_id":"org.example.other","app_display_name":"App",
			"device_display_name":"Tablet","lang":"en","data":{"url":"`+dead.srv.URL+`/_matrix/push/v1/notify"}}`); st != 200 {
			t.Fatalf("second pusher: %d %s", st, b)
		}

		// A message to bob reaches the gateway, after one failure.
		p := newPersister(t, db, f)
		room := "!pushers:" + server
		alice := "@alice:" + server
		drafts := []rooms.Draft{
			{Type: "m.room.create", StateKey: ptr(""), Sender: alice, RoomVersion: "10", Content: content(map[string]any{"creator": alice, "room_version": "10"})},
			member(alice, "join", "Alice A."),
			{Type: "m.room.join_rules", StateKey: ptr(""), Sender: alice, Content: content(map[string]any{"join_rule": "public"})},
			{Type: "m.room.name", StateKey: ptr(""), Sender: alice, Content: content(map[string]any{"name": "Garden"})},
			member(sess.UserID, "join", ""),
			message(alice, "psst"),
		}
		res, err := p.SendEvents(ctx, room, drafts)
		if err != nil {
			t.Fatal(err)
		}
		msg := res[len(res)-1]
		runCtx, stop := context.WithCancel(ctx)
		done := make(chan error, 1)
		d := push.NewDelivery(db, f.reg, "main", []string{"main"}, push.DeliveryOptions{MinBackoff: 10 * time.Millisecond, Idle: 50 * time.Millisecond}, discard)
		go func() { done <- d.Run(runCtx) }()
		defer func() {
			stop()
			<-done
		}()
		first, second := g.next(t), g.next(t)
		for _, b := range []map[string]any{first, second} {
			n, _ := b["notification"].(map[string]any)
			if n["event_id"] != msg.EventID {
				t.Fatalf("notification for %v, want %s: %v", n["event_id"], msg.EventID, b)
			}
		}
		n := second["notification"].(map[string]any)
		dev := n["devices"].([]any)[0].(map[string]any)
		data := dev["data"].(map[string]any)
		counts := n["counts"].(map[string]any)
		if n["room_id"] != room || n["type"] != "m.room.message" || n["sender"] != alice || n["sender_display_name"] != "Alice A." ||
			n["room_name"] != "Garden" || n["prio"] != "high" || counts["unread"] != 1.0 || dev["pushkey"] != "pk1" ||
			dev["app_id"] != "org.example.app" || data["url"] != nil || data["custom"] != 1.0 ||
			n["content"].(map[string]any)["body"] != "psst" {
			t.Fatalf("notification = %v", second)
		}
		// Delivered: the pusher's position moves past the event and it is
		// not sent again.
		testutil.Eventually(t, 10*time.Second, "pusher position advanced", func() bool {
			var pos int64
			_ = db.Reader().QueryRowContext(ctx, `SELECT last_stream_ordering FROM pushers WHERE user_id = $1`, sess.UserID).Scan(&pos)
			return pos >= msg.StreamPos
		})
		// The gateway rejects the pushkey on the next notification: the
		// pusher goes.
		g.rejected.Store([]string{"pk1"})
		if _, err := p.SendEvents(ctx, room, []rooms.Draft{message(alice, "again")}); err != nil {
			t.Fatal(err)
		}
		if b := g.next(t); b["notification"].(map[string]any)["content"].(map[string]any)["body"] != "again" {
			t.Fatalf("next notification = %v", b)
		}
		testutil.Eventually(t, 10*time.Second, "rejected pusher removed", func() bool { return len(list(c)) == 1 })
		// The dead gateway was tried more than once meanwhile (backoff).
		dead.next(t)
		dead.next(t)
	})
}
