package sender_test

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	"ganglion/internal/config"
	"ganglion/internal/federation/sender"
	"ganglion/internal/keys"
	"ganglion/internal/presence"
	"ganglion/internal/receipts"
	"ganglion/internal/storage"
	"ganglion/internal/storage/storagetest"
	"ganglion/internal/streams"
	"ganglion/internal/testutil"
	"ganglion/internal/todevice"
	"ganglion/internal/typing"
)

type wireEDU struct {
	Type    string         `json:"edu_type"`
	Content map[string]any `json:"content"`
}

// edusOf returns the EDUs of type typ that dest acknowledged, decoded.
func (r *receiver) edusOf(t *testing.T, dest, typ string) []map[string]any {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []map[string]any
	for _, raw := range r.edus[dest] {
		var e wireEDU
		if err := json.Unmarshal(raw, &e); err != nil {
			t.Fatalf("EDU %s: %v", raw, err)
		}
		if e.Type == typ {
			out = append(out, e.Content)
		}
	}
	return out
}

func waitEDUs(t *testing.T, r *receiver, dest, typ string, n int) []map[string]any {
	t.Helper()
	var got []map[string]any
	testutil.EventuallyState(t, 30*time.Second, func() (bool, string) {
		got = r.edusOf(t, dest, typ)
		return len(got) >= n, fmt.Sprintf("%s received %d of %d %s EDUs", dest, len(got), n, typ)
	})
	return got
}

func outboxCount(t *testing.T, db *storage.DB) int {
	var n int
	if err := db.Reader().QueryRowContext(ctxT(t), `SELECT count(*) FROM federation_edu_outbox`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// at walks a decoded JSON object along keys.
func at(v any, path ...string) any {
	for _, k := range path {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}

func newToDevice(t *testing.T, f *fixture) *todevice.LocalWriter {
	w, err := todevice.NewLocalWriter(ctxT(t), f.db, f.reg, server, f.log)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

func sendToDevice(t *testing.T, w *todevice.LocalWriter, txnID string, to map[string]map[string]json.RawMessage) {
	t.Helper()
	if err := w.Send(ctxT(t), alice, "ADEV", txnID, "m.test", to); err != nil {
		t.Fatal(err)
	}
}

// Local users' public read receipts reach the room's servers in the
// spec's format; private receipts and remote users' receipts do not.
func TestSenderSendsReadReceipts(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		f := newFixture(t, db)
		room := "!receipts:" + server
		f.createRoom(t, room)
		rs, err := receipts.NewService(ctxT(t), db, f.reg, f.log)
		if err != nil {
			t.Fatal(err)
		}
		f.edus = sender.Sources{Receipts: receipts.NewStore(db)}
		r := newReceiver()
		f.run(t, r, sender.Options{})
		f.remoteJoin(t, room, "@bob:one.test")
		ids := f.messages(t, room, 3, "read me")
		for _, rc := range []receipts.Receipt{
			{RoomID: room, Type: receipts.ReadPrivate, UserID: alice, EventID: ids[0]},
			{RoomID: room, Type: receipts.Read, UserID: "@bob:one.test", EventID: ids[1]},
			{RoomID: room, Type: receipts.Read, UserID: alice, EventID: ids[2], ThreadID: receipts.MainThread},
		} {
			if _, err := rs.SetReceipt(ctxT(t), rc); err != nil {
				t.Fatal(err)
			}
		}
		got := waitEDUs(t, r, "one.test", "m.receipt", 1)
		if len(got) != 1 {
			t.Fatalf("receipt EDUs %v; want only alice's public one", got)
		}
		receipt := at(got[0], room, "m.read", alice)
		if eventIDs, _ := at(receipt, "event_ids").([]any); len(eventIDs) != 1 || eventIDs[0] != ids[2] {
			t.Errorf("receipt %v: want event_ids [%s]", got[0], ids[2])
		}
		if at(receipt, "data", "thread_id") != receipts.MainThread || at(receipt, "data", "ts") == nil {
			t.Errorf("receipt data %v: want ts and thread_id", at(receipt, "data"))
		}
		testutil.EventuallyState(t, 10*time.Second, func() (bool, string) {
			n := outboxCount(t, db)
			return n == 0, fmt.Sprintf("%d EDUs still queued after the acknowledgement", n)
		})
	})
}

// Receipts, device list updates and to-device messages queued while the
// destination is down and the sender stopped are all delivered, once, by
// the next sender.
func TestSenderDurableEDUsSurviveRestart(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		f := newFixture(t, db)
		room := "!durable:" + server
		f.createRoom(t, room)
		rs, err := receipts.NewService(ctxT(t), db, f.reg, f.log)
		if err != nil {
			t.Fatal(err)
		}
		td := newToDevice(t, f)
		kw, err := keys.NewLocalWriter(ctxT(t), db, f.reg, f.log)
		if err != nil {
			t.Fatal(err)
		}
		f.edus = sender.Sources{Receipts: receipts.NewStore(db), ToDevice: true, DeviceLists: true}
		r := newReceiver()
		r.setDown("far.test", true)
		stop := f.run(t, r, sender.Options{})
		f.remoteJoin(t, room, "@bob:far.test")
		ids := f.messages(t, room, 2, "durable")
		if _, err := rs.SetReceipt(ctxT(t), receipts.Receipt{RoomID: room, Type: receipts.Read, UserID: alice, EventID: ids[0]}); err != nil {
			t.Fatal(err)
		}
		sendToDevice(t, td, "t1", map[string]map[string]json.RawMessage{"@bob:far.test": {"B1": raw(map[string]int{"n": 1})}})
		if err := kw.Update(ctxT(t), keys.Update{UserID: alice, DeviceIDs: []string{"GONE1"}, Deleted: true}); err != nil {
			t.Fatal(err)
		}
		testutil.EventuallyState(t, 30*time.Second, func() (bool, string) {
			n := outboxCount(t, db)
			return n == 3, fmt.Sprintf("%d EDUs queued; want the receipt, the device list update and the to-device message", n)
		})
		stop()
		// Made while no sender runs.
		if _, err := rs.SetReceipt(ctxT(t), receipts.Receipt{RoomID: room, Type: receipts.Read, UserID: alice, EventID: ids[1]}); err != nil {
			t.Fatal(err)
		}
		sendToDevice(t, td, "t2", map[string]map[string]json.RawMessage{"@bob:far.test": {"B1": raw(map[string]int{"n": 2})}})
		if err := kw.Update(ctxT(t), keys.Update{UserID: alice, DeviceIDs: []string{"GONE2"}, Deleted: true}); err != nil {
			t.Fatal(err)
		}
		r.setDown("far.test", false)
		f.run(t, r, sender.Options{})
		waitEDUs(t, r, "far.test", "m.direct_to_device", 2)
		waitEDUs(t, r, "far.test", "m.receipt", 2)
		dl := waitEDUs(t, r, "far.test", "m.device_list_update", 2)
		testutil.EventuallyState(t, 10*time.Second, func() (bool, string) {
			n := outboxCount(t, db)
			return n == 0, fmt.Sprintf("%d EDUs still queued", n)
		})
		gotTD, gotRR := r.edusOf(t, "far.test", "m.direct_to_device"), r.edusOf(t, "far.test", "m.receipt")
		var ns []float64
		for _, m := range gotTD {
			n, _ := at(m, "messages", "@bob:far.test", "B1", "n").(float64)
			ns = append(ns, n)
		}
		if !slices.Equal(ns, []float64{1, 2}) {
			t.Errorf("to-device messages delivered %v; want [1 2] once each", ns)
		}
		var read []string
		for _, m := range gotRR {
			e, _ := at(m, room, "m.read", alice, "event_ids").([]any)
			for _, id := range e {
				read = append(read, id.(string))
			}
		}
		if !slices.Equal(read, ids) {
			t.Errorf("receipts delivered for %v; want %v once each", read, ids)
		}
		dl = r.edusOf(t, "far.test", "m.device_list_update")
		if len(dl) != 2 || dl[0]["device_id"] != "GONE1" || dl[1]["device_id"] != "GONE2" {
			t.Fatalf("device list updates %v; want GONE1 then GONE2 once each", dl)
		}
		if prev, _ := dl[1]["prev_id"].([]any); len(prev) != 1 || prev[0] != dl[0]["stream_id"] {
			t.Errorf("the update made while stopped has prev_id %v; want [%v]", dl[1]["prev_id"], dl[0]["stream_id"])
		}
	})
}

// To-device messages to remote users go to their servers as
// m.direct_to_device with a message id, one EDU per server and send, at
// most 100 EDUs per transaction; delivered ones leave the queue.
func TestSenderSendsToDeviceAtMost100EDUsPerTransaction(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		f := newFixture(t, db)
		td := newToDevice(t, f)
		f.edus = sender.Sources{ToDevice: true}
		r := newReceiver()
		r.setDown("one.test", true)
		f.run(t, r, sender.Options{})
		sendToDevice(t, td, "first", map[string]map[string]json.RawMessage{
			"@bob:one.test":   {"B1": raw(map[string]string{"body": "to bob"})},
			"@carol:two.test": {"*": raw(map[string]string{"body": "to carol"})},
		})
		got := waitEDUs(t, r, "two.test", "m.direct_to_device", 1)
		if at(got[0], "sender") != alice || at(got[0], "type") != "m.test" || at(got[0], "message_id") == "" ||
			at(got[0], "messages", "@carol:two.test", "*", "body") != "to carol" || len(at(got[0], "messages").(map[string]any)) != 1 {
			t.Errorf("m.direct_to_device %v", got[0])
		}
		const n = 250
		for i := range n {
			sendToDevice(t, td, fmt.Sprintf("bulk%d", i), map[string]map[string]json.RawMessage{
				"@bob:one.test": {"B1": raw(map[string]int{"i": i})}})
		}
		r.setDown("one.test", false)
		all := waitEDUs(t, r, "one.test", "m.direct_to_device", n+1)
		seen := map[string]bool{}
		for _, m := range all {
			id, _ := at(m, "message_id").(string)
			if id == "" || seen[id] {
				t.Fatalf("message id %q missing or repeated", id)
			}
			seen[id] = true
		}
		if len(all) != n+1 {
			t.Errorf("%d EDUs delivered; want %d", len(all), n+1)
		}
		r.mu.Lock()
		maxEDUs := r.maxEDUs
		r.mu.Unlock()
		if maxEDUs != 100 {
			t.Errorf("largest transaction had %d EDUs; want the spec's 100", maxEDUs)
		}
		testutil.EventuallyState(t, 10*time.Second, func() (bool, string) {
			n := outboxCount(t, db)
			return n == 0, fmt.Sprintf("%d EDUs still queued", n)
		})
	})
}

// fakePresence is a presence stream the test writes.
type fakePresence struct {
	mu      sync.Mutex
	changes []presence.Change
}

func (p *fakePresence) Changes(_ context.Context, from, to int64, limit int) ([]presence.Change, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []presence.Change
	for _, c := range p.changes {
		if c.StreamID > from && c.StreamID <= to && len(out) < limit {
			out = append(out, c)
		}
	}
	return out, nil
}

func (p *fakePresence) set(f *fixture, userID, state string) {
	p.mu.Lock()
	id := int64(len(p.changes) + 1)
	active := int64(1234)
	p.changes = append(p.changes, presence.Change{StreamID: id, Event: presence.Event{Type: presence.EventType, Sender: userID,
		Content: presence.Content{Presence: state, LastActiveAgo: &active}}})
	p.mu.Unlock()
	f.reg.Advance(streams.Presence, f.reg.Instance(), id)
}

// Local users' typing starts and stops reach the servers of the room, and
// their presence the servers sharing a room with them; remote users'
// typing and presence are not sent back.
func TestSenderSendsTypingAndPresence(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		f := newFixture(t, db)
		room := "!typing:" + server
		f.createRoom(t, room)
		ts, err := typing.NewService(f.reg, typing.Options{}, f.log)
		if err != nil {
			t.Fatal(err)
		}
		pres := &fakePresence{}
		f.edus = sender.Sources{Typing: ts, Presence: pres}
		r := newReceiver()
		f.run(t, r, sender.Options{})
		f.remoteJoin(t, room, "@bob:one.test")
		ctx := ctxT(t)
		if err := ts.SetTyping(ctx, room, "@bob:one.test", true, time.Minute); err != nil {
			t.Fatal(err)
		}
		if err := ts.SetTyping(ctx, room, alice, true, time.Minute); err != nil {
			t.Fatal(err)
		}
		got := waitEDUs(t, r, "one.test", "m.typing", 1)
		if want := map[string]any{"room_id": room, "user_id": alice, "typing": true}; !reflect.DeepEqual(got[0], want) {
			t.Errorf("m.typing %v; want %v", got[0], want)
		}
		if err := ts.SetTyping(ctx, room, alice, false, 0); err != nil {
			t.Fatal(err)
		}
		got = waitEDUs(t, r, "one.test", "m.typing", 2)
		if got[1]["user_id"] != alice || got[1]["typing"] != false {
			t.Errorf("m.typing %v; want alice stopping", got[1])
		}

		pres.set(f, "@bob:one.test", "online")
		pres.set(f, "@loner:"+server, "online") // shares no room with anyone remote
		pres.set(f, alice, "unavailable")
		got = waitEDUs(t, r, "one.test", "m.presence", 1)
		push, _ := got[0]["push"].([]any)
		if len(got) != 1 || len(push) != 1 || at(push[0], "user_id") != alice || at(push[0], "presence") != "unavailable" ||
			at(push[0], "last_active_ago") != float64(1234) {
			t.Errorf("m.presence %v; want alice's only", got)
		}
		if typ := r.edusOf(t, "one.test", "m.typing"); len(typ) != 2 {
			t.Errorf("m.typing %v; bob's own typing must not go back to his server", typ)
		}
	})
}

// Device list changes of local users go to the servers sharing a room as
// m.device_list_update with prev_id chaining each update to the previous
// one sent; cross-signing key changes as m.signing_key_update.
func TestSenderSendsDeviceListUpdates(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		f := newFixture(t, db)
		room := "!devices:" + server
		f.createRoom(t, room)
		kw, err := keys.NewLocalWriter(ctxT(t), db, f.reg, f.log)
		if err != nil {
			t.Fatal(err)
		}
		f.edus = sender.Sources{DeviceLists: true}
		r := newReceiver()
		f.run(t, r, sender.Options{})
		f.remoteJoin(t, room, "@bob:one.test")
		ctx := ctxT(t)
		if _, err := db.Exec(ctx, `INSERT INTO devices (user_id, device_id, display_name, created_ts) VALUES ($1, 'PHONE', 'Phone', 1)`, alice); err != nil {
			t.Fatal(err)
		}
		deviceKeys := raw(map[string]any{"user_id": alice, "device_id": "PHONE", "algorithms": []string{"m.olm.v1.curve25519-aes-sha2"},
			"keys": map[string]string{"ed25519:PHONE": "abc"}})
		if err := kw.Update(ctx, keys.Update{UserID: alice, DeviceKeys: map[string]json.RawMessage{"PHONE": deviceKeys}}); err != nil {
			t.Fatal(err)
		}
		got := waitEDUs(t, r, "one.test", "m.device_list_update", 1)
		first := got[0]
		if first["user_id"] != alice || first["device_id"] != "PHONE" || first["device_display_name"] != "Phone" ||
			at(first, "keys", "keys", "ed25519:PHONE") != "abc" || first["deleted"] != nil {
			t.Errorf("first update %v", first)
		}
		if prev, _ := first["prev_id"].([]any); len(prev) != 0 {
			t.Errorf("first update's prev_id %v; want []", first["prev_id"])
		}
		// A device that is gone is announced deleted, chained to the first.
		if err := kw.Update(ctx, keys.Update{UserID: alice, DeviceIDs: []string{"TABLET"}, Deleted: true}); err != nil {
			t.Fatal(err)
		}
		got = waitEDUs(t, r, "one.test", "m.device_list_update", 2)
		second := got[1]
		if second["device_id"] != "TABLET" || second["deleted"] != true {
			t.Errorf("second update %v", second)
		}
		if prev, _ := second["prev_id"].([]any); len(prev) != 1 || prev[0] != first["stream_id"] ||
			second["stream_id"].(float64) <= first["stream_id"].(float64) {
			t.Errorf("second update stream_id %v prev_id %v; want prev_id [%v]", second["stream_id"], second["prev_id"], first["stream_id"])
		}
		master := raw(map[string]any{"user_id": alice, "usage": []string{"master"}, "keys": map[string]string{"ed25519:M": "M"}})
		self := raw(map[string]any{"user_id": alice, "usage": []string{"self_signing"}, "keys": map[string]string{"ed25519:S": "S"}})
		user := raw(map[string]any{"user_id": alice, "usage": []string{"user_signing"}, "keys": map[string]string{"ed25519:U": "U"}})
		if err := kw.Update(ctx, keys.Update{UserID: alice, CrossSigningKeys: map[string]json.RawMessage{
			"master": master, "self_signing": self, "user_signing": user}}); err != nil {
			t.Fatal(err)
		}
		sk := waitEDUs(t, r, "one.test", "m.signing_key_update", 1)[0]
		if sk["user_id"] != alice || at(sk, "master_key", "keys", "ed25519:M") != "M" ||
			at(sk, "self_signing_key", "keys", "ed25519:S") != "S" || sk["user_signing_key"] != nil {
			t.Errorf("m.signing_key_update %v", sk)
		}
	})
}

// With two senders, each destination gets its EDUs from the instance that
// owns it only, once: receipts (queued by the senders) and to-device
// messages (queued by the writer).
func TestSendersShardEDUsByDestination(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		f := newFixture(t, db)
		room := "!shardedus:" + server
		f.createRoom(t, room)
		rs, err := receipts.NewService(ctxT(t), db, f.reg, f.log)
		if err != nil {
			t.Fatal(err)
		}
		td := newToDevice(t, f)
		f.edus = sender.Sources{Receipts: receipts.NewStore(db), ToDevice: true}
		instances := []string{"fs1", "fs2"}
		byInstance := map[string]*receiver{"fs1": newReceiver(), "fs2": newReceiver()}
		for _, name := range instances {
			f.run(t, byInstance[name], sender.Options{Instance: name, Instances: instances})
		}
		var dests []string
		to := map[string]map[string]json.RawMessage{}
		for i := range 6 {
			d := fmt.Sprintf("s%d.test", i)
			dests = append(dests, d)
			f.remoteJoin(t, room, "@u:"+d)
			to["@u:"+d] = map[string]json.RawMessage{"D": raw(map[string]string{"to": d})}
		}
		ids := f.messages(t, room, 1, "sharded")
		if _, err := rs.SetReceipt(ctxT(t), receipts.Receipt{RoomID: room, Type: receipts.Read, UserID: alice, EventID: ids[0]}); err != nil {
			t.Fatal(err)
		}
		sendToDevice(t, td, "sharded", to)
		for _, d := range dests {
			owner := config.ShardFor(instances, d)
			got := waitEDUs(t, byInstance[owner], d, "m.direct_to_device", 1)
			if len(got) != 1 || at(got[0], "messages", "@u:"+d, "D", "to") != d || len(at(got[0], "messages").(map[string]any)) != 1 {
				t.Errorf("%s got to-device %v; want its own user's message once", d, got)
			}
			waitEDUs(t, byInstance[owner], d, "m.receipt", 1)
		}
		testutil.EventuallyState(t, 10*time.Second, func() (bool, string) {
			n := outboxCount(t, db)
			return n == 0, fmt.Sprintf("%d EDUs still queued", n)
		})
		for _, d := range dests {
			owner := config.ShardFor(instances, d)
			for name, r := range byInstance {
				if name != owner && len(r.edusOf(t, d, "m.receipt"))+len(r.edusOf(t, d, "m.direct_to_device")) != 0 {
					t.Errorf("%s also sent EDUs to %s (owned by %s)", name, d, owner)
				}
			}
			if n := len(byInstance[owner].edusOf(t, d, "m.receipt")); n != 1 {
				t.Errorf("%s got %d receipts; want 1", d, n)
			}
		}
	})
}
