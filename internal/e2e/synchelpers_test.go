package e2e_test

import (
	"context"
	"encoding/json"
	"net/http/httptrace"
	"slices"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// pollTimeout is the long-poll timeout (ms) of syncs that wait for
// something to arrive: short, so a loop re-checks its condition often, but
// a long-poll, so the loop does not spin.
const pollTimeout = 500

// waitLimit bounds every "sync until" loop.
const waitLimit = 20 * time.Second

// syncParams are one /sync call's query parameters. filter is a filter id
// or inline JSON.
type syncParams struct {
	since       string
	timeout     int // ms
	filter      string
	fullState   bool
	setPresence event.Presence
}

// syncCtx derives the context of one /sync call: the long-poll's timeout
// plus a margin, within the test's deadline. ready, if not nil, is closed
// once the request is on the wire.
func syncCtx(ctx context.Context, timeoutMs int, ready chan<- struct{}) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(ctx, time.Duration(timeoutMs)*time.Millisecond+15*time.Second)
	if ready != nil {
		ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{WroteRequest: func(httptrace.WroteRequestInfo) { close(ready) }})
	}
	return ctx, cancel
}

// syncRaw runs /sync as c through mautrix and returns the error.
func syncRaw(ctx context.Context, c *mautrix.Client, p syncParams, ready chan<- struct{}) (*mautrix.RespSync, error) {
	ctx, cancel := syncCtx(ctx, p.timeout, ready)
	defer cancel()
	return c.FullSyncRequest(ctx, mautrix.ReqSync{
		Timeout: p.timeout, Since: p.since, FilterID: p.filter, FullState: p.fullState, SetPresence: p.setPresence,
	})
}

// doSync is syncRaw that fails the test on error and checks next_batch.
func doSync(t testing.TB, ctx context.Context, c *mautrix.Client, p syncParams) *mautrix.RespSync {
	t.Helper()
	resp, err := syncRaw(ctx, c, p, nil)
	if err != nil {
		t.Fatalf("%s: /sync %+v: %v", c.UserID, p, err)
	}
	if resp.NextBatch == "" {
		t.Fatalf("%s: /sync %+v: no next_batch", c.UserID, p)
	}
	return resp
}

// syncer follows one client's sync stream with one filter.
type syncer struct {
	c      *mautrix.Client
	filter string
	since  string
}

// newSyncer does an initial sync for c and returns a syncer positioned
// after it, and the initial response.
func newSyncer(t testing.TB, ctx context.Context, c *mautrix.Client, filter string) (*syncer, *mautrix.RespSync) {
	t.Helper()
	s := &syncer{c: c, filter: filter}
	resp := doSync(t, ctx, c, syncParams{filter: filter})
	s.since = resp.NextBatch
	return s, resp
}

// next does one incremental sync with a long-poll of timeoutMs and
// advances the position.
func (s *syncer) next(t testing.TB, ctx context.Context, timeoutMs int) *mautrix.RespSync {
	t.Helper()
	resp := doSync(t, ctx, s.c, syncParams{since: s.since, timeout: timeoutMs, filter: s.filter})
	s.since = resp.NextBatch
	return resp
}

// until syncs incrementally until cond accepts a response (every response
// is passed to cond, in order) and returns that response. It fails the
// test after waitLimit.
func (s *syncer) until(t testing.TB, ctx context.Context, what string, cond func(*mautrix.RespSync) bool) *mautrix.RespSync {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for time.Now().Before(deadline) {
		if resp := s.next(t, ctx, pollTimeout); cond(resp) {
			return resp
		}
	}
	t.Fatalf("%s: no sync within %v showed %s", s.c.UserID, waitLimit, what)
	return nil
}

// joinedRoom returns the room's entry in rooms.join, failing if absent.
func joinedRoom(t testing.TB, resp *mautrix.RespSync, roomID id.RoomID) *mautrix.SyncJoinedRoom {
	t.Helper()
	jr := resp.Rooms.Join[roomID]
	if jr == nil {
		t.Fatalf("sync: room %s not in rooms.join (join %v, leave %v, invite %v)",
			roomID, roomKeys(resp.Rooms.Join), roomKeys(resp.Rooms.Leave), roomKeys(resp.Rooms.Invite))
	}
	return jr
}

func roomKeys[V any](m map[id.RoomID]V) []id.RoomID {
	var out []id.RoomID
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// timelineOf is the room's joined timeline events, nil if the room is not
// in rooms.join.
func timelineOf(resp *mautrix.RespSync, roomID id.RoomID) []*event.Event {
	if jr := resp.Rooms.Join[roomID]; jr != nil {
		return jr.Timeline.Events
	}
	return nil
}

// stateKey identifies a state entry.
type stateKey struct{ typ, key string }

func keyOf(ev *event.Event) stateKey {
	k := ""
	if ev.StateKey != nil {
		k = *ev.StateKey
	}
	return stateKey{ev.Type.Type, k}
}

// stateEvents lists the state events of evs (those with a state_key).
func stateEvents(evs []*event.Event) []*event.Event {
	var out []*event.Event
	for _, ev := range evs {
		if ev.StateKey != nil {
			out = append(out, ev)
		}
	}
	return out
}

// wantFullState checks that state plus the timeline's state events give
// the room's whole current state (as /state reports it to c): what a
// client needs when a room newly appears.
func wantFullState(t testing.TB, ctx context.Context, c *mautrix.Client, roomID id.RoomID, state, timeline []*event.Event) {
	t.Helper()
	var current []*event.Event
	if _, err := c.MakeRequest(ctx, "GET", c.BuildClientURL("v3", "rooms", roomID, "state"), nil, &current); err != nil {
		t.Fatalf("%s: /state: %v", c.UserID, err)
	}
	got := map[stateKey]id.EventID{}
	for _, ev := range state {
		if ev.StateKey == nil {
			t.Fatalf("state section holds a non-state event %s (%s)", ev.ID, ev.Type.Type)
		}
		got[keyOf(ev)] = ev.ID
	}
	for _, ev := range stateEvents(timeline) {
		got[keyOf(ev)] = ev.ID
	}
	for _, ev := range current {
		if got[keyOf(ev)] != ev.ID {
			t.Fatalf("%s: state+timeline has %v = %q, current state has %s", c.UserID, keyOf(ev), got[keyOf(ev)], ev.ID)
		}
	}
}

// memberKeys lists the state keys of the m.room.member events in evs,
// sorted, duplicates kept.
func memberKeys(evs []*event.Event) []string {
	var out []string
	for _, ev := range evs {
		if ev.Type == event.StateMember && ev.StateKey != nil {
			out = append(out, *ev.StateKey)
		}
	}
	slices.Sort(out)
	return out
}

func users(us ...id.UserID) []string {
	out := make([]string, len(us))
	for i, u := range us {
		out[i] = u.String()
	}
	slices.Sort(out)
	return out
}

// ephemeralOf returns the content of the room's ephemeral event of typ in
// resp (nil when absent).
func ephemeralOf(resp *mautrix.RespSync, roomID id.RoomID, typ string) []map[string]any {
	jr := resp.Rooms.Join[roomID]
	if jr == nil {
		return nil
	}
	var out []map[string]any
	for _, ev := range jr.Ephemeral.Events {
		if ev.Type.Type == typ {
			out = append(out, ev.Content.Raw)
		}
	}
	return out
}

// typingUsers returns the user_ids of the room's m.typing event and
// whether there was one.
func typingUsers(resp *mautrix.RespSync, roomID id.RoomID) ([]string, bool) {
	evs := ephemeralOf(resp, roomID, "m.typing")
	if len(evs) == 0 {
		return nil, false
	}
	var out []string
	for _, u := range evs[len(evs)-1]["user_ids"].([]any) {
		out = append(out, u.(string))
	}
	slices.Sort(out)
	return out, true
}

// hasReceipt reports whether resp carries a receipt of rtype by user on
// eventID in the room.
func hasReceipt(resp *mautrix.RespSync, roomID id.RoomID, eventID id.EventID, rtype string, user id.UserID) bool {
	for _, c := range ephemeralOf(resp, roomID, "m.receipt") {
		byType, _ := c[eventID.String()].(map[string]any)
		byUser, _ := byType[rtype].(map[string]any)
		if _, ok := byUser[user.String()]; ok {
			return true
		}
	}
	return false
}

// receiptTypes lists every receipt type in resp's m.receipt events of the
// room.
func receiptTypes(resp *mautrix.RespSync, roomID id.RoomID) []string {
	var out []string
	for _, c := range ephemeralOf(resp, roomID, "m.receipt") {
		for _, byType := range c {
			for rt := range byType.(map[string]any) {
				out = append(out, rt)
			}
		}
	}
	return out
}

// accountDataOf finds an account data event of typ in evs.
func accountDataOf(evs []*event.Event, typ string) map[string]any {
	for _, ev := range evs {
		if ev.Type.Type == typ {
			return ev.Content.Raw
		}
	}
	return nil
}

// filterJSON renders an inline filter.
func filterJSON(t testing.TB, f any) string {
	t.Helper()
	b, err := json.Marshal(f)
	if err != nil {
		t.Fatalf("encode filter: %v", err)
	}
	return string(b)
}

// messagesFrom pages /messages backwards from a token, limit per page,
// until stop accepts an event (that event is not returned) or history
// ends; found reports whether stop accepted one.
func messagesFrom(t testing.TB, ctx context.Context, c *mautrix.Client, roomID id.RoomID, from string, limit int, stop func(*event.Event) bool) (evs []*event.Event, found bool) {
	t.Helper()
	seen := map[id.EventID]bool{}
	for page := 0; page < maxPages; page++ {
		resp, err := c.Messages(ctx, roomID, from, "", mautrix.DirectionBackward, nil, limit)
		if err != nil {
			t.Fatalf("%s: /messages from=%q: %v", c.UserID, from, err)
		}
		for _, ev := range resp.Chunk {
			if stop != nil && stop(ev) {
				return evs, true
			}
			if seen[ev.ID] {
				t.Fatalf("/messages returned %s twice", ev.ID)
			}
			seen[ev.ID] = true
			evs = append(evs, ev)
		}
		if resp.End == "" || len(resp.Chunk) == 0 {
			return evs, false
		}
		from = resp.End
	}
	t.Fatalf("/messages from %q did not end after %d pages", from, maxPages)
	return nil, false
}

// wait blocks until ch closes, failing the test after waitLimit.
func wait(t testing.TB, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(waitLimit):
		t.Fatalf("%s did not happen within %v", what, waitLimit)
	}
}
