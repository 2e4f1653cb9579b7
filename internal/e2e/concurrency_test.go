package e2e_test

import (
	"fmt"
	"slices"
	"sync"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// TestConcurrentSends has several clients send into one room at once, and
// one client race the same transaction against itself: every message is
// in the timeline exactly once, in the same order both ways, and the raced
// transaction produced a single event.
func TestConcurrentSends(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		const senders, perSender = 4, 10
		owner := srv.register(t, ctx, "owner")
		room := createRoom(t, ctx, owner, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		clients := []*mautrix.Client{owner}
		for i := 1; i < senders; i++ {
			c := srv.register(t, ctx, "sender"+itoa(i))
			join(t, ctx, c, room.String())
			clients = append(clients, c)
		}

		var mu sync.Mutex
		var sent []id.EventID
		var errs []error
		var wg sync.WaitGroup
		for i, c := range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for j := range perSender {
					resp, err := c.SendMessageEvent(ctx, room, event.EventMessage,
						map[string]any{"msgtype": "m.text", "body": fmt.Sprintf("%d/%d", i, j)},
						mautrix.ReqSendEvent{TransactionID: fmt.Sprintf("c%d-%d", i, j)})
					mu.Lock()
					if err != nil {
						errs = append(errs, err)
					} else {
						sent = append(sent, resp.EventID)
					}
					mu.Unlock()
				}
			}()
		}
		// The same transaction, five times at once, from one device.
		raced := make([]id.EventID, 5)
		for k := range raced {
			wg.Add(1)
			go func() {
				defer wg.Done()
				resp, err := owner.SendMessageEvent(ctx, room, event.EventMessage,
					map[string]any{"msgtype": "m.text", "body": "raced"}, mautrix.ReqSendEvent{TransactionID: "raced"})
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					errs = append(errs, err)
					return
				}
				raced[k] = resp.EventID
			}()
		}
		wg.Wait()
		if len(errs) > 0 {
			t.Fatalf("%d concurrent sends failed, first: %v", len(errs), errs[0])
		}
		for _, e := range raced[1:] {
			if e != raced[0] {
				t.Fatalf("one transaction sent concurrently gave different events: %v", raced)
			}
		}
		sent = append(sent, raced[0])

		back := paginate(t, ctx, owner, room, mautrix.DirectionBackward, 7)
		got := ids(back, "m.room.message")
		if !sameSet(got, sent) || len(got) != senders*perSender+1 {
			t.Fatalf("timeline has %d messages, want the %d sent (%d distinct ids returned)", len(got), len(sent), len(sent))
		}
		fwd := paginate(t, ctx, owner, room, mautrix.DirectionForward, 7)
		if !slices.Equal(ids(fwd, ""), reversed(ids(back, ""))) {
			t.Fatalf("forward and backward timelines differ under concurrent sends")
		}
		// Each sender's own messages keep their order.
		for i := range clients {
			var last = -1
			for _, ev := range fwd {
				var ci, cj int
				if b, _ := ev.Content.Raw["body"].(string); ev.Type == event.EventMessage && b != "raced" {
					if _, err := fmt.Sscanf(b, "%d/%d", &ci, &cj); err != nil {
						t.Fatalf("unexpected body %q", b)
					}
					if ci == i {
						if cj != last+1 {
							t.Fatalf("sender %d's messages out of order: %d after %d", i, cj, last)
						}
						last = cj
					}
				}
			}
		}
	})
}
