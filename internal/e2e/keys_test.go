//go:build goolm

package e2e_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// roomsState is what mautrix's OlmMachine needs to know about rooms: every
// room of these tests is encrypted and shared by everyone in it.
type roomsState struct{ rooms []id.RoomID }

func (s *roomsState) IsEncrypted(context.Context, id.RoomID) (bool, error) { return true, nil }
func (s *roomsState) GetEncryptionEvent(context.Context, id.RoomID) (*event.EncryptionEventContent, error) {
	return &event.EncryptionEventContent{Algorithm: id.AlgorithmMegolmV1}, nil
}
func (s *roomsState) GetHistoryVisibility(context.Context, id.RoomID) (*event.HistoryVisibilityEventContent, error) {
	return &event.HistoryVisibilityEventContent{HistoryVisibility: event.HistoryVisibilityShared}, nil
}
func (s *roomsState) FindSharedRooms(context.Context, id.UserID) ([]id.RoomID, error) {
	return s.rooms, nil
}

// cryptoClient is a client with mautrix's real E2EE machinery (goolm) on an
// in-memory crypto store.
type cryptoClient struct {
	c    *mautrix.Client
	mach *crypto.OlmMachine
}

func newCryptoClient(t *testing.T, ctx context.Context, srv *server, localpart string, rooms *roomsState) *cryptoClient {
	t.Helper()
	c := srv.register(t, ctx, localpart)
	mach := crypto.NewOlmMachine(c, nil, crypto.NewMemoryStore(nil), rooms)
	if err := mach.Load(ctx); err != nil {
		t.Fatalf("%s: load olm machine: %v", localpart, err)
	}
	// Uploads the device keys and a batch of one-time keys.
	if err := mach.ShareKeys(ctx, -1); err != nil {
		t.Fatalf("%s: share keys: %v", localpart, err)
	}
	return &cryptoClient{c: c, mach: mach}
}

// TestE2EEncryptedMessage: two clients running mautrix's crypto upload keys,
// one shares a Megolm session over Olm (query, claim, to-device) and sends
// an encrypted message, the other decrypts it from its sync.
func TestE2EEncryptedMessage(t *testing.T) {
	runDeployments(t, []string{engineSQLite, engineFleetRouter}, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		rooms := &roomsState{}
		alice := newCryptoClient(t, ctx, srv, "alice", rooms)
		bob := newCryptoClient(t, ctx, srv, "bob", rooms)

		// The server serves what mautrix uploaded.
		q, err := alice.c.QueryKeys(ctx, &mautrix.ReqQueryKeys{DeviceKeys: mautrix.DeviceKeysRequest{bob.c.UserID: nil}})
		if err != nil {
			t.Fatalf("query keys: %v", err)
		}
		bobKeys := q.DeviceKeys[bob.c.UserID][bob.c.DeviceID]
		if bobKeys.Keys.GetEd25519(bob.c.DeviceID) != bob.mach.OwnIdentity().SigningKey {
			t.Fatalf("queried keys of bob's device: %+v", q.DeviceKeys)
		}

		aliceSync, _ := newSyncer(t, ctx, alice.c, "")
		bobSync, first := newSyncer(t, ctx, bob.c, "")
		otks := first.DeviceOTKCount.SignedCurve25519
		if otks == 0 {
			t.Fatalf("bob's sync reports no one-time keys: %+v", first.DeviceOTKCount)
		}

		roomID := createRoom(t, ctx, alice.c, &mautrix.ReqCreateRoom{
			Preset: "private_chat",
			InitialState: []*event.Event{{Type: event.StateEncryption, StateKey: new(string),
				Content: event.Content{Parsed: &event.EncryptionEventContent{Algorithm: id.AlgorithmMegolmV1}}}},
		})
		rooms.rooms = []id.RoomID{roomID}
		invite(t, ctx, alice.c, roomID, bob.c.UserID)
		join(t, ctx, bob.c, roomID.String())

		// Bob joining alice's room puts his devices on alice's list.
		aliceSync.until(t, ctx, "bob in device_lists.changed", func(r *mautrix.RespSync) bool {
			return slices.Contains(r.DeviceLists.Changed, bob.c.UserID)
		})

		if err := alice.mach.ShareGroupSession(ctx, roomID, []id.UserID{alice.c.UserID, bob.c.UserID}); err != nil {
			t.Fatalf("share group session: %v", err)
		}
		content, err := alice.mach.EncryptMegolmEvent(ctx, roomID, event.EventMessage,
			&event.MessageEventContent{MsgType: event.MsgText, Body: "the secret is 42"})
		if err != nil {
			t.Fatalf("encrypt: %v", err)
		}
		sent, err := alice.c.SendMessageEvent(ctx, roomID, event.EventEncrypted, content)
		if err != nil {
			t.Fatalf("send encrypted: %v", err)
		}

		// Bob follows his sync: the room key comes as an Olm to-device
		// message, the message in the timeline, in either order.
		var encrypted *event.Event
		var plain *event.Event
		deadline := time.Now().Add(waitLimit)
		lastCount := otks
		for plain == nil && time.Now().Before(deadline) {
			since := bobSync.since
			resp := bobSync.next(t, ctx, pollTimeout)
			bob.mach.ProcessSyncResponse(ctx, resp, since)
			if resp.DeviceOTKCount.SignedCurve25519 != 0 {
				lastCount = resp.DeviceOTKCount.SignedCurve25519
			}
			if jr := resp.Rooms.Join[roomID]; jr != nil {
				for _, evt := range jr.Timeline.Events {
					if evt.ID == sent.EventID {
						evt.RoomID = roomID
						encrypted = evt
					}
				}
			}
			if encrypted == nil {
				continue
			}
			if err := encrypted.Content.ParseRaw(encrypted.Type); err != nil && !isAlreadyParsed(err) {
				t.Fatalf("parse encrypted event: %v", err)
			}
			if dec, err := bob.mach.DecryptMegolmEvent(ctx, encrypted); err == nil {
				plain = dec
			}
		}
		if plain == nil {
			t.Fatalf("bob could not decrypt the message within %v (event seen: %v)", waitLimit, encrypted != nil)
		}
		if body := plain.Content.AsMessage().Body; body != "the secret is 42" {
			t.Fatalf("decrypted body %q", body)
		}
		// Alice's Olm session with bob used one of his one-time keys.
		if lastCount != otks-1 {
			t.Errorf("bob's one-time keys went from %d to %d, want one claimed", otks, lastCount)
		}
	})
}

func isAlreadyParsed(err error) bool { return errors.Is(err, event.ErrContentAlreadyParsed) }
