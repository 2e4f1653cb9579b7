package e2e_test

import (
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
)

// TestRateLimit runs a server with rc_message at 0.1/s and a burst of 2:
// a user's third message-like request in a row is refused with 429
// M_LIMIT_EXCEEDED and retry_after_ms, and the limit is per user.
func TestRateLimit(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		limited := srv.register(t, ctx, "limited")
		other := srv.register(t, ctx, "other")

		// Like Synapse, createRoom is itself rate limited by rc_message, so
		// it may take one of the two tokens; the first send must still
		// pass, and one of the next two must be refused.
		room := createRoom(t, ctx, limited, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		sendPath := func(i int) string {
			return clientPath("rooms", room.String(), "send", "m.room.message", "rl-"+itoa(i))
		}
		content := map[string]any{"msgtype": "m.text", "body": "spam"}
		if r := srv.doJSON(t, ctx, "PUT", sendPath(0), limited.AccessToken, content); r.status != 200 {
			t.Fatalf("first send: %d %s", r.status, truncate(r.body))
		}
		var refused *response
		refusedAt := 0
		for i := 1; i <= 2 && refused == nil; i++ {
			r := srv.doJSON(t, ctx, "PUT", sendPath(i), limited.AccessToken, content)
			switch r.status {
			case 200:
			case 429:
				refused, refusedAt = &r, i
			default:
				t.Fatalf("send %d: %d %s", i, r.status, truncate(r.body))
			}
		}
		if refused == nil {
			t.Fatalf("three requests within the burst of 2 all passed")
		}
		m := wantRawError(t, *refused, 429, "M_LIMIT_EXCEEDED")
		if ms, ok := m["retry_after_ms"].(float64); !ok || ms <= 0 || ms != float64(int64(ms)) {
			t.Fatalf("retry_after_ms = %v, want a positive integer", m["retry_after_ms"])
		}
		// A refused transaction is not remembered: retrying it is refused
		// again rather than answered with an event id.
		if r := srv.doJSON(t, ctx, "PUT", sendPath(refusedAt), limited.AccessToken, content); r.status != 429 {
			t.Fatalf("retried refused send: %d %s, want 429", r.status, truncate(r.body))
		}

		// Another user has a bucket of their own.
		otherRoom := createRoom(t, ctx, other, &mautrix.ReqCreateRoom{Preset: "private_chat"})
		if _, err := other.SendMessageEvent(ctx, otherRoom, event.EventMessage, content); err != nil {
			t.Fatalf("another user's send: %v", err)
		}
	}, withMessageRateLimit(0.1, 2))
}
