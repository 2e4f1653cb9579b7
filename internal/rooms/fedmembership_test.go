package rooms_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"

	"ganglion/internal/accounts"
	"ganglion/internal/events"
	"ganglion/internal/mxhttp"
	"ganglion/internal/ratelimit"
	"ganglion/internal/rooms"
	"ganglion/internal/storage"
	"ganglion/internal/storage/storagetest"
	"ganglion/internal/streams"
)

// fakeRemote records the handshakes the room endpoints ask for.
type fakeRemote struct {
	mu    sync.Mutex
	calls []string // "kind user room servers content"
}

func (f *fakeRemote) record(kind, user, room string, servers []string, content json.RawMessage) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var c map[string]any
	_ = json.Unmarshal(content, &c)
	f.calls = append(f.calls, kind+" "+user+" "+room+" "+strings.Join(servers, ",")+" "+c["membership"].(string))
	return "$" + kind
}

func (f *fakeRemote) Join(_ context.Context, userID, roomID string, servers []string, content json.RawMessage) (string, error) {
	return f.record("join", userID, roomID, servers, content), nil
}

func (f *fakeRemote) Knock(_ context.Context, userID, roomID string, servers []string, content json.RawMessage) (string, error) {
	return f.record("knock", userID, roomID, servers, content), nil
}

func (f *fakeRemote) Leave(_ context.Context, userID, roomID string, servers []string, content json.RawMessage) (string, error) {
	return f.record("leave", userID, roomID, servers, content), nil
}

func (f *fakeRemote) Invite(_ context.Context, sender, roomID, target string, content json.RawMessage) (string, error) {
	return f.record("invite", sender, roomID, []string{target}, content), nil
}

func (f *fakeRemote) QueryAlias(_ context.Context, alias string) (string, []string, error) {
	if alias == "#far:remote.test" {
		return "!aliased:remote.test", []string{"c.test"}, nil
	}
	return "", nil, mxhttp.NotFound("Room alias %s not found", alias)
}

func (f *fakeRemote) take() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := f.calls
	f.calls = nil
	return out
}

type remoteFixture struct {
	t      *testing.T
	url    string
	token  string
	svc    *rooms.Service
	p      *rooms.Persister
	remote *fakeRemote
}

func newRemoteFixture(t *testing.T, db *storage.DB, withRemote bool) *remoteFixture {
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
	p, err := rooms.NewPersister(ctx, db, reg, server, key, log)
	if err != nil {
		t.Fatal(err)
	}
	svc := rooms.NewService(rooms.Config{ServerName: server}, rooms.NewStore(db), p, acc, reg, ratelimit.New(ratelimit.Rule{}, nil), log)
	acc.SetRoomHooks(svc)
	f := &remoteFixture{t: t, svc: svc, p: p, remote: &fakeRemote{}}
	if withRemote {
		svc.SetRemoteMembership(f.remote)
	}
	sess, err := acc.Register(ctx, accounts.NewUser{Localpart: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	f.token = sess.AccessToken
	mux := mxhttp.NewMux()
	svc.Routes(mux, mxhttp.NewServer(log), acc, false)
	ts := httptest.NewServer(mux.ServeMux)
	t.Cleanup(ts.Close)
	f.url = ts.URL
	return f
}

func (f *remoteFixture) post(path, body string) (int, map[string]any) {
	f.t.Helper()
	req, err := http.NewRequestWithContext(ctxT(f.t), "POST", f.url+"/_matrix/client/v3"+path, strings.NewReader(body))
	if err != nil {
		f.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+f.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		f.t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

func TestFederationClientMembershipGoesRemoteOnlyWhenNeeded(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		f := newRemoteFixture(t, db, true)
		alice := "@alice:" + server
		ctx := ctxT(t)

		// A room we do not know: through via, server_name and the room
		// id's server, in that order.
		code, body := f.post("/join/"+url.PathEscape("!far:remote.test")+"?via=a.test&server_name=b.test&via="+server, `{"displayname":"Al"}`)
		if code != 200 || body["room_id"] != "!far:remote.test" {
			t.Fatalf("join: %d %v", code, body)
		}
		want := []string{"join " + alice + " !far:remote.test a.test,b.test,remote.test join"}
		if got := f.remote.take(); !slices.Equal(got, want) {
			t.Errorf("calls %v, want %v", got, want)
		}
		// A remote alias: its servers, then the room id's.
		code, body = f.post("/join/"+url.PathEscape("#far:remote.test"), `{}`)
		if code != 200 || body["room_id"] != "!aliased:remote.test" {
			t.Fatalf("join by alias: %d %v", code, body)
		}
		want = []string{"join " + alice + " !aliased:remote.test c.test,remote.test join"}
		if got := f.remote.take(); !slices.Equal(got, want) {
			t.Errorf("calls %v, want %v", got, want)
		}
		code, body = f.post("/join/"+url.PathEscape("#nope:remote.test"), `{}`)
		if code != 404 || body["errcode"] != "M_NOT_FOUND" {
			t.Errorf("join by an unknown remote alias: %d %v", code, body)
		}
		code, _ = f.post("/knock/"+url.PathEscape("!knocky:remote.test")+"?via=k.test", `{"reason":"hi"}`)
		want = []string{"knock " + alice + " !knocky:remote.test k.test,remote.test knock"}
		if got := f.remote.take(); code != 200 || !slices.Equal(got, want) {
			t.Errorf("knock: %d, calls %v, want %v", code, got, want)
		}

		// A local room alice is in: everything stays local, but inviting
		// a remote user goes through the invitee's server.
		room, err := f.svc.CreateRoom(ctx, &accounts.Requester{UserID: alice}, rooms.CreateRoomRequest{Preset: "public_chat"})
		if err != nil {
			t.Fatal(err)
		}
		if code, body = f.post("/rooms/"+url.PathEscape(room)+"/join", `{}`); code != 200 {
			t.Errorf("local join: %d %v", code, body)
		}
		if code, body = f.post("/rooms/"+url.PathEscape(room)+"/invite", `{"user_id":"@zed:remote.test"}`); code != 200 {
			t.Errorf("remote invite: %d %v", code, body)
		}
		want = []string{"invite " + alice + " " + room + " @zed:remote.test invite"}
		if got := f.remote.take(); !slices.Equal(got, want) {
			t.Errorf("calls %v, want %v", got, want)
		}

		// A room known only through an invite from ann@remote.test
		// (stored as the persister's remote path will): rejecting it goes
		// through the inviter's server; joining it too.
		ann := "@ann:remote.test"
		far := "!known:remote.test"
		if _, err := f.p.SendEvents(ctx, far, append(createDrafts(ann, "10"),
			rooms.Draft{Type: "m.room.member", StateKey: ptr(alice), Sender: ann, Content: raw(map[string]any{"membership": "invite"})})); err != nil {
			t.Fatal(err)
		}
		if code, body = f.post("/rooms/"+url.PathEscape(far)+"/join", `{}`); code != 200 {
			t.Errorf("join of a room known through an invite: %d %v", code, body)
		}
		if code, body = f.post("/rooms/"+url.PathEscape(far)+"/leave", `{}`); code != 200 {
			t.Errorf("reject: %d %v", code, body)
		}
		want = []string{"join " + alice + " " + far + " remote.test join", "leave " + alice + " " + far + " remote.test leave"}
		if got := f.remote.take(); !slices.Equal(got, want) {
			t.Errorf("calls %v, want %v", got, want)
		}
	})
}

func TestFederationClientMembershipWithoutFederation(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		f := newRemoteFixture(t, db, false)
		code, body := f.post("/join/"+url.PathEscape("!far:remote.test")+"?via=a.test", `{}`)
		if code != 404 || body["errcode"] != "M_NOT_FOUND" {
			t.Errorf("join of an unknown room without federation: %d %v", code, body)
		}
		room, err := f.svc.CreateRoom(ctxT(t), &accounts.Requester{UserID: "@alice:" + server}, rooms.CreateRoomRequest{Preset: "public_chat"})
		if err != nil {
			t.Fatal(err)
		}
		code, body = f.post("/rooms/"+url.PathEscape(room)+"/invite", `{"user_id":"@zed:remote.test"}`)
		if code != 403 || body["errcode"] != "M_FORBIDDEN" {
			t.Errorf("remote invite without federation: %d %v", code, body)
		}
		if len(f.remote.take()) != 0 {
			t.Error("the remote path was used")
		}
	})
}

// rc_joins.remote limits joins through other servers per user.
func TestFederationClientRemoteJoinsAreRateLimited(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		f := newRemoteFixture(t, db, true)
		f.svc.SetLimits(rooms.Limits{JoinsRemote: ratelimit.New(ratelimit.Rule{PerSecond: 0.001, BurstCount: 1}, nil)})
		if code, body := f.post("/join/"+url.PathEscape("!one:remote.test"), `{}`); code != 200 {
			t.Fatalf("first remote join: %d %v", code, body)
		}
		code, body := f.post("/join/"+url.PathEscape("!two:remote.test"), `{}`)
		if code != 429 || body["errcode"] != "M_LIMIT_EXCEEDED" {
			t.Errorf("second remote join: %d %v, want 429 M_LIMIT_EXCEEDED", code, body)
		}
		if got := f.remote.take(); len(got) != 1 {
			t.Errorf("remote joins attempted: %v, want only the first", got)
		}
	})
}
