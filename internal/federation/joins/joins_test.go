package joins_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"

	"ganglion/internal/accounts"
	"ganglion/internal/events"
	"ganglion/internal/federation/client"
	"ganglion/internal/federation/inbound"
	"ganglion/internal/federation/joins"
	"ganglion/internal/federation/xmatrix"
	"ganglion/internal/mxhttp"
	"ganglion/internal/rooms"
	"ganglion/internal/storage"
	"ganglion/internal/storage/storagetest"
	"ganglion/internal/streams"
)

const (
	local  = "local.test"
	remote = "remote.test"
)

var (
	bob = "@bob:" + local
	ann = "@ann:" + remote
	zed = "@zed:" + remote
)

func ptr(s string) *string { return &s }

func raw(v any) json.RawMessage {
	b, _ := json.Marshal(v)
	return b
}

type keys map[string]ed25519.PublicKey // "server|key id"

func (k keys) VerifyKey(_ context.Context, srv, keyID string, _ int64) (ed25519.PublicKey, error) {
	if pub, ok := k[srv+"|"+keyID]; ok {
		return pub, nil
	}
	return nil, fmt.Errorf("no key %s of %s", keyID, srv)
}

type knownUsers map[string]bool

func (k knownUsers) KnownUser(_ context.Context, userID string) (bool, error) { return k[userID], nil }

type profiles struct{}

func (profiles) GetProfile(context.Context, string) (*accounts.Profile, error) { return nil, nil }

// recorder stands for a persister's remote-event path.
type recorder struct {
	mu      sync.Mutex
	batches []rooms.RemoteBatch
}

func (w *recorder) PersistRemote(_ context.Context, _ string, b rooms.RemoteBatch) ([]rooms.RemoteResult, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.batches = append(w.batches, b)
	var out []rooms.RemoteResult
	for range b.Outliers {
		out = append(out, rooms.RemoteResult{Outcome: rooms.RemoteOutlier})
	}
	for range b.PDUs {
		out = append(out, rooms.RemoteResult{Outcome: rooms.RemotePersisted, StreamPos: 1})
	}
	return out, nil
}

func (w *recorder) last(t *testing.T) rooms.RemoteBatch {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.batches) == 0 {
		t.Fatal("nothing persisted")
	}
	return w.batches[len(w.batches)-1]
}

// loopback is a federation client that signs each request as local.test
// and hands it to the named server's handler in-process; unknown servers
// are unreachable. mutate, when set, may change an answer.
type loopback struct {
	servers map[string]http.Handler
	key     events.SigningKey
	mutate  func(path string, answer []byte) []byte
}

func (l *loopback) do(method, dest, path string, body, out any) error {
	h, ok := l.servers[dest]
	if !ok {
		return fmt.Errorf("dial %s: connection refused", dest)
	}
	var content []byte
	if body != nil {
		content, _ = json.Marshal(body)
	}
	params, err := xmatrix.Sign(xmatrix.Request{Method: method, URI: path, Origin: local, Destination: dest, Content: content}, l.key)
	if err != nil {
		return err
	}
	req := httptest.NewRequest(method, path, bytes.NewReader(content))
	req.Header.Set("Authorization", params.Format())
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code/100 != 2 {
		var e struct {
			Errcode string `json:"errcode"`
			Error   string `json:"error"`
		}
		_ = json.Unmarshal(rec.Body.Bytes(), &e)
		return &client.HTTPError{Destination: dest, Status: rec.Code, Errcode: e.Errcode, Message: e.Error}
	}
	answer := rec.Body.Bytes()
	if l.mutate != nil {
		answer = l.mutate(path, answer)
	}
	return json.Unmarshal(answer, out)
}

func (l *loopback) SignedGetJSON(_ context.Context, dest, path string, out any) error {
	return l.do("GET", dest, path, nil, out)
}

func (l *loopback) SignedPutJSON(_ context.Context, dest, path string, body, out any) error {
	return l.do("PUT", dest, path, body, out)
}

// world is two servers on one database: remote.test, a real resident
// server (rooms and the inbound membership endpoints, its remote-event
// writer a recorder), and local.test, whose Joiner is under test (its
// writer a recorder too).
type world struct {
	t                *testing.T
	db               *storage.DB
	pRemote, pLocal  *rooms.Persister
	wRemote, wLocal  *recorder
	kRemote, kLocal  events.SigningKey
	net              *loopback
	joiner           *joins.Joiner
	rooms            map[string]string
	remoteSvc, local *rooms.Service
}

func mustKey(t *testing.T) events.SigningKey {
	t.Helper()
	k, err := events.GenerateSigningKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func newWorld(t *testing.T, db *storage.DB) *world {
	t.Helper()
	ctx := t.Context()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	w := &world{t: t, db: db, wRemote: &recorder{}, wLocal: &recorder{}, kRemote: mustKey(t), kLocal: mustKey(t), rooms: map[string]string{}}
	finder := keys{remote + "|" + w.kRemote.ID: w.kRemote.Public(), local + "|" + w.kLocal.ID: w.kLocal.Public()}
	newSide := func(name string, key events.SigningKey) (*rooms.Persister, *rooms.Service) {
		reg, err := streams.NewRegistry("main", streams.AllDefs(), nil, streams.NewNotifier())
		if err != nil {
			t.Fatal(err)
		}
		p, err := rooms.NewPersister(ctx, db, reg, name, key, log)
		if err != nil {
			t.Fatal(err)
		}
		return p, rooms.NewService(rooms.Config{ServerName: name}, rooms.NewStore(db), p, nil, reg, nil, log)
	}
	w.pRemote, w.remoteSvc = newSide(remote, w.kRemote)
	w.pLocal, w.local = newSide(local, w.kLocal)
	mux := mxhttp.NewMux()
	inbound.New(inbound.Config{ServerName: remote}, w.remoteSvc, profiles{}, log).
		WithMembership(inbound.Membership{Key: w.kRemote, Keys: finder, Writer: w.wRemote, DB: db, Users: knownUsers{zed: true}}).
		Routes(mux, mxhttp.NewServer(log), &xmatrix.Authenticator{ServerName: remote, Keys: finder, Log: log})
	w.net = &loopback{servers: map[string]http.Handler{remote: mux}, key: w.kLocal}
	w.joiner = joins.New(joins.Options{ServerName: local, Key: w.kLocal, Now: func() time.Time { return time.UnixMilli(1_700_000_001_000) }},
		w.net, finder, w.local, w.wLocal, log)
	return w
}

// remoteRoom creates a room on remote.test with ann in it.
func (w *world) remoteRoom(name, joinRule string) string {
	return w.remoteRoomOf("10", name, joinRule)
}

func (w *world) remoteRoomOf(version, name, joinRule string) string {
	w.t.Helper()
	id := "!" + name + ":" + remote
	w.rooms[name] = id
	w.send(w.pRemote, id,
		rooms.Draft{Type: "m.room.create", StateKey: ptr(""), Sender: ann, RoomVersion: version,
			Content: raw(map[string]any{"creator": ann, "room_version": version})},
		rooms.Draft{Type: "m.room.member", StateKey: ptr(ann), Sender: ann, Content: raw(map[string]any{"membership": "join"})},
		rooms.Draft{Type: "m.room.power_levels", StateKey: ptr(""), Sender: ann, Content: raw(map[string]any{"users": map[string]int{ann: 100}})},
		rooms.Draft{Type: "m.room.join_rules", StateKey: ptr(""), Sender: ann, Content: raw(map[string]any{"join_rule": joinRule})},
		rooms.Draft{Type: "m.room.name", StateKey: ptr(""), Sender: ann, Content: raw(map[string]any{"name": name})})
	return id
}

func (w *world) send(p *rooms.Persister, roomID string, drafts ...rooms.Draft) []rooms.Persisted {
	w.t.Helper()
	res, err := p.SendEvents(w.t.Context(), roomID, drafts)
	if err != nil {
		w.t.Fatalf("send to %s: %v", roomID, err)
	}
	return res
}

func parse(t *testing.T, b []byte) *events.Event {
	t.Helper()
	rv, _ := events.LookupRoomVersion("10")
	ev, err := events.Parse(b, rv)
	if err != nil {
		t.Fatalf("parse %s: %v", b, err)
	}
	return ev
}

func wantErr(t *testing.T, what string, err error, status int, code string) {
	t.Helper()
	var me *mxhttp.Error
	if !errors.As(err, &me) || me.Status != status || me.Code != code {
		t.Errorf("%s: got %v, want %d %s", what, err, status, code)
	}
}

func TestFederationRemoteJoin(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		w := newWorld(t, db)
		room := w.remoteRoom("pub", "public")
		ctx := t.Context()

		// The first server is unreachable; the next one is resident.
		id, err := w.joiner.Join(ctx, bob, room, []string{"down.test", remote}, raw(map[string]any{"membership": "join", "displayname": "Bob"}))
		if err != nil {
			t.Fatalf("join: %v", err)
		}
		b := w.wLocal.last(t)
		if b.RoomVersion != "10" || len(b.PDUs) != 1 {
			t.Fatalf("persisted %+v", b)
		}
		join := parse(t, b.PDUs[0].Event)
		if join.EventID() != id || join.Sender() != bob || join.Membership() != "join" || join.RoomID() != room {
			t.Errorf("persisted join %s", join.JSON())
		}
		var c struct {
			DisplayName string `json:"displayname"`
		}
		if json.Unmarshal(join.Content(), &c); c.DisplayName != "Bob" {
			t.Errorf("join content %s lacks the display name", join.Content())
		}
		if err := events.VerifyEventSignature(join, local, w.kLocal.ID, w.kLocal.Public()); err != nil {
			t.Errorf("join not signed by us: %v", err)
		}
		// The state before the join: create, ann, power levels, join
		// rules, name; all of them outliers with their auth chain.
		outliers := map[string]string{}
		for _, o := range b.Outliers {
			ev := parse(t, o)
			outliers[ev.EventID()] = ev.Type()
		}
		var stateTypes []string
		for _, sid := range b.PDUs[0].StateBefore {
			typ, ok := outliers[sid]
			if !ok {
				t.Errorf("state event %s is not among the outliers", sid)
			}
			stateTypes = append(stateTypes, typ)
		}
		slices.Sort(stateTypes)
		if want := []string{"m.room.create", "m.room.join_rules", "m.room.member", "m.room.name", "m.room.power_levels"}; !slices.Equal(stateTypes, want) {
			t.Errorf("state before the join %v, want %v", stateTypes, want)
		}
		// The resident server took the join, and will relay it.
		if got := parse(t, w.wRemote.last(t).PDUs[0].Event); got.EventID() != id {
			t.Errorf("the resident server persisted %s, want the join %s", got.EventID(), id)
		}

		// Refusals pass through with their errcode.
		inv := w.remoteRoom("private", "invite")
		_, err = w.joiner.Join(ctx, bob, inv, []string{remote}, raw(map[string]any{"membership": "join"}))
		wantErr(t, "join of an invite-only room", err, 403, "M_FORBIDDEN")
		_, err = w.joiner.Join(ctx, bob, "!nowhere:"+remote, []string{remote}, raw(map[string]any{"membership": "join"}))
		wantErr(t, "join of an unknown room", err, 404, "M_NOT_FOUND")
		_, err = w.joiner.Join(ctx, bob, room, []string{"down.test"}, raw(map[string]any{"membership": "join"}))
		wantErr(t, "join through unreachable servers only", err, 502, "M_UNKNOWN")

		// A state event whose signature does not verify is dropped; a
		// create event dropped makes the answer unusable.
		w.net.mutate = func(path string, answer []byte) []byte {
			var a map[string]json.RawMessage
			if json.Unmarshal(answer, &a) != nil || a["state"] == nil {
				return answer
			}
			var st []map[string]any
			_ = json.Unmarshal(a["state"], &st)
			for _, e := range st {
				if e["type"] == "m.room.create" {
					e["signatures"] = map[string]any{remote: map[string]any{w.kRemote.ID: "AAAA"}}
				}
			}
			a["state"] = raw(st)
			return raw(a)
		}
		room2 := w.remoteRoom("pub2", "public")
		_, err = w.joiner.Join(ctx, bob, room2, []string{remote}, raw(map[string]any{"membership": "join"}))
		wantErr(t, "join whose answer lacks a valid create event", err, 502, "M_UNKNOWN")
	})
}

func TestFederationRemoteInvite(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		w := newWorld(t, db)
		ctx := t.Context()
		home := "!home:" + local
		w.send(w.pLocal, home,
			rooms.Draft{Type: "m.room.create", StateKey: ptr(""), Sender: bob, RoomVersion: "10",
				Content: raw(map[string]any{"creator": bob, "room_version": "10"})},
			rooms.Draft{Type: "m.room.member", StateKey: ptr(bob), Sender: bob, Content: raw(map[string]any{"membership": "join"})},
			rooms.Draft{Type: "m.room.power_levels", StateKey: ptr(""), Sender: bob, Content: raw(map[string]any{"users": map[string]int{bob: 100}})},
			rooms.Draft{Type: "m.room.join_rules", StateKey: ptr(""), Sender: bob, Content: raw(map[string]any{"join_rule": "invite"})},
			rooms.Draft{Type: "m.room.name", StateKey: ptr(""), Sender: bob, Content: raw(map[string]any{"name": "Home"})})

		id, err := w.joiner.Invite(ctx, bob, home, zed, raw(map[string]any{"membership": "invite"}))
		if err != nil {
			t.Fatalf("invite: %v", err)
		}
		b := w.wLocal.last(t)
		if len(b.PDUs) != 1 || b.PDUs[0].OutOfBand {
			t.Fatalf("persisted %+v, want one timeline PDU", b)
		}
		inv := parse(t, b.PDUs[0].Event)
		if inv.EventID() != id || *inv.StateKey() != zed || inv.Sender() != bob {
			t.Errorf("persisted invite %s", inv.JSON())
		}
		for srv, k := range map[string]events.SigningKey{local: w.kLocal, remote: w.kRemote} {
			if err := events.VerifyEventSignature(inv, srv, k.ID, k.Public()); err != nil {
				t.Errorf("the invite lacks %s's signature: %v", srv, err)
			}
		}
		// The invitee's server kept it with the stripped state.
		kept := w.wRemote.last(t)
		var u struct {
			State []struct {
				Type string `json:"type"`
			} `json:"invite_room_state"`
		}
		if len(kept.PDUs) != 1 || !kept.PDUs[0].OutOfBand || json.Unmarshal(parse(t, kept.PDUs[0].Event).Unsigned(), &u) != nil {
			t.Fatalf("the invitee's server kept %+v", kept)
		}
		var types []string
		for _, s := range u.State {
			types = append(types, s.Type)
		}
		slices.Sort(types)
		if want := []string{"m.room.create", "m.room.join_rules", "m.room.name"}; !slices.Equal(types, want) {
			t.Errorf("invite_room_state %v, want %v", types, want)
		}

		_, err = w.joiner.Invite(ctx, bob, home, "@nobody:"+remote, raw(map[string]any{"membership": "invite"}))
		wantErr(t, "invite of an unknown remote user", err, 404, "M_NOT_FOUND")
		// An invitee's server that answers without signing is refused.
		w.net.mutate = func(path string, answer []byte) []byte {
			var a struct {
				Event map[string]any `json:"event"`
			}
			_ = json.Unmarshal(answer, &a)
			delete(a.Event["signatures"].(map[string]any), remote)
			return raw(a)
		}
		_, err = w.joiner.Invite(ctx, bob, home, zed, raw(map[string]any{"membership": "invite"}))
		wantErr(t, "invite the invitee's server did not sign", err, 502, "M_UNKNOWN")
	})
}

func TestFederationRemoteLeaveKnockAndAlias(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		w := newWorld(t, db)
		ctx := t.Context()
		room := w.remoteRoom("pub", "invite")
		w.send(w.pRemote, room, rooms.Draft{Type: "m.room.member", StateKey: ptr(bob), Sender: ann, Content: raw(map[string]any{"membership": "invite"})})

		// Rejecting the invite.
		id, err := w.joiner.Leave(ctx, bob, room, []string{remote}, raw(map[string]any{"membership": "leave", "reason": "no"}))
		if err != nil {
			t.Fatalf("leave: %v", err)
		}
		b := w.wLocal.last(t)
		leave := parse(t, b.PDUs[0].Event)
		if !b.PDUs[0].OutOfBand || b.RoomVersion != "10" || leave.EventID() != id || leave.Membership() != "leave" {
			t.Errorf("persisted %+v (%s)", b, leave.JSON())
		}

		knockRoom := w.remoteRoom("knocky", "knock")
		id, err = w.joiner.Knock(ctx, bob, knockRoom, []string{remote}, raw(map[string]any{"membership": "knock"}))
		if err != nil {
			t.Fatalf("knock: %v", err)
		}
		b = w.wLocal.last(t)
		knock := parse(t, b.PDUs[0].Event)
		var u struct {
			State []json.RawMessage `json:"knock_room_state"`
		}
		if !b.PDUs[0].OutOfBand || knock.EventID() != id || knock.Membership() != "knock" ||
			json.Unmarshal(knock.Unsigned(), &u) != nil || len(u.State) != 3 {
			t.Errorf("persisted knock %s", knock.JSON())
		}
		_, err = w.joiner.Knock(ctx, bob, room, []string{remote}, raw(map[string]any{"membership": "knock"}))
		wantErr(t, "knock on an invite-only room", err, 403, "M_FORBIDDEN")

		if _, err := db.Exec(ctx, `INSERT INTO room_aliases (alias, room_id, creator, created_ts) VALUES ($1, $2, $3, 0)`,
			"#pub:"+remote, room, ann); err != nil {
			t.Fatal(err)
		}
		got, servers, err := w.joiner.QueryAlias(ctx, "#pub:"+remote)
		if err != nil || got != room || !slices.Contains(servers, remote) {
			t.Errorf("alias: %s %v %v", got, servers, err)
		}
		_, _, err = w.joiner.QueryAlias(ctx, "#none:"+remote)
		wantErr(t, "unknown remote alias", err, 404, "M_NOT_FOUND")
	})
}

// Room version 12: the room id is the create event's hash, and the create
// event is implied rather than listed in auth_events.
func TestFederationRemoteJoinRoomVersion12(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		w := newWorld(t, db)
		ctx := t.Context()
		rv, _ := events.LookupRoomVersion("12")
		create := rooms.Draft{Type: "m.room.create", StateKey: ptr(""), Sender: ann, RoomVersion: "12",
			Content: raw(map[string]any{"room_version": "12"}), OriginServerTS: 1_700_000_000_000}
		cid, err := events.EventIDOf(events.ProtoEvent{Sender: ann, Type: create.Type, StateKey: create.StateKey, Content: create.Content,
			PrevEvents: []string{}, AuthEvents: []string{}, Depth: 1, OriginServerTS: create.OriginServerTS}, rv)
		if err != nil {
			t.Fatal(err)
		}
		room := "!" + cid[1:]
		w.send(w.pRemote, room, create,
			rooms.Draft{Type: "m.room.member", StateKey: ptr(ann), Sender: ann, Content: raw(map[string]any{"membership": "join"})},
			rooms.Draft{Type: "m.room.power_levels", StateKey: ptr(""), Sender: ann, Content: raw(map[string]any{})},
			rooms.Draft{Type: "m.room.join_rules", StateKey: ptr(""), Sender: ann, Content: raw(map[string]any{"join_rule": "public"})})

		id, err := w.joiner.Join(ctx, bob, room, []string{remote}, raw(map[string]any{"membership": "join"}))
		if err != nil {
			t.Fatalf("join: %v", err)
		}
		b := w.wLocal.last(t)
		if b.RoomVersion != "12" {
			t.Errorf("room version %q", b.RoomVersion)
		}
		join, err := events.Parse(b.PDUs[0].Event, rv)
		if err != nil || join.EventID() != id {
			t.Fatalf("persisted join: %v", err)
		}
		if slices.Contains(join.AuthEventIDs(), cid) {
			t.Errorf("a v12 join lists the create event in auth_events: %v", join.AuthEventIDs())
		}
		if !slices.Contains(b.PDUs[0].StateBefore, cid) {
			t.Errorf("state before the join %v lacks the create event", b.PDUs[0].StateBefore)
		}
	})
}

// Room version 1: references are [id, hashes] pairs and ids name their
// server.
func TestFederationRemoteJoinRoomVersion1(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		w := newWorld(t, db)
		room := w.remoteRoomOf("1", "old", "public")
		id, err := w.joiner.Join(t.Context(), bob, room, []string{remote}, raw(map[string]any{"membership": "join"}))
		if err != nil {
			t.Fatalf("join: %v", err)
		}
		rv, _ := events.LookupRoomVersion("1")
		b := w.wLocal.last(t)
		join, err := events.Parse(b.PDUs[0].Event, rv)
		if err != nil || join.EventID() != id || b.RoomVersion != "1" {
			t.Fatalf("persisted %s (%v)", b.PDUs[0].Event, err)
		}
		if len(join.PrevEventIDs()) != 1 || len(join.AuthEventIDs()) != 3 || len(b.PDUs[0].StateBefore) != 5 {
			t.Errorf("join refs prev %v auth %v, state %v", join.PrevEventIDs(), join.AuthEventIDs(), b.PDUs[0].StateBefore)
		}
	})
}
