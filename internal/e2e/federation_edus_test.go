package e2e_test

import (
	"encoding/json"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"ganglion/internal/testutil"
	"ganglion/internal/testutil/testca"
)

// edusOf returns the content of the EDUs of type typ the remote
// acknowledged.
func (r *fakeRemote) edusOf(typ string) []map[string]any {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []map[string]any
	for _, raw := range r.edus {
		var e struct {
			Type    string         `json:"edu_type"`
			Content map[string]any `json:"content"`
		}
		if json.Unmarshal(raw, &e) == nil && e.Type == typ {
			out = append(out, e.Content)
		}
	}
	return out
}

func jsonAt(v any, path ...string) any {
	for _, k := range path {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}

// TestFederationSendersDeliverEDUs: on the fleet with two federation
// sender workers, a client's typing, read receipt and to-device message to
// a remote user reach the remote server (over TLS, X-Matrix signed) as
// m.typing, m.receipt and m.direct_to_device EDUs.
func TestFederationSendersDeliverEDUs(t *testing.T) {
	ca := testca.New(t)
	remote := startFakeRemote(t, ca)
	srv := startFleetServer(t,
		withKey("federation_sender_instances", []string{"fed1", "fed2"}),
		withKey("federation_custom_ca_list", []string{ca.WriteCA(t, t.TempDir())}),
		withKey("ip_range_whitelist", []string{"127.0.0.1"}),
		withKey("federation", map[string]any{"destination_min_retry_interval": "100ms", "destination_max_retry_interval": "400ms"}),
	)
	f := srv.fleet
	remote.serve(serverName, ourKeys{url: f.clientURL(instMain)})
	ctx := testContext(t)

	alice := srv.register(t, ctx, "fededu-alice")
	roomID := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	db := fleetDB(t, f)
	bob := "@bob:" + remote.name
	if _, err := db.Exec(ctx, `INSERT INTO current_state (room_id, type, state_key, event_id, stream_ordering, membership)
		VALUES ($1, 'm.room.member', $2, '$fixture-remote-join', 0, 'join')`, roomID.String(), bob); err != nil {
		t.Fatalf("insert the remote member: %v", err)
	}
	// A membership event makes the senders look at the room's servers
	// again; the message after it arriving means they did.
	if err := alice.SetDisplayName(ctx, "Alice"); err != nil {
		t.Fatal(err)
	}
	msg, err := alice.SendText(ctx, roomID, "hello bob")
	if err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 45*time.Second, "the message at the remote", func() bool {
		for _, id := range remote.received() {
			if id == msg.EventID.String() {
				return true
			}
		}
		return false
	})

	if _, err := alice.UserTyping(ctx, roomID, true, 30*time.Second); err != nil {
		t.Fatalf("typing: %v", err)
	}
	if err := alice.SendReceipt(ctx, roomID, msg.EventID, event.ReceiptTypeRead, nil); err != nil {
		t.Fatalf("receipt: %v", err)
	}
	if _, err := alice.SendToDevice(ctx, event.NewEventType("org.example.ping"), &mautrix.ReqSendToDevice{
		Messages: map[id.UserID]map[id.DeviceID]*event.Content{
			id.UserID(bob): {"BOBDEV": {Raw: map[string]any{"ping": "over federation"}}},
		}}); err != nil {
		t.Fatalf("send to-device: %v", err)
	}
	me := alice.UserID.String()
	testutil.Eventually(t, 45*time.Second, "m.typing at the remote", func() bool {
		for _, c := range remote.edusOf("m.typing") {
			if c["room_id"] == roomID.String() && c["user_id"] == me && c["typing"] == true {
				return true
			}
		}
		return false
	})
	testutil.Eventually(t, 45*time.Second, "m.receipt at the remote", func() bool {
		for _, c := range remote.edusOf("m.receipt") {
			ids, _ := jsonAt(c, roomID.String(), "m.read", me, "event_ids").([]any)
			if len(ids) == 1 && ids[0] == msg.EventID.String() && jsonAt(c, roomID.String(), "m.read", me, "data", "ts") != nil {
				return true
			}
		}
		return false
	})
	testutil.Eventually(t, 45*time.Second, "m.direct_to_device at the remote", func() bool {
		for _, c := range remote.edusOf("m.direct_to_device") {
			if c["sender"] == me && c["type"] == "org.example.ping" && c["message_id"] != "" &&
				jsonAt(c, "messages", bob, "BOBDEV", "ping") == "over federation" {
				return true
			}
		}
		return false
	})
	var queued int
	testutil.Eventually(t, 30*time.Second, "the EDU queue emptied", func() bool {
		return db.Reader().QueryRowContext(ctx, `SELECT count(*) FROM federation_edu_outbox`).Scan(&queued) == nil && queued == 0
	})
	remote.mu.Lock()
	defer remote.mu.Unlock()
	if len(remote.refused) > 0 {
		t.Errorf("the remote refused requests: %q", remote.refused)
	}
}
