package receipts_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"

	"ganglion/internal/accounts"
	"ganglion/internal/events"
	"ganglion/internal/mxhttp"
	"ganglion/internal/ratelimit"
	"ganglion/internal/receipts"
	"ganglion/internal/rooms"
	"ganglion/internal/storage"
	"ganglion/internal/storage/storagetest"
)

// fullyRead records SetFullyRead calls in place of account data.
type fullyRead struct {
	mu    sync.Mutex
	calls []string // "user room event"
}

func (f *fullyRead) SetFullyRead(_ context.Context, userID, roomID, eventID string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, userID+" "+roomID+" "+eventID)
	return nil
}

func (f *fullyRead) take() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := f.calls
	f.calls = nil
	return out
}

var _ receipts.FullyReadSetter = (*fullyRead)(nil)

// httpFixture: alice created a room with history visible only to joined
// members, sent "early", then carol joined and alice sent "late"; bob
// never joined. "other" is a message in a second room.
type httpFixture struct {
	url                string
	svc                *receipts.Service
	fr                 *fullyRead
	tokens             map[string]string
	room               string
	early, late, other string
}

func newHTTPFixture(t *testing.T, db *storage.DB) *httpFixture {
	t.Helper()
	ctx := ctxT(t)
	log := discard()
	reg := newRegistry(t)
	acc := accounts.NewService(db, accounts.Settings{ServerName: server, EnableRegistration: true,
		RegistrationWithoutVerify: true, BcryptRounds: 4}, log)
	key, err := events.GenerateSigningKey()
	if err != nil {
		t.Fatal(err)
	}
	p, err := rooms.NewPersister(ctx, db, reg, server, key, log)
	if err != nil {
		t.Fatal(err)
	}
	store := rooms.NewStore(db)
	roomSvc := rooms.NewService(rooms.Config{ServerName: server}, store, p, acc, reg, ratelimit.New(ratelimit.Rule{}, nil), log)
	acc.SetRoomHooks(roomSvc)

	f := &httpFixture{tokens: map[string]string{}, fr: &fullyRead{}}
	for _, local := range []string{"alice", "bob", "carol"} {
		sess, err := acc.Register(ctx, accounts.NewUser{Localpart: local})
		if err != nil {
			t.Fatal(err)
		}
		f.tokens[sess.UserID] = sess.AccessToken
	}
	carol := "@carol:" + server
	asAlice, asCarol := &accounts.Requester{UserID: alice}, &accounts.Requester{UserID: carol}
	f.room, err = roomSvc.CreateRoom(ctx, asAlice, rooms.CreateRoomRequest{Preset: "public_chat",
		InitialState: []rooms.InitialStateEvent{{Type: "m.room.history_visibility", Content: raw(map[string]string{"history_visibility": "joined"})}}})
	if err != nil {
		t.Fatal(err)
	}
	msg := raw(map[string]string{"msgtype": "m.text", "body": "hi"})
	if f.early, err = roomSvc.Send(ctx, asAlice, f.room, "m.room.message", "t1", msg); err != nil {
		t.Fatal(err)
	}
	if _, err := roomSvc.ChangeMembership(ctx, asCarol, f.room, rooms.MembershipChange{Target: carol, Membership: "join"}); err != nil {
		t.Fatal(err)
	}
	if f.late, err = roomSvc.Send(ctx, asAlice, f.room, "m.room.message", "t2", msg); err != nil {
		t.Fatal(err)
	}
	other, err := roomSvc.CreateRoom(ctx, asAlice, rooms.CreateRoomRequest{Preset: "public_chat"})
	if err != nil {
		t.Fatal(err)
	}
	if f.other, err = roomSvc.Send(ctx, asAlice, other, "m.room.message", "t3", msg); err != nil {
		t.Fatal(err)
	}

	f.svc = newReceipts(t, db, reg)
	mux := mxhttp.NewMux()
	receipts.NewHandlers(f.svc, store, roomSvc, f.fr).Routes(mux, mxhttp.NewServer(log), acc)
	// Served by the embedded stdlib mux: mxhttp.Mux.ServeHTTP dispatches
	// through ServeMux.Handler, which does not fill r.PathValue (reported
	// to the lead); the stdlib mux is the same routing table with values.
	ts := httptest.NewServer(mux.ServeMux)
	t.Cleanup(ts.Close)
	f.url = ts.URL
	return f
}

func (f *httpFixture) post(t *testing.T, user, path, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctxT(t), "POST", f.url+"/_matrix/client/v3"+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if tok := f.tokens[user]; tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct {
		Errcode string `json:"errcode"`
		Error   string `json:"error"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&out)
	if out.Error != "" {
		t.Logf("POST %s as %s: %d %s %s", path, user, resp.StatusCode, out.Errcode, out.Error)
	}
	return resp.StatusCode, out.Errcode
}

func receiptPath(roomID, typ, eventID string) string {
	return "/rooms/" + url.PathEscape(roomID) + "/receipt/" + url.PathEscape(typ) + "/" + url.PathEscape(eventID)
}

// current is alice's and carol's receipts as carol sees them, keyed
// "type user thread" → event.
func (f *httpFixture) current(t *testing.T, viewer string) map[string]string {
	t.Helper()
	got, err := f.svc.ForRooms(ctxT(t), viewer, []string{f.room}, 0, f.svc.Position())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	var c map[string]map[string]map[string]struct {
		ThreadID string `json:"thread_id"`
	}
	if raw := got[f.room]; raw != nil {
		if err := json.Unmarshal(raw, &c); err != nil {
			t.Fatal(err)
		}
	}
	for ev, byType := range c {
		for typ, byUser := range byType {
			for user, body := range byUser {
				out[typ+" "+user+" "+body.ThreadID] = ev
			}
		}
	}
	return out
}

func TestReceiptEndpoint(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		f := newHTTPFixture(t, db)
		carol := "@carol:" + server
		bobID := bob
		tests := []struct {
			name          string
			user          string
			room, typ, ev string
			body          string
			status        int
			errcode       string
			wantReceipt   string // "type user thread" that must now point at ev
			wantFullyRead string
		}{
			{name: "m.read", user: carol, typ: receipts.Read, ev: "late", body: `{}`, status: 200,
				wantReceipt: "m.read " + carol + " "},
			{name: "empty body", user: alice, typ: receipts.Read, ev: "early", body: ``, status: 200,
				wantReceipt: "m.read " + alice + " "},
			{name: "private", user: carol, typ: receipts.ReadPrivate, ev: "late", body: `{}`, status: 200,
				wantReceipt: "m.read.private " + carol + " "},
			{name: "main thread", user: carol, typ: receipts.Read, ev: "late", body: `{"thread_id": "main"}`, status: 200,
				wantReceipt: "m.read " + carol + " main"},
			{name: "thread root", user: alice, typ: receipts.Read, ev: "late", body: `{"thread_id": "$root"}`, status: 200,
				wantReceipt: "m.read " + alice + " $root"},
			{name: "null thread is unthreaded", user: alice, typ: receipts.Read, ev: "late", body: `{"thread_id": null}`, status: 200,
				wantReceipt: "m.read " + alice + " "},
			{name: "fully read", user: carol, typ: receipts.FullyRead, ev: "late", body: `{}`, status: 200,
				wantFullyRead: carol},
			{name: "fully read with a thread", user: carol, typ: receipts.FullyRead, ev: "late", body: `{"thread_id": "main"}`,
				status: 400, errcode: "M_INVALID_PARAM"},
			{name: "unknown type", user: carol, typ: "m.seen", ev: "late", body: `{}`, status: 400, errcode: "M_INVALID_PARAM"},
			{name: "empty thread", user: carol, typ: receipts.Read, ev: "late", body: `{"thread_id": ""}`, status: 400, errcode: "M_INVALID_PARAM"},
			{name: "thread not a string", user: carol, typ: receipts.Read, ev: "late", body: `{"thread_id": 5}`, status: 400, errcode: "M_INVALID_PARAM"},
			{name: "thread not an event id", user: carol, typ: receipts.Read, ev: "late", body: `{"thread_id": "side"}`, status: 400, errcode: "M_INVALID_PARAM"},
			{name: "not json", user: carol, typ: receipts.Read, ev: "late", body: `nope`, status: 400, errcode: "M_NOT_JSON"},
			{name: "not joined", user: bobID, typ: receipts.Read, ev: "late", body: `{}`, status: 403, errcode: "M_FORBIDDEN"},
			{name: "unknown event", user: carol, typ: receipts.Read, ev: "$nope", body: `{}`, status: 404, errcode: "M_NOT_FOUND"},
			{name: "event of another room", user: carol, typ: receipts.Read, ev: "other", body: `{}`, status: 404, errcode: "M_NOT_FOUND"},
			{name: "event before carol could see", user: carol, typ: receipts.ReadPrivate, ev: "early", body: `{}`, status: 404, errcode: "M_NOT_FOUND"},
			{name: "unknown room", user: carol, room: "!nope:" + server, typ: receipts.Read, ev: "late", body: `{}`, status: 403, errcode: "M_FORBIDDEN"},
			{name: "no token", user: "", typ: receipts.Read, ev: "late", body: `{}`, status: 401, errcode: "M_MISSING_TOKEN"},
		}
		for _, tc := range tests {
			ev := map[string]string{"late": f.late, "early": f.early, "other": f.other}[tc.ev]
			if ev == "" {
				ev = tc.ev
			}
			room := f.room
			if tc.room != "" {
				room = tc.room
			}
			before := f.svc.Position()
			status, code := f.post(t, tc.user, receiptPath(room, tc.typ, ev), tc.body)
			if status != tc.status || code != tc.errcode {
				t.Fatalf("%s: got %d %s, want %d %s", tc.name, status, code, tc.status, tc.errcode)
			}
			calls := f.fr.take()
			switch {
			case tc.wantReceipt != "":
				if got := f.current(t, alice)[tc.wantReceipt]; got != ev && tc.typ != receipts.ReadPrivate {
					t.Fatalf("%s: receipt %q at %q, want %q", tc.name, tc.wantReceipt, got, ev)
				}
				if got := f.current(t, tc.user)[tc.wantReceipt]; got != ev {
					t.Fatalf("%s: own receipt %q at %q, want %q", tc.name, tc.wantReceipt, got, ev)
				}
			case tc.wantFullyRead != "":
				if len(calls) != 1 || calls[0] != tc.wantFullyRead+" "+room+" "+ev {
					t.Fatalf("%s: SetFullyRead calls %v", tc.name, calls)
				}
				if f.svc.Position() != before {
					t.Fatalf("%s: m.fully_read wrote a receipt", tc.name)
				}
			default:
				if len(calls) != 0 || f.svc.Position() != before {
					t.Fatalf("%s: refused request changed something (calls %v, position %d → %d)", tc.name, calls, before, f.svc.Position())
				}
			}
		}
		if _, ok := f.current(t, alice)["m.read.private "+carol+" "]; ok {
			t.Fatal("alice sees carol's private receipt")
		}
	})
}

func TestReadMarkersEndpoint(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		f := newHTTPFixture(t, db)
		carol := "@carol:" + server
		path := "/rooms/" + url.PathEscape(f.room) + "/read_markers"

		// A bad target refuses the whole request before anything is written.
		body := `{"m.fully_read": "` + f.late + `", "m.read": "` + f.early + `"}`
		if status, code := f.post(t, carol, path, body); status != 404 || code != "M_NOT_FOUND" {
			t.Fatalf("invisible m.read: %d %s", status, code)
		}
		if calls := f.fr.take(); len(calls) != 0 || f.svc.Position() != 0 {
			t.Fatalf("refused request wrote: calls %v, position %d", calls, f.svc.Position())
		}

		body = `{"m.fully_read": "` + f.late + `", "m.read": "` + f.late + `", "m.read.private": "` + f.late + `", "m.hidden": "x"}`
		if status, code := f.post(t, carol, path, body); status != 200 {
			t.Fatalf("all three markers: %d %s", status, code)
		}
		if calls := f.fr.take(); len(calls) != 1 || calls[0] != carol+" "+f.room+" "+f.late {
			t.Fatalf("SetFullyRead calls %v", calls)
		}
		cur := f.current(t, carol)
		if cur["m.read "+carol+" "] != f.late || cur["m.read.private "+carol+" "] != f.late {
			t.Fatalf("receipts after read_markers: %v", cur)
		}

		for _, tc := range []struct {
			name, user, body string
			status           int
			errcode          string
		}{
			{"nothing to do", carol, `{}`, 200, ""},
			{"marker not a string", carol, `{"m.read": 5}`, 400, "M_BAD_JSON"},
			{"not json", carol, `{`, 400, "M_NOT_JSON"},
			{"not joined", bob, `{"m.read": "` + f.late + `"}`, 403, "M_FORBIDDEN"},
			{"event of another room", carol, `{"m.fully_read": "` + f.other + `"}`, 404, "M_NOT_FOUND"},
		} {
			before := f.svc.Position()
			if status, code := f.post(t, tc.user, path, tc.body); status != tc.status || code != tc.errcode {
				t.Fatalf("%s: got %d %s, want %d %s", tc.name, status, code, tc.status, tc.errcode)
			}
			if calls := f.fr.take(); len(calls) != 0 || f.svc.Position() != before {
				t.Fatalf("%s: wrote something (calls %v)", tc.name, calls)
			}
		}
	})
}
