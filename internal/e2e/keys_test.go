//go:build goolm

package e2e_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"slices"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/crypto/backup"
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
	return &cryptoClient{c: c, mach: newOlmMachine(t, ctx, c, rooms)}
}

// newOlmMachine starts mautrix's crypto machine for the login c and
// uploads its device keys and a batch of one-time keys.
func newOlmMachine(t *testing.T, ctx context.Context, c *mautrix.Client, rooms *roomsState) *crypto.OlmMachine {
	t.Helper()
	mach := crypto.NewOlmMachine(c, nil, crypto.NewMemoryStore(nil), rooms)
	if err := mach.Load(ctx); err != nil {
		t.Fatalf("%s: load olm machine: %v", c.UserID, err)
	}
	if err := mach.ShareKeys(ctx, -1); err != nil {
		t.Fatalf("%s: share keys: %v", c.UserID, err)
	}
	return mach
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

// TestE2ECrossSigning: mautrix's cross-signing against the server. The
// first upload of cross-signing keys needs no auth (MSC3967); devices and
// master keys get signed; another user sees the device as cross-signed,
// verifies the user with a user-signing signature only he sees; replacing
// the master key needs the password.
func TestE2ECrossSigning(t *testing.T) {
	runDeployments(t, []string{engineSQLite, enginePostgres, engineFleetRouter}, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		rooms := &roomsState{}
		alice := newCryptoClient(t, ctx, srv, "alice", rooms)
		bob := newCryptoClient(t, ctx, srv, "bob", rooms)
		for _, c := range []*cryptoClient{alice, bob} {
			keys, err := c.mach.GenerateCrossSigningKeys()
			if err != nil {
				t.Fatal(err)
			}
			if err := c.mach.PublishCrossSigningKeys(ctx, keys, nil); err != nil {
				t.Fatalf("%s: first cross-signing upload: %v", c.c.UserID, err)
			}
			if err := c.mach.SignOwnDevice(ctx, c.mach.OwnIdentity()); err != nil {
				t.Fatalf("%s: sign own device: %v", c.c.UserID, err)
			}
			if err := c.mach.SignOwnMasterKey(ctx); err != nil {
				t.Fatalf("%s: sign own master key: %v", c.c.UserID, err)
			}
		}

		devs, err := bob.mach.FetchKeys(ctx, []id.UserID{alice.c.UserID}, true)
		if err != nil {
			t.Fatalf("fetch alice's keys: %v", err)
		}
		dev := devs[alice.c.UserID][alice.c.DeviceID]
		if dev == nil {
			t.Fatalf("alice's device not fetched: %v", devs)
		}
		if trust, err := bob.mach.ResolveTrustContext(ctx, dev); err != nil || trust != id.TrustStateCrossSignedTOFU {
			t.Fatalf("alice's device seen by bob: %v, %v; want cross-signed (TOFU)", trust, err)
		}

		alicePub := alice.mach.CrossSigningKeys.PublicKeys()
		if err := bob.mach.SignUser(ctx, alice.c.UserID, alicePub.MasterKey); err != nil {
			t.Fatalf("bob signs alice: %v", err)
		}
		bobUSK := id.NewKeyID(id.KeyAlgorithmEd25519, bob.mach.CrossSigningKeys.UserSigningKey.PublicKey().String())
		sigOnAlice := func(viewer *cryptoClient) bool {
			q, err := viewer.c.QueryKeys(ctx, &mautrix.ReqQueryKeys{DeviceKeys: mautrix.DeviceKeysRequest{alice.c.UserID: nil}})
			if err != nil {
				t.Fatalf("query: %v", err)
			}
			if q.MasterKeys[alice.c.UserID].Keys[id.NewKeyID(id.KeyAlgorithmEd25519, alicePub.MasterKey.String())] != alicePub.MasterKey {
				t.Fatalf("%s's query: alice's master key %+v", viewer.c.UserID, q.MasterKeys)
			}
			return q.MasterKeys[alice.c.UserID].Signatures[bob.c.UserID][bobUSK] != ""
		}
		if !sigOnAlice(bob) || sigOnAlice(alice) {
			t.Fatalf("bob's signature of alice visible to bob %v, to alice %v; want only bob", sigOnAlice(bob), sigOnAlice(alice))
		}
		if trusted, err := bob.mach.IsUserTrusted(ctx, alice.c.UserID); err != nil || !trusted {
			t.Fatalf("bob trusts alice: %v, %v", trusted, err)
		}

		// Replacing alice's keys: refused without auth, done with it.
		keys2, err := alice.mach.GenerateCrossSigningKeys()
		if err != nil {
			t.Fatal(err)
		}
		if err := alice.mach.PublishCrossSigningKeys(ctx, keys2, nil); err == nil {
			t.Fatal("replacing cross-signing keys without auth succeeded")
		}
		err = alice.mach.PublishCrossSigningKeys(ctx, keys2, func(r *mautrix.RespUserInteractive) any {
			return map[string]any{"type": "m.login.password", "session": r.Session, "password": password("alice"),
				"identifier": map[string]string{"type": "m.id.user", "user": alice.c.UserID.String()}}
		})
		if err != nil {
			t.Fatalf("replacing cross-signing keys with auth: %v", err)
		}
		q, err := bob.c.QueryKeys(ctx, &mautrix.ReqQueryKeys{DeviceKeys: mautrix.DeviceKeysRequest{alice.c.UserID: nil}})
		if err != nil {
			t.Fatal(err)
		}
		newMaster := keys2.MasterKey.PublicKey()
		if q.MasterKeys[alice.c.UserID].Keys[id.NewKeyID(id.KeyAlgorithmEd25519, newMaster.String())] != newMaster ||
			q.MasterKeys[alice.c.UserID].Signatures[bob.c.UserID][bobUSK] != "" {
			t.Fatalf("after replacement bob sees %+v", q.MasterKeys[alice.c.UserID])
		}
	})
}

// TestE2EKeyBackup: a Megolm session key encrypted with mautrix's backup
// code round-trips through /room_keys on any process; writes to an old
// version are refused with the current one named.
func TestE2EKeyBackup(t *testing.T) {
	runDeployments(t, []string{engineSQLite, engineFleet}, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		alice := srv.register(t, ctx, "alice")
		other := srv.client(t, alice.UserID, alice.AccessToken) // another worker on a fleet
		bk, err := backup.NewMegolmBackupKey()
		if err != nil {
			t.Fatal(err)
		}
		create := func() id.KeyBackupVersion {
			t.Helper()
			resp, err := alice.CreateKeyBackupVersion(ctx, &mautrix.ReqRoomKeysVersionCreate[backup.MegolmAuthData]{
				Algorithm: id.KeyBackupAlgorithmMegolmBackupV1,
				AuthData:  backup.MegolmAuthData{PublicKey: id.Ed25519(base64.RawStdEncoding.EncodeToString(bk.PublicKey().Bytes()))},
			})
			if err != nil {
				t.Fatalf("create backup version: %v", err)
			}
			return resp.Version
		}
		v1 := create()
		enc, err := backup.EncryptSessionData(bk, backup.MegolmSessionData{Algorithm: id.AlgorithmMegolmV1,
			SenderKey: "sender", SessionKey: "the session key"})
		if err != nil {
			t.Fatal(err)
		}
		data, _ := json.Marshal(enc)
		roomID := id.RoomID("!backup:" + serverName)
		put, err := alice.PutKeysInBackupForRoomAndSession(ctx, v1, roomID, "sess1",
			&mautrix.ReqKeyBackupData{FirstMessageIndex: 3, SessionData: data})
		if err != nil || put.Count != 1 {
			t.Fatalf("put key: %+v, %v", put, err)
		}
		latest, err := other.GetKeyBackupLatestVersion(ctx)
		if err != nil || latest.Version != v1 || latest.Count != 1 || latest.ETag != put.ETag ||
			latest.Algorithm != id.KeyBackupAlgorithmMegolmBackupV1 {
			t.Fatalf("latest version: %+v, %v", latest, err)
		}
		got, err := other.GetKeyBackupForRoomAndSession(ctx, v1, roomID, "sess1")
		if err != nil || got.FirstMessageIndex != 3 {
			t.Fatalf("get key: %+v, %v", got, err)
		}
		sd, err := got.SessionData.Decrypt(bk)
		if err != nil || sd.SessionKey != "the session key" {
			t.Fatalf("decrypt backed-up key: %+v, %v", sd, err)
		}

		v2 := create()
		_, err = other.PutKeysInBackupForRoomAndSession(ctx, v1, roomID, "sess2", &mautrix.ReqKeyBackupData{SessionData: data})
		wantMatrixError(t, err, 403, "M_WRONG_ROOM_KEYS_VERSION")
		if err := other.DeleteKeyBackupVersion(ctx, v2); err != nil {
			t.Fatalf("delete version: %v", err)
		}
		if latest, err := alice.GetKeyBackupLatestVersion(ctx); err != nil || latest.Version != v1 {
			t.Fatalf("latest after deleting %s: %+v, %v", v2, latest, err)
		}
		_, err = alice.GetKeyBackupVersion(ctx, v2)
		wantMatrixError(t, err, 404, "M_NOT_FOUND")
	})
}
