package e2e_test

import (
	"slices"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
)

// TestSyncTyping: typing shows in the other members' ephemeral section; an
// explicit stop clears it; a short timeout expires on its own.
func TestSyncTyping(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		alice := srv.register(t, ctx, "alice")
		bob := srv.register(t, ctx, "bob")
		room := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		join(t, ctx, bob, room.String())
		bs, _ := newSyncer(t, ctx, bob, "")
		typing := func(on bool, timeout time.Duration) {
			t.Helper()
			if _, err := alice.UserTyping(ctx, room, on, timeout); err != nil {
				t.Fatalf("typing %v: %v", on, err)
			}
		}
		typers := func(want []string) func(*mautrix.RespSync) bool {
			return func(r *mautrix.RespSync) bool {
				u, ok := typingUsers(r, room)
				return ok && slices.Equal(u, want)
			}
		}

		typing(true, 30*time.Second)
		if u, ok := typingUsers(bs.next(t, ctx, 0), room); !ok || !slices.Equal(u, users(alice.UserID)) {
			t.Fatalf("after alice starts typing bob sees %v (m.typing present %v), want [alice]", u, ok)
		}
		// An initial sync shows who is typing now.
		if u, ok := typingUsers(doSync(t, ctx, bob, syncParams{}), room); !ok || !slices.Equal(u, users(alice.UserID)) {
			t.Fatalf("bob's initial sync shows typing %v, want [alice]", u)
		}
		typing(false, 0)
		if u, ok := typingUsers(bs.next(t, ctx, 0), room); !ok || len(u) != 0 {
			t.Fatalf("after alice stops typing bob sees %v (m.typing present %v), want an empty m.typing", u, ok)
		}

		// A one-second timeout: seen, then gone without another request.
		typing(true, time.Second)
		if u, ok := typingUsers(bs.next(t, ctx, 0), room); !ok || !slices.Equal(u, users(alice.UserID)) {
			t.Fatalf("short typing: bob sees %v, want [alice]", u)
		}
		bs.until(t, ctx, "alice's typing expiring", typers([]string{}))
	})
}

// TestSyncReceiptsAndReadMarkers: a public read receipt reaches the other
// member, a private one only its sender, and /read_markers sets
// m.fully_read in the room's account data.
func TestSyncReceiptsAndReadMarkers(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		alice := srv.register(t, ctx, "alice")
		bob := srv.register(t, ctx, "bob")
		room := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		join(t, ctx, bob, room.String())
		e1 := send(t, ctx, alice, room, "one", "one")
		e2 := send(t, ctx, alice, room, "two", "two")
		e3 := send(t, ctx, alice, room, "three", "three")
		as, _ := newSyncer(t, ctx, alice, "")
		bs, _ := newSyncer(t, ctx, bob, "")

		if err := bob.SendReceipt(ctx, room, e1, event.ReceiptTypeRead, nil); err != nil {
			t.Fatalf("m.read receipt: %v", err)
		}
		if !hasReceipt(as.next(t, ctx, 0), room, e1, "m.read", bob.UserID) {
			t.Fatalf("alice's sync lacks bob's m.read on e1")
		}

		// Private: bob sees it, alice does not. Bob's public receipt after
		// it marks where alice's stream must have passed it.
		if err := bob.SendReceipt(ctx, room, e2, event.ReceiptTypeReadPrivate, nil); err != nil {
			t.Fatalf("m.read.private receipt: %v", err)
		}
		if !hasReceipt(bs.next(t, ctx, 0), room, e2, "m.read.private", bob.UserID) {
			t.Fatalf("bob's own sync lacks his m.read.private on e2")
		}
		if err := bob.SendReceipt(ctx, room, e3, event.ReceiptTypeRead, nil); err != nil {
			t.Fatalf("m.read receipt: %v", err)
		}
		as.until(t, ctx, "bob's m.read on e3", func(r *mautrix.RespSync) bool {
			if slices.Contains(receiptTypes(r, room), "m.read.private") {
				t.Fatalf("alice's sync shows a private receipt: %v", ephemeralOf(r, room, "m.receipt"))
			}
			return hasReceipt(r, room, e3, "m.read", bob.UserID)
		})

		// Read markers: m.fully_read in bob's room account data; the m.read
		// given alongside reaches alice.
		e4 := send(t, ctx, alice, room, "four", "four")
		if err := bob.SetReadMarkers(ctx, room, map[string]any{"m.fully_read": e4, "m.read": e4}); err != nil {
			t.Fatalf("/read_markers: %v", err)
		}
		resp := bs.until(t, ctx, "m.fully_read", func(r *mautrix.RespSync) bool {
			jr := r.Rooms.Join[room]
			return jr != nil && accountDataOf(jr.AccountData.Events, "m.fully_read") != nil
		})
		if got := accountDataOf(resp.Rooms.Join[room].AccountData.Events, "m.fully_read"); got["event_id"] != e4.String() {
			t.Fatalf("m.fully_read = %v, want event_id %s", got, e4)
		}
		as.until(t, ctx, "bob's m.read on e4 from /read_markers", func(r *mautrix.RespSync) bool {
			return hasReceipt(r, room, e4, "m.read", bob.UserID)
		})
		// An initial sync carries the current receipts, public only.
		initial := doSync(t, ctx, alice, syncParams{})
		if !hasReceipt(initial, room, e4, "m.read", bob.UserID) || slices.Contains(receiptTypes(initial, room), "m.read.private") {
			t.Fatalf("alice's initial sync receipts = %v, want bob's m.read on e4 and nothing private", ephemeralOf(initial, room, "m.receipt"))
		}
		if !hasReceipt(doSync(t, ctx, bob, syncParams{}), room, e2, "m.read.private", bob.UserID) {
			t.Fatalf("bob's initial sync lacks his own private receipt")
		}
		// Another user's account data never leaks.
		resp = as.next(t, ctx, 0)
		if jr := resp.Rooms.Join[room]; jr != nil && accountDataOf(jr.AccountData.Events, "m.fully_read") != nil {
			t.Fatalf("alice's sync shows bob's m.fully_read")
		}
	})
}
