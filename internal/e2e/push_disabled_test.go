package e2e_test

import (
	"encoding/json"
	"net/http"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
)

// TestPushDisabled: with push.enabled false (Synapse's key) a send is not
// evaluated, so a message that would notify (a one-to-one room) lists no
// notification. The push actions are written before the send is
// acknowledged, so /notifications right after it is conclusive.
func TestPushDisabled(t *testing.T) {
	t.Parallel()
	off := func(cfg map[string]any) { cfg["push"] = map[string]any{"enabled": false} }
	runDeployments(t, []string{engineSQLite}, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		alice := srv.register(t, ctx, "pdalice")
		bob := srv.register(t, ctx, "pdbob")
		room := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "private_chat", Invite: []id.UserID{bob.UserID}})
		join(t, ctx, bob, room.String())
		send(t, ctx, alice, room, "hello bob", "pd1")
		r := srv.do(t, ctx, "GET", "/_matrix/client/v3/notifications", bob.AccessToken, nil)
		var body struct {
			Notifications []json.RawMessage `json:"notifications"`
		}
		if r.status != http.StatusOK || json.Unmarshal(r.body, &body) != nil || len(body.Notifications) != 0 {
			t.Fatalf("notifications with push.enabled false: %d %s", r.status, r.body)
		}
	}, off)
}
