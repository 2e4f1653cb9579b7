package edus_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"ganglion/internal/accounts"
	"ganglion/internal/events"
	"ganglion/internal/federation/edus"
	"ganglion/internal/federation/inbound"
	"ganglion/internal/keys"
	"ganglion/internal/presence"
	"ganglion/internal/receipts"
	"ganglion/internal/rooms"
	"ganglion/internal/storage"
	"ganglion/internal/storage/storagetest"
	"ganglion/internal/streams"
	"ganglion/internal/todevice"
	"ganglion/internal/typing"
)

const (
	server = "local.test"
	remote = "remote.test"
	other  = "other.test"
)

var (
	alice = "@alice:" + server
	bob   = "@bob:" + remote // joined to the room with alice
	carol = "@carol:" + remote
	// loner shares no room with anyone here.
	loner = "@loner:" + remote
	eve   = "@eve:" + other
)

var discard = slog.New(slog.NewTextHandler(io.Discard, nil))

func raw(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

func ptr(s string) *string { return &s }

// fakeFed is another server's federation API as the signed client reaches
// it: a handler per destination and path (query strings stripped), and a
// count of calls.
type fakeFed struct {
	mu       sync.Mutex
	handlers map[string]func(ctx context.Context, body json.RawMessage) (any, error) // "server path"
	calls    map[string]int
}

func newFakeFed() *fakeFed {
	return &fakeFed{handlers: map[string]func(context.Context, json.RawMessage) (any, error){}, calls: map[string]int{}}
}

func (f *fakeFed) handle(dest, path string, h func(ctx context.Context, body json.RawMessage) (any, error)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.handlers[dest+" "+path] = h
}

func (f *fakeFed) count(dest, path string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[dest+" "+path]
}

func (f *fakeFed) do(ctx context.Context, dest, path string, body, out any) error {
	path, _, _ = strings.Cut(path, "?")
	f.mu.Lock()
	h := f.handlers[dest+" "+path]
	f.calls[dest+" "+path]++
	f.mu.Unlock()
	if h == nil {
		return fmt.Errorf("dial %s: connection refused", dest)
	}
	ans, err := h(ctx, raw(body))
	if err != nil {
		return err
	}
	return json.Unmarshal(raw(ans), out)
}

func (f *fakeFed) SignedGetJSON(ctx context.Context, dest, path string, out any) error {
	return f.do(ctx, dest, path, nil, out)
}

func (f *fakeFed) SignedPostJSON(ctx context.Context, dest, path string, body, out any) error {
	return f.do(ctx, dest, path, body, out)
}

// fixture is one server's writers (all local, as on a monolith), a room
// where alice (local) and bob (remote.test) are joined, and a second one
// with carol (remote.test) alone.
type fixture struct {
	t        *testing.T
	db       *storage.DB
	reg      *streams.Registry
	room     string
	room2    string
	typing   *typing.Service
	receipts *receipts.Service
	td       *todevice.Service
	pres     *presence.LocalWriter
	keys     *keys.Service
	tdw      *todevice.LocalWriter
	kw       *keys.LocalWriter
	store    *rooms.Store
	p        *rooms.Persister
	fed      *fakeFed
	acc      *accounts.Service
	h        *edus.Handlers
}

func newFixture(t *testing.T, db *storage.DB) *fixture {
	t.Helper()
	ctx := t.Context()
	reg, err := streams.NewRegistry("main", streams.AllDefs(), nil, streams.NewNotifier())
	if err != nil {
		t.Fatal(err)
	}
	key, err := events.GenerateSigningKey()
	if err != nil {
		t.Fatal(err)
	}
	p, err := rooms.NewPersister(ctx, db, reg, server, key, discard)
	if err != nil {
		t.Fatal(err)
	}
	store := rooms.NewStore(db)
	f := &fixture{t: t, db: db, reg: reg, room: "!room:" + server, room2: "!room2:" + remote, fed: newFakeFed()}
	send := func(room string, d rooms.Draft) {
		t.Helper()
		if _, err := p.SendEvents(ctx, room, []rooms.Draft{d}); err != nil {
			t.Fatal(err)
		}
	}
	member := func(room, user string) {
		send(room, rooms.Draft{Type: "m.room.member", StateKey: ptr(user), Sender: user, Content: raw(map[string]any{"membership": "join"})})
	}
	for _, r := range []struct{ id, creator string }{{f.room, alice}, {f.room2, carol}} {
		send(r.id, rooms.Draft{Type: "m.room.create", StateKey: ptr(""), Sender: r.creator, RoomVersion: "10",
			Content: raw(map[string]any{"creator": r.creator, "room_version": "10"})})
		member(r.id, r.creator)
		send(r.id, rooms.Draft{Type: "m.room.join_rules", StateKey: ptr(""), Sender: r.creator, Content: raw(map[string]any{"join_rule": "public"})})
	}
	member(f.room, bob)

	f.typing, err = typing.NewService(reg, typing.Options{}, discard)
	if err != nil {
		t.Fatal(err)
	}
	if f.receipts, err = receipts.NewService(ctx, db, reg, discard); err != nil {
		t.Fatal(err)
	}
	tdw, err := todevice.NewLocalWriter(ctx, db, reg, server, discard)
	if err != nil {
		t.Fatal(err)
	}
	f.td = todevice.NewService(db, reg, tdw, discard)
	if f.pres, err = presence.NewLocalWriter(ctx, db, reg, store, presence.WriterOptions{ServerName: server}, discard); err != nil {
		t.Fatal(err)
	}
	kw, err := keys.NewLocalWriter(ctx, db, reg, discard)
	if err != nil {
		t.Fatal(err)
	}
	f.keys = keys.NewService(db, reg, kw, server, discard)
	f.tdw, f.kw, f.store, f.p = tdw, kw, store, p
	f.keys.SetFederation(f.fed)
	f.acc = accounts.NewService(db, accounts.Settings{ServerName: server, BcryptRounds: 4}, discard)
	for _, d := range []string{"PHONE", "LAPTOP"} {
		if d == "PHONE" {
			if _, err := f.acc.Register(ctx, accounts.NewUser{Localpart: "alice", DeviceID: d}); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if _, err := f.acc.CreateSession(ctx, alice, d, "", false); err != nil {
			t.Fatal(err)
		}
	}
	f.h = edus.New(edus.Options{ServerName: server}, edus.Deps{Typing: f.typing, Receipts: f.receipts, Presence: f.pres,
		ToDevice: tdw, Keys: f.keys, Rooms: store}, discard)
	return f
}

// registrar records the handlers Register installs.
type registrar map[string]inbound.EDUHandler

func (r registrar) HandleEDU(t string, h inbound.EDUHandler) { r[t] = h }

// handlers are the fixture's handlers as /send will find them.
func (f *fixture) handlers() registrar {
	r := registrar{}
	f.h.Register(r)
	return r
}

func (f *fixture) edu(origin, typ string, content any) error {
	f.t.Helper()
	h := f.handlers()[typ]
	if h == nil {
		f.t.Fatalf("no handler for %s", typ)
	}
	return h(f.t.Context(), origin, raw(content))
}

func wantWrongOrigin(t *testing.T, what string, err error) {
	t.Helper()
	if !errors.Is(err, edus.ErrWrongOrigin) {
		t.Errorf("%s: got %v, want ErrWrongOrigin", what, err)
	}
}

// Register installs every EDU type; m.presence only when presence is on
// (the process passes no presence writer with presence.enabled: false).
func TestFederationEDURegister(t *testing.T) {
	all := registrar{}
	edus.New(edus.Options{ServerName: server}, edus.Deps{Presence: &presence.LocalWriter{}}, discard).Register(all)
	for _, typ := range []string{edus.Typing, edus.Receipt, edus.Presence, edus.DirectToDevice, edus.DeviceList, edus.SigningKey} {
		if all[typ] == nil {
			t.Errorf("no handler for %s", typ)
		}
	}
	off := registrar{}
	edus.New(edus.Options{ServerName: server}, edus.Deps{}, discard).Register(off)
	if off[edus.Presence] != nil || off[edus.Typing] == nil {
		t.Errorf("presence disabled: handlers %v", off)
	}
	// The inbound server takes the handlers (fedsend's /send dispatches to
	// them).
	var s inbound.Server
	edus.New(edus.Options{ServerName: server}, edus.Deps{}, discard).Register(&s)
}

func TestFederationEDUTyping(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		f := newFixture(t, db)
		before := f.typing.Position()
		if err := f.edu(remote, edus.Typing, map[string]any{"room_id": f.room, "user_id": bob, "typing": true}); err != nil {
			t.Fatal(err)
		}
		if got := f.typing.Typing(f.room); !slices.Equal(got, []string{bob}) {
			t.Fatalf("typers %v, want bob", got)
		}
		// What local syncs read: the room changed on the typing stream.
		if changed := f.typing.ChangedRooms(before, f.typing.Position()); !slices.Contains(changed, f.room) {
			t.Fatalf("changed rooms %v", changed)
		}
		// Another server cannot speak for bob; bob is not in room2.
		wantWrongOrigin(t, "typing for bob from other.test", f.edu(other, edus.Typing, map[string]any{"room_id": f.room, "user_id": bob, "typing": false}))
		if err := f.edu(remote, edus.Typing, map[string]any{"room_id": f.room2, "user_id": bob, "typing": true}); err == nil {
			t.Fatal("typing in a room bob is not in was taken")
		}
		if err := f.edu(remote, edus.Typing, map[string]any{"room_id": f.room, "user_id": bob, "typing": false}); err != nil {
			t.Fatal(err)
		}
		if got := f.typing.Typing(f.room); len(got) != 0 || len(f.typing.Typing(f.room2)) != 0 {
			t.Fatalf("typers after stop %v", got)
		}
	})
}

func TestFederationEDUReceipt(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		f := newFixture(t, db)
		content := map[string]any{f.room: map[string]any{
			"m.read":         map[string]any{bob: map[string]any{"event_ids": []string{"$main"}, "data": map[string]any{"ts": 1234}}},
			"m.read.private": map[string]any{bob: map[string]any{"event_ids": []string{"$private"}, "data": map[string]any{"ts": 1}}},
		}}
		if err := f.edu(remote, edus.Receipt, content); err != nil {
			t.Fatal(err)
		}
		threaded := map[string]any{f.room: map[string]any{"m.read": map[string]any{
			bob: map[string]any{"event_ids": []string{"$inthread"}, "data": map[string]any{"ts": 1300, "thread_id": "$root"}}}}}
		if err := f.edu(remote, edus.Receipt, threaded); err != nil {
			t.Fatal(err)
		}
		// From another server, for bob or for a local user: refused.
		wantWrongOrigin(t, "receipt for bob from other.test", f.edu(other, edus.Receipt, map[string]any{f.room: map[string]any{
			"m.read": map[string]any{bob: map[string]any{"event_ids": []string{"$forged"}, "data": map[string]any{}}}}}))
		wantWrongOrigin(t, "receipt for alice from remote.test", f.edu(remote, edus.Receipt, map[string]any{f.room: map[string]any{
			"m.read": map[string]any{alice: map[string]any{"event_ids": []string{"$forged"}, "data": map[string]any{}}}}}))
		rows, err := receipts.NewStore(db).Rows(t.Context(), 0, f.receipts.Position(), 100)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, r := range rows {
			got = append(got, r.Type+" "+r.UserID+" "+r.EventID+" "+r.ThreadID+" "+string(r.Data))
		}
		want := []string{"m.read " + bob + " $main  {\"ts\":1234}", "m.read " + bob + " $inthread $root {\"ts\":1300}"}
		if !slices.Equal(got, want) {
			t.Fatalf("receipts\n got %q\nwant %q", got, want)
		}
	})
}

func TestFederationEDUPresence(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		f := newFixture(t, db)
		before := f.pres.Position()
		err := f.edu(remote, edus.Presence, map[string]any{"push": []any{
			map[string]any{"user_id": bob, "presence": "online", "status_msg": "busy", "last_active_ago": 5000, "currently_active": true},
			map[string]any{"user_id": alice, "presence": "offline", "last_active_ago": 0},
		}})
		wantWrongOrigin(t, "presence for alice from remote.test", err)
		if f.pres.Position() <= before {
			t.Fatal("bob's presence wrote no stream row")
		}
		var state, msg string
		var active bool
		if err := db.Reader().QueryRowContext(t.Context(), `SELECT state, status_msg, currently_active FROM presence WHERE user_id = $1`, bob).
			Scan(&state, &msg, &active); err != nil {
			t.Fatal(err)
		}
		if state != "online" || msg != "busy" || !active {
			t.Fatalf("bob's presence %s %q %v", state, msg, active)
		}
		var n int
		if err := db.Reader().QueryRowContext(t.Context(), `SELECT count(*) FROM presence WHERE user_id = $1`, alice).Scan(&n); err != nil || n != 0 {
			t.Fatalf("alice's presence was written by remote.test (%d rows, %v)", n, err)
		}
		// The same presence again is not worth a row.
		pos := f.pres.Position()
		if err := f.edu(remote, edus.Presence, map[string]any{"push": []any{
			map[string]any{"user_id": bob, "presence": "online", "status_msg": "busy", "last_active_ago": 5000, "currently_active": true}}}); err != nil {
			t.Fatal(err)
		}
		if f.pres.Position() != pos {
			t.Fatal("unchanged presence wrote a row")
		}
		// Remote users stay out of the local timers: a timeout check does
		// not move bob offline (his server tells us when he goes).
		if err := f.pres.CheckTimeouts(t.Context()); err != nil {
			t.Fatal(err)
		}
		if f.pres.Position() != pos {
			t.Fatal("the local timers changed a remote user's presence")
		}
	})
}

func TestFederationEDUToDevice(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		f := newFixture(t, db)
		msg := map[string]any{"sender": bob, "type": "m.room_key_request", "message_id": "m1", "messages": map[string]any{
			alice:               map[string]any{"*": map[string]any{"n": 1}},
			"@x:" + other:       map[string]any{"D": map[string]any{"relay": true}},
			"@nobody:" + server: map[string]any{"D": map[string]any{}},
		}}
		for range 2 { // a retried transaction delivers once
			if err := f.edu(remote, edus.DirectToDevice, msg); err != nil {
				t.Fatal(err)
			}
		}
		for _, d := range []string{"PHONE", "LAPTOP"} {
			got, _, err := f.td.Messages(t.Context(), alice, d, 0, f.td.Position(), 0)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != 1 || got[0].Sender != bob || got[0].Type != "m.room_key_request" || string(got[0].Content) != `{"n":1}` {
				t.Fatalf("%s got %+v", d, got)
			}
		}
		// Nothing is relayed to a third server.
		var n int
		if err := db.Reader().QueryRowContext(t.Context(), `SELECT count(*) FROM federation_edu_outbox`).Scan(&n); err != nil || n != 0 {
			t.Fatalf("queued %d EDUs for other servers (%v)", n, err)
		}
		// A new message_id is a new message, to one device.
		if err := f.edu(remote, edus.DirectToDevice, map[string]any{"sender": bob, "type": "m.x", "message_id": "m2",
			"messages": map[string]any{alice: map[string]any{"PHONE": map[string]any{"n": 2}}}}); err != nil {
			t.Fatal(err)
		}
		got, _, _ := f.td.Messages(t.Context(), alice, "PHONE", 0, f.td.Position(), 0)
		laptop, _, _ := f.td.Messages(t.Context(), alice, "LAPTOP", 0, f.td.Position(), 0)
		if len(got) != 2 || len(laptop) != 1 {
			t.Fatalf("after m2: phone %d, laptop %d messages", len(got), len(laptop))
		}
		wantWrongOrigin(t, "to-device from bob sent by other.test", f.edu(other, edus.DirectToDevice, map[string]any{
			"sender": bob, "type": "m.x", "message_id": "m3", "messages": map[string]any{alice: map[string]any{"*": map[string]any{}}}}))
	})
}

// deviceKeys are signed-looking device keys of user's device (the server
// does not check device signatures: clients do).
func deviceKeys(user, device string) map[string]any {
	return map[string]any{"user_id": user, "device_id": device, "algorithms": []string{"m.olm.v1.curve25519-aes-sha2"},
		"keys":       map[string]string{"curve25519:" + device: "cu" + device, "ed25519:" + device: "ed" + device},
		"signatures": map[string]any{user: map[string]string{"ed25519:" + device: "sig"}}}
}

// crossSigningKey is a valid cross-signing key of user for usage.
func crossSigningKey(t *testing.T, user, usage string) map[string]any {
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	k := events.EncodeBase64(pub)
	return map[string]any{"user_id": user, "usage": []string{usage}, "keys": map[string]string{"ed25519:" + k: k}}
}

// serveDevices makes remote.test answer user/devices for bob with the
// given stream id and devices.
func (f *fixture) serveDevices(streamID int64, devices ...string) {
	f.fed.handle(remote, "/_matrix/federation/v1/user/devices/"+bob, func(context.Context, json.RawMessage) (any, error) {
		var list []any
		for _, d := range devices {
			list = append(list, map[string]any{"device_id": d, "device_display_name": "name " + d, "keys": deviceKeys(bob, d)})
		}
		return map[string]any{"user_id": bob, "stream_id": streamID, "devices": list}, nil
	})
}

func (f *fixture) bobKeys() map[string]json.RawMessage {
	f.t.Helper()
	res, err := f.keys.QueryKeys(f.t.Context(), alice, map[string][]string{bob: {}})
	if err != nil {
		f.t.Fatal(err)
	}
	return res.DeviceKeys[bob]
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// m.device_list_update: the first update of a user (no list yet) resyncs
// through user/devices; an update naming the last applied stream id is
// applied as is; a gap (an unknown prev_id) resyncs; a repeat does
// nothing. Each change reaches alice's device_lists.changed.
func TestFederationEDUDeviceList(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		f := newFixture(t, db)
		devicesPath := "/_matrix/federation/v1/user/devices/" + bob
		update := func(device string, streamID int64, prev []int64, deleted bool) map[string]any {
			u := map[string]any{"user_id": bob, "device_id": device, "stream_id": streamID, "prev_id": prev}
			if deleted {
				u["deleted"] = true
			} else {
				u["keys"] = deviceKeys(bob, device)
				u["device_display_name"] = "name " + device
			}
			return u
		}
		changedForAlice := func(from streams.Token) []string {
			t.Helper()
			changed, _, err := f.keys.Changes(t.Context(), alice, from, f.reg.CurrentToken())
			if err != nil {
				t.Fatal(err)
			}
			return changed
		}

		f.serveDevices(5, "B1", "B2")
		tok := f.reg.CurrentToken()
		if err := f.edu(remote, edus.DeviceList, update("B2", 5, nil, false)); err != nil {
			t.Fatal(err)
		}
		if n := f.fed.count(remote, devicesPath); n != 1 {
			t.Fatalf("first update: %d resyncs, want 1", n)
		}
		if got := sortedKeys(f.bobKeys()); !slices.Equal(got, []string{"B1", "B2"}) {
			t.Fatalf("after resync bob's devices %v", got)
		}
		if got := changedForAlice(tok); !slices.Contains(got, bob) {
			t.Fatalf("alice's device_lists.changed %v lacks bob", got)
		}

		// Follows on from 5: applied without asking remote.test.
		tok = f.reg.CurrentToken()
		if err := f.edu(remote, edus.DeviceList, update("B3", 6, []int64{5}, false)); err != nil {
			t.Fatal(err)
		}
		if err := f.edu(remote, edus.DeviceList, update("B1", 7, []int64{6}, true)); err != nil {
			t.Fatal(err)
		}
		if n := f.fed.count(remote, devicesPath); n != 1 {
			t.Fatalf("chained updates resynced (%d fetches)", n)
		}
		got := f.bobKeys()
		if names := sortedKeys(got); !slices.Equal(names, []string{"B2", "B3"}) {
			t.Fatalf("after chained updates bob's devices %v", names)
		}
		if !strings.Contains(string(got["B3"]), `"device_display_name":"name B3"`) {
			t.Fatalf("B3's keys %s lack the display name", got["B3"])
		}
		if got := changedForAlice(tok); !slices.Contains(got, bob) {
			t.Fatalf("alice's device_lists.changed %v lacks bob", got)
		}
		// A repeat changes nothing and fetches nothing.
		pos := f.reg.Current(streams.DeviceLists)
		if err := f.edu(remote, edus.DeviceList, update("B3", 6, []int64{5}, false)); err != nil {
			t.Fatal(err)
		}
		if f.reg.Current(streams.DeviceLists) != pos || f.fed.count(remote, devicesPath) != 1 {
			t.Fatal("a repeated update was applied again")
		}

		// A gap: 8 was lost. The whole list is fetched again.
		f.serveDevices(9, "B2", "B4")
		if err := f.edu(remote, edus.DeviceList, update("B4", 9, []int64{8}, false)); err != nil {
			t.Fatal(err)
		}
		if n := f.fed.count(remote, devicesPath); n != 2 {
			t.Fatalf("gap: %d fetches, want 2", n)
		}
		if names := sortedKeys(f.bobKeys()); !slices.Equal(names, []string{"B2", "B4"}) {
			t.Fatalf("after the gap's resync bob's devices %v", names)
		}

		// A gap whose resync fails leaves the list stale: queries ask
		// remote.test again rather than trust the cache.
		f.fed.handle(remote, devicesPath, nil)
		tok = f.reg.CurrentToken()
		if err := f.edu(remote, edus.DeviceList, update("B5", 12, []int64{11}, false)); err == nil {
			t.Fatal("a failed resync reported success")
		}
		if got := changedForAlice(tok); !slices.Contains(got, bob) {
			t.Fatalf("a change whose resync failed was not announced: %v", got)
		}
		st, err := f.keys.RemoteListState(t.Context(), bob)
		if err != nil || !st.Stale {
			t.Fatalf("state after a failed resync %+v %v", st, err)
		}

		// Refused: another server's user; ignored: a user sharing no room.
		wantWrongOrigin(t, "device list of bob from other.test", f.edu(other, edus.DeviceList, update("X", 20, []int64{12}, false)))
		pos = f.reg.Current(streams.DeviceLists)
		if err := f.edu(remote, edus.DeviceList, map[string]any{"user_id": loner, "device_id": "L", "stream_id": 1, "prev_id": []int64{}}); err != nil {
			t.Fatal(err)
		}
		if f.reg.Current(streams.DeviceLists) != pos || f.fed.count(remote, "/_matrix/federation/v1/user/devices/"+loner) != 0 {
			t.Fatal("a device list update of a user sharing no room was followed")
		}
	})
}

// m.signing_key_update stores bob's cross-signing keys (shown in
// /keys/query, announced to alice); keys naming another user are refused.
func TestFederationEDUSigningKey(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		f := newFixture(t, db)
		f.serveDevices(1, "B1")
		if err := f.edu(remote, edus.DeviceList, map[string]any{"user_id": bob, "device_id": "B1", "stream_id": 1, "prev_id": []int64{}}); err != nil {
			t.Fatal(err)
		}
		tok := f.reg.CurrentToken()
		master := crossSigningKey(t, bob, "master")
		if err := f.edu(remote, edus.SigningKey, map[string]any{"user_id": bob, "master_key": master,
			"self_signing_key": crossSigningKey(t, bob, "self_signing")}); err != nil {
			t.Fatal(err)
		}
		changed, _, err := f.keys.Changes(t.Context(), alice, tok, f.reg.CurrentToken())
		if err != nil || !slices.Contains(changed, bob) {
			t.Fatalf("changed %v %v", changed, err)
		}
		res, err := f.keys.QueryKeys(t.Context(), alice, map[string][]string{bob: {}})
		if err != nil {
			t.Fatal(err)
		}
		if res.MasterKeys[bob] == nil || res.SelfSigningKeys[bob] == nil || len(res.Failures) != 0 {
			t.Fatalf("query after the signing key update: %+v", res)
		}
		wantWrongOrigin(t, "signing keys of bob from other.test", f.edu(other, edus.SigningKey, map[string]any{"user_id": bob, "master_key": master}))
		if err := f.edu(remote, edus.SigningKey, map[string]any{"user_id": bob, "master_key": crossSigningKey(t, carol, "master")}); err == nil {
			t.Fatal("a master key naming carol was taken for bob")
		}
	})
}

// Remote users in /keys/query: each server is asked once, in parallel; a
// server that is down or does not answer within the timeout is listed in
// failures; what a server said is cached and answers while it is down;
// a followed (fresh) list is answered without asking.
func TestFederationRemoteKeysQuery(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		f := newFixture(t, db)
		queryPath := "/_matrix/federation/v1/user/keys/query"
		master := crossSigningKey(t, carol, "master")
		f.fed.handle(remote, queryPath, func(_ context.Context, body json.RawMessage) (any, error) {
			var req struct {
				DeviceKeys map[string][]string `json:"device_keys"`
			}
			if err := json.Unmarshal(body, &req); err != nil {
				return nil, err
			}
			if _, ok := req.DeviceKeys[carol]; !ok || len(req.DeviceKeys) != 1 {
				return nil, fmt.Errorf("asked %v", req.DeviceKeys)
			}
			return map[string]any{
				"device_keys": map[string]any{carol: map[string]any{"C1": deviceKeys(carol, "C1"),
					"FORGED": deviceKeys(bob, "FORGED")}, bob: map[string]any{"X": deviceKeys(bob, "X")}},
				"master_keys": map[string]any{carol: master},
			}, nil
		})
		// slow.test answers only when the request gives up.
		f.fed.handle("slow.test", queryPath, func(ctx context.Context, _ json.RawMessage) (any, error) {
			<-ctx.Done()
			return nil, ctx.Err()
		})
		want := map[string][]string{carol: {}, "@d:down.test": {}, "@s:slow.test": {}, alice: {}}
		res, err := f.keys.QueryKeysTimeout(t.Context(), alice, want, 50*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		if got := sortedKeys(res.DeviceKeys[carol]); !slices.Equal(got, []string{"C1"}) {
			t.Fatalf("carol's devices %v (the forged one must go)", got)
		}
		if res.DeviceKeys[bob] != nil || res.MasterKeys[carol] == nil {
			t.Fatalf("answer %+v: bob was not asked for; carol's master key missing", res)
		}
		if got := sortedKeys(res.Failures); !slices.Equal(got, []string{"down.test", "slow.test"}) {
			t.Fatalf("failures %v", res.Failures)
		}
		var fail struct {
			Status int `json:"status"`
		}
		if err := json.Unmarshal(res.Failures["down.test"], &fail); err != nil || fail.Status != 503 {
			t.Fatalf("down.test's failure %s", res.Failures["down.test"])
		}
		if _, ok := res.DeviceKeys[alice]; !ok {
			t.Fatal("the local user is missing from a query with remote failures")
		}

		// remote.test goes down: carol is answered from what it said.
		f.fed.handle(remote, queryPath, nil)
		res, err = f.keys.QueryKeysTimeout(t.Context(), alice, map[string][]string{carol: {}}, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if got := sortedKeys(res.DeviceKeys[carol]); !slices.Equal(got, []string{"C1"}) || len(res.Failures) != 0 || res.MasterKeys[carol] == nil {
			t.Fatalf("answer from the cache: %+v", res)
		}

		// bob's list is followed (device list updates): no request at all.
		f.serveDevices(3, "B1")
		if err := f.edu(remote, edus.DeviceList, map[string]any{"user_id": bob, "device_id": "B1", "stream_id": 3, "prev_id": []int64{}}); err != nil {
			t.Fatal(err)
		}
		asked := f.fed.count(remote, queryPath)
		res, err = f.keys.QueryKeysTimeout(t.Context(), alice, map[string][]string{bob: {"B1"}}, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if f.fed.count(remote, queryPath) != asked || res.DeviceKeys[bob]["B1"] == nil {
			t.Fatalf("followed user: asked %d times more, answer %+v", f.fed.count(remote, queryPath)-asked, res)
		}
		// Once bob shares no room with us his server stops telling us about
		// his devices: the cache is no longer trusted without asking.
		if _, err := f.p.SendEvents(t.Context(), f.room, []rooms.Draft{{Type: "m.room.member", StateKey: ptr(bob), Sender: bob,
			Content: raw(map[string]any{"membership": "leave"})}}); err != nil {
			t.Fatal(err)
		}
		if _, err := f.keys.QueryKeysTimeout(t.Context(), alice, map[string][]string{bob: {}}, time.Second); err != nil {
			t.Fatal(err)
		}
		if f.fed.count(remote, queryPath) != asked+1 {
			t.Fatal("a user sharing no room any more was answered from the cache without asking")
		}
	})
}

// Remote users in /keys/claim: claimed from their servers; a server down
// is a failure, the others' keys are given.
func TestFederationRemoteKeysClaim(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		f := newFixture(t, db)
		f.fed.handle(remote, "/_matrix/federation/v1/user/keys/claim", func(_ context.Context, body json.RawMessage) (any, error) {
			var req struct {
				OneTimeKeys map[string]map[string]string `json:"one_time_keys"`
			}
			if err := json.Unmarshal(body, &req); err != nil || req.OneTimeKeys[bob]["B1"] != "signed_curve25519" {
				return nil, fmt.Errorf("asked %s", body)
			}
			return map[string]any{"one_time_keys": map[string]any{
				bob: map[string]any{"B1": map[string]any{"signed_curve25519:AAA": map[string]any{"key": "k"}}},
				eve: map[string]any{"E": map[string]any{"signed_curve25519:X": map[string]any{"key": "forged"}}},
			}}, nil
		})
		res, err := f.keys.ClaimKeysTimeout(t.Context(), map[string]map[string]string{
			bob: {"B1": "signed_curve25519"}, "@d:down.test": {"D": "signed_curve25519"}}, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if res.OneTimeKeys[bob]["B1"]["signed_curve25519:AAA"] == nil || res.OneTimeKeys[eve] != nil {
			t.Fatalf("claimed %+v", res.OneTimeKeys)
		}
		if got := sortedKeys(res.Failures); !slices.Equal(got, []string{"down.test"}) {
			t.Fatalf("failures %v", res.Failures)
		}
	})
}

// Malformed EDUs are refused with an error, never a panic, and change
// nothing.
func TestFederationEDUMalformed(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		f := newFixture(t, db)
		bad := []string{`[]`, `"x"`, `null`, `{"user_id":5}`, `{"user_id":"bob"}`, `{"push":"x"}`, `{"messages":[]}`,
			`{"!r:x":{"m.read":{"@bob:remote.test":{"event_ids":"e"}}}}`, `{"user_id":"@bob:remote.test","device_id":"D","stream_id":"1"}`,
			`{"sender":"@bob:remote.test","type":"m.x","message_id":"","messages":{}}`}
		pos := f.reg.CurrentToken().String()
		for typ, h := range f.handlers() {
			for _, b := range bad {
				// An m.presence object without push is an empty EDU.
				empty := b == `null` || (typ == edus.Presence && strings.HasPrefix(b, "{") && !strings.Contains(b, "push"))
				if err := h(t.Context(), remote, json.RawMessage(b)); err == nil && !empty {
					t.Errorf("%s %s: accepted", typ, b)
				}
			}
		}
		if f.reg.CurrentToken().String() != pos || len(f.typing.Typing(f.room)) != 0 {
			t.Fatal("a malformed EDU changed something")
		}
	})
}
