package typing_test

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"

	"ganglion/internal/accounts"
	"ganglion/internal/events"
	"ganglion/internal/mxhttp"
	"ganglion/internal/ratelimit"
	"ganglion/internal/rooms"
	"ganglion/internal/storage"
	"ganglion/internal/storage/storagetest"
	"ganglion/internal/streams"
	"ganglion/internal/typing"
)

const server = "test.local"

// httpFixture is the smallest process that serves the typing endpoint:
// accounts for tokens, rooms for membership, and the typing writer.
type httpFixture struct {
	url    string
	svc    *typing.Service
	room   string
	tokens map[string]string // user id → access token
}

func newHTTPFixture(t *testing.T, db *storage.DB) *httpFixture {
	t.Helper()
	ctx := ctxT(t)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	reg, err := streams.NewRegistry("main", streams.AllDefs(), nil, streams.NewNotifier())
	if err != nil {
		t.Fatal(err)
	}
	acc := accounts.NewService(db, accounts.Settings{ServerName: server, EnableRegistration: true,
		RegistrationWithoutVerify: true, BcryptRounds: 4}, log)
	key, err := events.GenerateSigningKey()
	if err != nil {
		t.Fatal(err)
	}
	persister, err := rooms.NewPersister(ctx, db, reg, server, key, log)
	if err != nil {
		t.Fatal(err)
	}
	store := rooms.NewStore(db)
	roomSvc := rooms.NewService(rooms.Config{ServerName: server}, store, persister, acc, reg, ratelimit.New(ratelimit.Rule{}, nil), log)
	acc.SetRoomHooks(roomSvc)

	f := &httpFixture{tokens: map[string]string{}}
	for _, local := range []string{"alice", "bob", "carol"} {
		sess, err := acc.Register(ctx, accounts.NewUser{Localpart: local})
		if err != nil {
			t.Fatal(err)
		}
		f.tokens[sess.UserID] = sess.AccessToken
	}
	aliceID, bobID := "@alice:"+server, "@bob:"+server
	f.room, err = roomSvc.CreateRoom(ctx, &accounts.Requester{UserID: aliceID}, rooms.CreateRoomRequest{Preset: "public_chat"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := roomSvc.ChangeMembership(ctx, &accounts.Requester{UserID: bobID}, f.room,
		rooms.MembershipChange{Target: bobID, Membership: "join"}); err != nil {
		t.Fatal(err)
	}

	f.svc, err = typing.NewService(reg, typing.Options{}, log)
	if err != nil {
		t.Fatal(err)
	}
	mux := mxhttp.NewMux()
	typing.NewHandlers(f.svc, store).Routes(mux, mxhttp.NewServer(log), acc)
	// Served by the embedded stdlib mux: mxhttp.Mux.ServeHTTP dispatches
	// through ServeMux.Handler, which does not fill r.PathValue (reported
	// to the lead); the stdlib mux is the same routing table with values.
	ts := httptest.NewServer(mux.ServeMux)
	t.Cleanup(ts.Close)
	f.url = ts.URL
	return f
}

// put sends PUT /rooms/{room}/typing/{target} as user and returns the
// status and errcode.
func (f *httpFixture) put(t *testing.T, user, roomID, target, body string) (int, string) {
	t.Helper()
	u := f.url + "/_matrix/client/v3/rooms/" + url.PathEscape(roomID) + "/typing/" + url.PathEscape(target)
	req, err := http.NewRequestWithContext(ctxT(t), "PUT", u, strings.NewReader(body))
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
		t.Logf("PUT %s as %s: %d %s %s", target, user, resp.StatusCode, out.Errcode, out.Error)
	}
	return resp.StatusCode, out.Errcode
}

func TestTypingEndpoint(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		f := newHTTPFixture(t, db)
		alice, bob, carol := "@alice:"+server, "@bob:"+server, "@carol:"+server
		tests := []struct {
			name         string
			user, target string
			body         string
			status       int
			errcode      string
			typingAfter  []string
			roomOverride string
		}{
			{name: "start", user: alice, target: alice, body: `{"typing": true, "timeout": 30000}`, status: 200,
				typingAfter: []string{alice}},
			{name: "float timeout and no timeout", user: bob, target: bob, body: `{"typing": true, "timeout": 1e4}`, status: 200,
				typingAfter: []string{alice, bob}},
			{name: "stop without timeout", user: alice, target: alice, body: `{"typing": false}`, status: 200,
				typingAfter: []string{bob}},
			{name: "someone else's typing", user: alice, target: bob, body: `{"typing": false}`, status: 403, errcode: "M_FORBIDDEN",
				typingAfter: []string{bob}},
			{name: "not joined", user: carol, target: carol, body: `{"typing": true}`, status: 403, errcode: "M_FORBIDDEN",
				typingAfter: []string{bob}},
			{name: "unknown room", user: alice, target: alice, body: `{"typing": true}`, status: 403, errcode: "M_FORBIDDEN",
				roomOverride: "!nope:" + server},
			{name: "not json", user: alice, target: alice, body: `typing`, status: 400, errcode: "M_NOT_JSON"},
			{name: "not an object", user: alice, target: alice, body: `[true]`, status: 400, errcode: "M_NOT_JSON"},
			{name: "typing missing", user: alice, target: alice, body: `{}`, status: 400, errcode: "M_BAD_JSON"},
			{name: "typing not a bool", user: alice, target: alice, body: `{"typing": "yes"}`, status: 400, errcode: "M_BAD_JSON"},
			{name: "negative timeout", user: alice, target: alice, body: `{"typing": true, "timeout": -5}`, status: 400, errcode: "M_BAD_JSON"},
			{name: "no token", user: "", target: alice, body: `{"typing": true}`, status: 401, errcode: "M_MISSING_TOKEN",
				typingAfter: []string{bob}},
		}
		for _, tc := range tests {
			roomID := f.room
			if tc.roomOverride != "" {
				roomID = tc.roomOverride
			}
			status, code := f.put(t, tc.user, roomID, tc.target, tc.body)
			if status != tc.status || code != tc.errcode {
				t.Fatalf("%s: got %d %s, want %d %s", tc.name, status, code, tc.status, tc.errcode)
			}
			if tc.typingAfter != nil {
				if got := f.svc.Typing(f.room); !slices.Equal(got, tc.typingAfter) {
					t.Fatalf("%s: typing = %v, want %v", tc.name, got, tc.typingAfter)
				}
			}
		}
	})
}
