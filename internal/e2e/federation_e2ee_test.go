//go:build goolm

package e2e_test

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"ganglion/internal/testutil"
)

// fedCrypto is a login running mautrix's crypto machine (goolm) that
// follows its own sync: every response goes through the machine (to-device
// room keys, device list changes, one-time key counts), and the encrypted
// events of the timelines are kept for decrypting later.
type fedCrypto struct {
	c    *mautrix.Client
	mach *crypto.OlmMachine
	s    *syncer
	otks int // the last signed_curve25519 count sync reported
	enc  map[id.EventID]*event.Event
}

// newFedCrypto starts the machine for the login c (uploading its device
// keys and one-time keys) and its sync.
func newFedCrypto(t *testing.T, ctx context.Context, c *mautrix.Client, rooms *roomsState) *fedCrypto {
	t.Helper()
	fc := &fedCrypto{c: c, mach: newOlmMachine(t, ctx, c, rooms), enc: map[id.EventID]*event.Event{}}
	var first *mautrix.RespSync
	fc.s, first = newSyncer(t, ctx, c, "")
	fc.otks = first.DeviceOTKCount.SignedCurve25519
	if fc.otks == 0 {
		t.Fatalf("%s: sync reports no one-time keys after the upload: %+v", c.UserID, first.DeviceOTKCount)
	}
	return fc
}

// pull does one incremental sync and hands it to the machine.
func (fc *fedCrypto) pull(t testing.TB, ctx context.Context) *mautrix.RespSync {
	t.Helper()
	since := fc.s.since
	resp := fc.s.next(t, ctx, pollTimeout)
	fc.mach.ProcessSyncResponse(ctx, resp, since)
	if n := resp.DeviceOTKCount.SignedCurve25519; n != 0 {
		fc.otks = n
	}
	for roomID, jr := range resp.Rooms.Join {
		for _, evt := range jr.Timeline.Events {
			if evt.Type == event.EventEncrypted {
				evt.RoomID = roomID
				fc.enc[evt.ID] = evt
			}
		}
	}
	return resp
}

// until pulls until cond accepts a response, failing after deliveryLimit.
func (fc *fedCrypto) until(t testing.TB, ctx context.Context, what string, cond func(*mautrix.RespSync) bool) {
	t.Helper()
	deadline := time.Now().Add(deliveryLimit)
	for time.Now().Before(deadline) {
		if cond(fc.pull(t, ctx)) {
			return
		}
	}
	t.Fatalf("%s: no sync within %v showed %s", fc.c.UserID, deliveryLimit, what)
}

// decrypt pulls until the encrypted event eventID has arrived and its room
// key too (a to-device message, before or after it), and returns the
// decrypted body.
func (fc *fedCrypto) decrypt(t testing.TB, ctx context.Context, eventID id.EventID) string {
	t.Helper()
	deadline := time.Now().Add(deliveryLimit)
	var last error
	for time.Now().Before(deadline) {
		if evt := fc.enc[eventID]; evt != nil {
			if err := evt.Content.ParseRaw(evt.Type); err != nil && !isAlreadyParsed(err) {
				t.Fatalf("%s: parse encrypted event %s: %v", fc.c.UserID, eventID, err)
			}
			dec, err := fc.mach.DecryptMegolmEvent(ctx, evt)
			if err == nil {
				return dec.Content.AsMessage().Body
			}
			last = err
		}
		fc.pull(t, ctx)
	}
	t.Fatalf("%s: could not decrypt %s within %v (arrived: %v; last error: %v)",
		fc.c.UserID, eventID, deliveryLimit, fc.enc[eventID] != nil, last)
	return ""
}

// sendEncrypted shares the room's Megolm session with users' devices (over
// Olm: device keys queried, one-time keys claimed, the key sent to each
// device) and sends body encrypted with it.
func (fc *fedCrypto) sendEncrypted(t testing.TB, ctx context.Context, room id.RoomID, users []id.UserID, body string) id.EventID {
	t.Helper()
	if err := fc.mach.ShareGroupSession(ctx, room, users); err != nil {
		t.Fatalf("%s: share the group session with %v: %v", fc.c.UserID, users, err)
	}
	content, err := fc.mach.EncryptMegolmEvent(ctx, room, event.EventMessage,
		&event.MessageEventContent{MsgType: event.MsgText, Body: body})
	if err != nil {
		t.Fatalf("%s: encrypt: %v", fc.c.UserID, err)
	}
	resp, err := fc.c.SendMessageEvent(ctx, room, event.EventEncrypted, content)
	if err != nil {
		t.Fatalf("%s: send encrypted: %v", fc.c.UserID, err)
	}
	return resp.EventID
}

// wantDevicesOf waits until viewer's server answers /keys/query for user
// with exactly the devices of want, each with the identity key its machine
// holds (for a remote user the server asks the user's server).
func wantDevicesOf(t testing.TB, ctx context.Context, viewer *mautrix.Client, user id.UserID, want ...*fedCrypto) {
	t.Helper()
	testutil.EventuallyState(t, deliveryLimit, func() (bool, string) {
		q, err := viewer.QueryKeys(ctx, &mautrix.ReqQueryKeys{DeviceKeys: mautrix.DeviceKeysRequest{user: nil}})
		if err != nil {
			return false, fmt.Sprintf("%s: query keys of %s: %v", viewer.UserID, user, err)
		}
		got := q.DeviceKeys[user]
		if len(got) != len(want) {
			return false, fmt.Sprintf("%s: /keys/query for %s lists devices %v (failures %v), want %d",
				viewer.UserID, user, slices.Collect(maps.Keys(got)), q.Failures, len(want))
		}
		for _, w := range want {
			dev, ok := got[w.c.DeviceID]
			if !ok || dev.Keys.GetEd25519(w.c.DeviceID) != w.mach.OwnIdentity().SigningKey ||
				dev.Keys.GetCurve25519(w.c.DeviceID) != w.mach.OwnIdentity().IdentityKey {
				return false, fmt.Sprintf("%s: /keys/query for %s: device %s is %+v, want the keys its machine uploaded",
					viewer.UserID, user, w.c.DeviceID, dev)
			}
		}
		return true, ""
	})
}

// testFederationE2EE: alice on A and bob on B, both running mautrix's
// crypto, in an encrypted room on A. Each finds the other's device keys
// through its own server (/keys/query over federation), claims one of the
// other's one-time keys (/keys/claim over federation), sends the Megolm
// room key to the other's device (to-device over federation) and an
// encrypted message the other decrypts. Then bob logs in on a second
// device: alice's sync names bob in device_lists.changed (the device list
// update came over federation), her server lists both of bob's devices,
// and a message shared with the new device is decrypted there.
func testFederationE2EE(t *testing.T, p *fedPair) {
	ctx := fedContext(t)
	rooms := &roomsState{}
	bobName := p.unique("e2ee-bob")
	alice := newFedCrypto(t, ctx, p.a.register(t, ctx, p.unique("e2ee-alice")), rooms)
	bob := newFedCrypto(t, ctx, p.b.register(t, ctx, bobName), rooms)
	room := createRoom(t, ctx, alice.c, &mautrix.ReqCreateRoom{
		Preset: "public_chat",
		InitialState: []*event.Event{{Type: event.StateEncryption, StateKey: new(string),
			Content: event.Content{Parsed: &event.EncryptionEventContent{Algorithm: id.AlgorithmMegolmV1}}}},
	})
	rooms.rooms = []id.RoomID{room}
	joinRemote(t, ctx, bob.c, room.String(), p.a.name)
	for _, c := range []*mautrix.Client{alice.c, bob.c} {
		waitMembership(t, ctx, c, room, alice.c.UserID, event.MembershipJoin)
		waitMembership(t, ctx, c, room, bob.c.UserID, event.MembershipJoin)
	}
	// Sharing an encrypted room from now on: each is told to look at the
	// other's devices.
	alice.until(t, ctx, bob.c.UserID.String()+" in device_lists.changed", func(r *mautrix.RespSync) bool {
		return slices.Contains(r.DeviceLists.Changed, bob.c.UserID)
	})
	bob.until(t, ctx, alice.c.UserID.String()+" in device_lists.changed", func(r *mautrix.RespSync) bool {
		return slices.Contains(r.DeviceLists.Changed, alice.c.UserID)
	})
	wantDevicesOf(t, ctx, alice.c, bob.c.UserID, bob)
	wantDevicesOf(t, ctx, bob.c, alice.c.UserID, alice)

	// A → B.
	bobOTKs := bob.otks
	sent := alice.sendEncrypted(t, ctx, room, []id.UserID{alice.c.UserID, bob.c.UserID}, "the secret from A is 42")
	if got := bob.decrypt(t, ctx, sent); got != "the secret from A is 42" {
		t.Fatalf("bob decrypted %q", got)
	}
	if bob.otks != bobOTKs-1 {
		t.Errorf("bob's one-time keys went from %d to %d, want one claimed (by A, over federation)", bobOTKs, bob.otks)
	}

	// B → A. Bob's machine answers over the Olm session alice opened (an
	// Olm session works both ways), so it claims nothing: bob's client
	// claims one of alice's one-time keys itself, which B asks A for.
	aliceOTKs := alice.otks
	claimed, err := bob.c.ClaimKeys(ctx, &mautrix.ReqClaimKeys{
		OneTimeKeys: mautrix.OneTimeKeysRequest{alice.c.UserID: {alice.c.DeviceID: id.KeyAlgorithmSignedCurve25519}},
		Timeout:     10000,
	})
	if err != nil {
		t.Fatalf("bob claims a one-time key of alice's device: %v", err)
	}
	if keys := claimed.OneTimeKeys[alice.c.UserID][alice.c.DeviceID]; len(keys) != 1 {
		t.Fatalf("bob's claim of alice's device got %v (failures %v), want one signed_curve25519 key", keys, claimed.Failures)
	}
	testutil.EventuallyState(t, deliveryLimit, func() (bool, string) {
		if alice.otks == aliceOTKs-1 {
			return true, ""
		}
		alice.pull(t, ctx)
		return false, fmt.Sprintf("alice's one-time keys went from %d to %d, want one claimed (by B, over federation)", aliceOTKs, alice.otks)
	})
	sent = bob.sendEncrypted(t, ctx, room, []id.UserID{alice.c.UserID, bob.c.UserID}, "the secret from B is 43")
	if got := alice.decrypt(t, ctx, sent); got != "the secret from B is 43" {
		t.Fatalf("alice decrypted %q", got)
	}

	// Bob's new device: an m.device_list_update from B tells A.
	second, err := p.b.login(t, ctx, bobName, password(bobName))
	if err != nil {
		t.Fatalf("bob's second login: %v", err)
	}
	bob2 := newFedCrypto(t, ctx, second, rooms)
	alice.until(t, ctx, bob.c.UserID.String()+" in device_lists.changed after the new device", func(r *mautrix.RespSync) bool {
		return slices.Contains(r.DeviceLists.Changed, bob.c.UserID)
	})
	wantDevicesOf(t, ctx, alice.c, bob.c.UserID, bob, bob2)

	// A new session (mautrix shares an existing one only once), shared
	// with both of bob's devices: the new one decrypts.
	if err := alice.mach.CryptoStore.RemoveOutboundGroupSession(ctx, room); err != nil {
		t.Fatal(err)
	}
	sent = alice.sendEncrypted(t, ctx, room, []id.UserID{alice.c.UserID, bob.c.UserID}, "for both of bob's devices")
	for _, d := range []*fedCrypto{bob2, bob} {
		if got := d.decrypt(t, ctx, sent); got != "for both of bob's devices" {
			t.Fatalf("bob's device %s decrypted %q", d.c.DeviceID, got)
		}
	}
}
