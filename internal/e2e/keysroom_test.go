//go:build goolm

package e2e_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto/backup"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// TestE2EEncryptedRoomLifecycle runs mautrix's real crypto (goolm) through
// the life of an encrypted room on one server per deployment, the
// PostgreSQL monolith included: alice shares a Megolm session with bob and
// carol; carol leaves and alice's next message goes out under a new session
// carol never receives; alice backs the room keys up and a new device of
// hers restores them from the backup and decrypts the room's history.
// Everything shares one server per engine because the crypto flow is the
// slow part of the suite.
func TestE2EEncryptedRoomLifecycle(t *testing.T) {
	runDeployments(t, []string{engineSQLite, enginePostgres, engineFleetRouter}, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		rooms := &roomsState{}
		alice := newCryptoClient(t, ctx, srv, "alice", rooms)
		bob := newCryptoClient(t, ctx, srv, "bob", rooms)
		carol := newCryptoClient(t, ctx, srv, "carol", rooms)
		aliceSync, _ := newSyncer(t, ctx, alice.c, "")
		bobSync, _ := newSyncer(t, ctx, bob.c, "")
		carolSync, _ := newSyncer(t, ctx, carol.c, "")

		roomID := createRoom(t, ctx, alice.c, &mautrix.ReqCreateRoom{
			Preset: "private_chat",
			InitialState: []*event.Event{{Type: event.StateEncryption, StateKey: new(string),
				Content: event.Content{Parsed: &event.EncryptionEventContent{Algorithm: id.AlgorithmMegolmV1}}}},
		})
		rooms.rooms = []id.RoomID{roomID}
		for _, c := range []*cryptoClient{bob, carol} {
			invite(t, ctx, alice.c, roomID, c.c.UserID)
			join(t, ctx, c.c, roomID.String())
		}

		sendEncrypted := func(to []id.UserID, body string) (id.EventID, id.SessionID) {
			t.Helper()
			if err := alice.mach.ShareGroupSession(ctx, roomID, to); err != nil {
				t.Fatalf("share group session: %v", err)
			}
			content, err := alice.mach.EncryptMegolmEvent(ctx, roomID, event.EventMessage,
				&event.MessageEventContent{MsgType: event.MsgText, Body: body})
			if err != nil {
				t.Fatalf("encrypt: %v", err)
			}
			sent, err := alice.c.SendMessageEvent(ctx, roomID, event.EventEncrypted, content)
			if err != nil {
				t.Fatalf("send encrypted: %v", err)
			}
			return sent.EventID, content.SessionID
		}

		first, firstSession := sendEncrypted([]id.UserID{alice.c.UserID, bob.c.UserID, carol.c.UserID}, "before carol left")
		decryptFromSync(t, ctx, bob, bobSync, roomID, first, "before carol left")
		decryptFromSync(t, ctx, carol, carolSync, roomID, first, "before carol left")

		// Carol leaves. Alice's client learns it from her sync and drops
		// its outbound session, as every client must.
		if _, err := carol.c.LeaveRoom(ctx, roomID); err != nil {
			t.Fatalf("carol leaves: %v", err)
		}
		aliceSync.until(t, ctx, "carol's leave", func(r *mautrix.RespSync) bool {
			for _, evt := range timelineOf(r, roomID) {
				if evt.Type == event.StateMember && evt.GetStateKey() == carol.c.UserID.String() {
					evt.RoomID = roomID
					if err := evt.Content.ParseRaw(evt.Type); err != nil && !isAlreadyParsed(err) {
						t.Fatalf("parse member event: %v", err)
					}
					if evt.Content.AsMember().Membership == event.MembershipLeave {
						alice.mach.HandleMemberEvent(ctx, evt)
						return true
					}
				}
			}
			return false
		})

		second, secondSession := sendEncrypted([]id.UserID{alice.c.UserID, bob.c.UserID}, "after carol left")
		if secondSession == firstSession {
			t.Fatalf("the session did not rotate after carol left: both messages under %s", secondSession)
		}
		decryptFromSync(t, ctx, bob, bobSync, roomID, second, "after carol left")
		// Everything alice sent was on the server before bob could decrypt;
		// carol's sync now holds all the to-device messages she will ever get.
		carol.mach.ProcessSyncResponse(ctx, carolSync.next(t, ctx, 0), "")
		if igs, err := carol.mach.CryptoStore.GetGroupSession(ctx, roomID, secondSession); err != nil || igs != nil {
			t.Fatalf("carol holds the session created after she left: %v, %v", igs, err)
		}
		if igs, err := carol.mach.CryptoStore.GetGroupSession(ctx, roomID, firstSession); err != nil || igs == nil {
			t.Fatalf("carol lost the session from before she left: %v", err)
		}

		// Alice backs both sessions up, as her client does for every
		// inbound session it holds.
		bk, err := backup.NewMegolmBackupKey()
		if err != nil {
			t.Fatal(err)
		}
		ver, err := alice.c.CreateKeyBackupVersion(ctx, &mautrix.ReqRoomKeysVersionCreate[backup.MegolmAuthData]{
			Algorithm: id.KeyBackupAlgorithmMegolmBackupV1,
			AuthData:  backup.MegolmAuthData{PublicKey: id.Ed25519(base64.RawStdEncoding.EncodeToString(bk.PublicKey().Bytes()))},
		})
		if err != nil {
			t.Fatalf("create backup version: %v", err)
		}
		for _, sessionID := range []id.SessionID{firstSession, secondSession} {
			igs, err := alice.mach.CryptoStore.GetGroupSession(ctx, roomID, sessionID)
			if err != nil || igs == nil {
				t.Fatalf("alice's inbound session %s: %v", sessionID, err)
			}
			index := igs.Internal.FirstKnownIndex()
			exported, err := igs.Internal.Export(index)
			if err != nil {
				t.Fatal(err)
			}
			enc, err := backup.EncryptSessionData(bk, backup.MegolmSessionData{
				Algorithm:         id.AlgorithmMegolmV1,
				SenderKey:         igs.SenderKey,
				SenderClaimedKeys: backup.SenderClaimedKeys{Ed25519: igs.SigningKey},
				SessionKey:        string(exported),
			})
			if err != nil {
				t.Fatal(err)
			}
			data, _ := json.Marshal(enc)
			if _, err := alice.c.PutKeysInBackupForRoomAndSession(ctx, ver.Version, roomID, sessionID,
				&mautrix.ReqKeyBackupData{FirstMessageIndex: int(index), IsVerified: true, SessionData: data}); err != nil {
				t.Fatalf("back up session %s: %v", sessionID, err)
			}
		}

		// A new device of alice's, knowing only the backup key, restores
		// the keys and reads the history.
		newDevice := srv.mustLogin(t, ctx, "alice", password("alice"))
		restored := newCryptoClientFor(t, ctx, newDevice, rooms)
		if v, err := restored.mach.DownloadAndStoreLatestKeyBackup(ctx, bk); err != nil || v != ver.Version {
			t.Fatalf("restore from backup: version %q, %v; want %q", v, err, ver.Version)
		}
		history := paginate(t, ctx, newDevice, roomID, mautrix.DirectionBackward, 50)
		for eventID, want := range map[id.EventID]string{first: "before carol left", second: "after carol left"} {
			evt := findEvent(history, eventID)
			if evt == nil {
				t.Fatalf("event %s not in the history of the new device", eventID)
			}
			if got := decrypt(t, ctx, restored, roomID, evt); got != want {
				t.Fatalf("new device decrypted %s as %q, want %q", eventID, got, want)
			}
		}
	})
}

// newCryptoClientFor puts mautrix's crypto machine on an existing login.
func newCryptoClientFor(t *testing.T, ctx context.Context, c *mautrix.Client, rooms *roomsState) *cryptoClient {
	t.Helper()
	cc := &cryptoClient{c: c}
	cc.mach = newOlmMachine(t, ctx, c, rooms)
	return cc
}

// decrypt decrypts one m.room.encrypted event with what the client's
// crypto store holds; "" when it cannot.
func decrypt(t *testing.T, ctx context.Context, c *cryptoClient, roomID id.RoomID, evt *event.Event) string {
	t.Helper()
	evt.RoomID = roomID
	if err := evt.Content.ParseRaw(evt.Type); err != nil && !isAlreadyParsed(err) {
		t.Fatalf("parse encrypted event: %v", err)
	}
	dec, err := c.mach.DecryptMegolmEvent(ctx, evt)
	if err != nil {
		return ""
	}
	return dec.Content.AsMessage().Body
}

// decryptFromSync follows c's sync, feeding it to the crypto machine,
// until the event arrives and decrypts to want (the room key comes as an
// Olm to-device message, before or after the event).
func decryptFromSync(t *testing.T, ctx context.Context, c *cryptoClient, s *syncer, roomID id.RoomID, eventID id.EventID, want string) {
	t.Helper()
	var encrypted *event.Event
	deadline := time.Now().Add(waitLimit)
	for time.Now().Before(deadline) {
		since := s.since
		resp := s.next(t, ctx, pollTimeout)
		c.mach.ProcessSyncResponse(ctx, resp, since)
		if encrypted == nil {
			encrypted = findEvent(timelineOf(resp, roomID), eventID)
		}
		if encrypted == nil {
			continue
		}
		if got := decrypt(t, ctx, c, roomID, encrypted); got != "" {
			if got != want {
				t.Fatalf("%s decrypted %q, want %q", c.c.UserID, got, want)
			}
			return
		}
	}
	t.Fatalf("%s could not decrypt %s within %v (event seen: %v)", c.c.UserID, eventID, waitLimit, encrypted != nil)
}
