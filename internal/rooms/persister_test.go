package rooms_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"ganglion/internal/eventauth"
	"ganglion/internal/events"
	"ganglion/internal/mxhttp"
	"ganglion/internal/rooms"
	"ganglion/internal/storage"
	"ganglion/internal/storage/storagetest"
	"ganglion/internal/streams"
)

const server = "test.local"

func newPersister(t *testing.T, db *storage.DB) (*rooms.Persister, *streams.Registry) {
	t.Helper()
	reg, err := streams.NewRegistry("main", streams.AllDefs(), nil, streams.NewNotifier())
	if err != nil {
		t.Fatal(err)
	}
	key, err := events.GenerateSigningKey()
	if err != nil {
		t.Fatal(err)
	}
	p, err := rooms.NewPersister(context.Background(), db, reg, server, key, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	return p, reg
}

func ptr(s string) *string { return &s }

func raw(v any) json.RawMessage {
	b, _ := json.Marshal(v)
	return b
}

// createDrafts is the smallest valid room: create, creator join, power
// levels, public join rule.
func createDrafts(creator, version string) []rooms.Draft {
	return []rooms.Draft{
		{Type: "m.room.create", StateKey: ptr(""), Sender: creator, RoomVersion: version,
			Content: raw(map[string]any{"creator": creator, "room_version": version})},
		{Type: "m.room.member", StateKey: ptr(creator), Sender: creator, Content: raw(map[string]any{"membership": "join"})},
		{Type: "m.room.power_levels", StateKey: ptr(""), Sender: creator,
			Content: raw(map[string]any{"users": map[string]int{creator: 100}, "state_default": 50, "events_default": 0})},
		{Type: "m.room.join_rules", StateKey: ptr(""), Sender: creator, Content: raw(map[string]any{"join_rule": "public"})},
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestPersisterCreatesAndLinksEvents(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := ctxT(t)
		p, reg := newPersister(t, db)
		store := rooms.NewStore(db)
		room := "!r1:" + server
		alice := "@alice:" + server
		res, err := p.SendEvents(ctx, room, createDrafts(alice, "10"))
		if err != nil {
			t.Fatal(err)
		}
		if len(res) != 4 {
			t.Fatalf("got %d results", len(res))
		}
		for i := 1; i < len(res); i++ {
			if res[i].StreamPos <= res[i-1].StreamPos {
				t.Fatalf("stream positions not increasing: %v", res)
			}
		}
		if got := reg.Current(streams.Events); got != res[3].StreamPos {
			t.Fatalf("registry position %d, want %d", got, res[3].StreamPos)
		}
		// Each event's prev_events is exactly the previous event: a line.
		byID, err := store.EventsByID(ctx, []string{res[0].EventID, res[1].EventID, res[2].EventID, res[3].EventID})
		if err != nil {
			t.Fatal(err)
		}
		for i := 1; i < 4; i++ {
			ev := byID[res[i].EventID].Event
			if prev := ev.PrevEventIDs(); len(prev) != 1 || prev[0] != res[i-1].EventID {
				t.Fatalf("event %d prev_events = %v, want [%s]", i, prev, res[i-1].EventID)
			}
			if ev.Depth() != int64(i+1) {
				t.Fatalf("event %d depth = %d", i, ev.Depth())
			}
			if err := events.CheckContentHash(ev); err != nil {
				t.Fatalf("content hash: %v", err)
			}
		}
		m, _, err := store.Membership(ctx, room, alice)
		if err != nil || m != "join" {
			t.Fatalf("membership = %q, %v", m, err)
		}
	})
}

func TestPersisterEnforcesAuthRules(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := ctxT(t)
		p, _ := newPersister(t, db)
		room := "!r2:" + server
		alice, bob := "@alice:"+server, "@bob:"+server
		if _, err := p.SendEvents(ctx, room, createDrafts(alice, "10")); err != nil {
			t.Fatal(err)
		}
		// bob is not joined: may not send.
		_, err := p.SendEvents(ctx, room, []rooms.Draft{{Type: "m.room.message", Sender: bob, Content: raw(map[string]string{"body": "hi"})}})
		var me *mxhttp.Error
		if !errors.As(err, &me) || me.Code != "M_FORBIDDEN" {
			t.Fatalf("send by non-member: err = %v, want M_FORBIDDEN", err)
		}
		// bob joins (public room), then may not set the name (state_default 50).
		if _, err := p.SendEvents(ctx, room, []rooms.Draft{{Type: "m.room.member", StateKey: &bob, Sender: bob,
			Content: raw(map[string]string{"membership": "join"})}}); err != nil {
			t.Fatal(err)
		}
		_, err = p.SendEvents(ctx, room, []rooms.Draft{{Type: "m.room.name", StateKey: ptr(""), Sender: bob, Content: raw(map[string]string{"name": "x"})}})
		if !errors.As(err, &me) || me.Code != "M_FORBIDDEN" {
			t.Fatalf("name by unprivileged member: err = %v, want M_FORBIDDEN", err)
		}
		// A failed batch is all-or-nothing: a valid event before an invalid one is not stored.
		before, _ := rooms.NewStore(db).MaxStreamOrdering(ctx, room)
		_, err = p.SendEvents(ctx, room, []rooms.Draft{
			{Type: "m.room.message", Sender: bob, Content: raw(map[string]string{"body": "ok"})},
			{Type: "m.room.name", StateKey: ptr(""), Sender: bob, Content: raw(map[string]string{"name": "x"})},
		})
		if err == nil {
			t.Fatal("batch with a forbidden event succeeded")
		}
		after, _ := rooms.NewStore(db).MaxStreamOrdering(ctx, room)
		if after != before {
			t.Fatalf("failed batch left events behind: max %d → %d", before, after)
		}
		// A second create for the same room is refused.
		if _, err := p.SendEvents(ctx, room, createDrafts(alice, "10")[:1]); err == nil {
			t.Fatal("second create accepted")
		}
		// Unknown room.
		if _, err := p.SendEvents(ctx, "!nope:"+server, []rooms.Draft{{Type: "m.room.message", Sender: alice, Content: raw(map[string]string{})}}); !errors.As(err, &me) || me.Code != "M_NOT_FOUND" {
			t.Fatalf("unknown room: %v", err)
		}
	})
}

func TestPersisterTxnIDsAreIdempotent(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := ctxT(t)
		p, _ := newPersister(t, db)
		room := "!r3:" + server
		alice := "@alice:" + server
		if _, err := p.SendEvents(ctx, room, createDrafts(alice, "10")); err != nil {
			t.Fatal(err)
		}
		d := rooms.Draft{Type: "m.room.message", Sender: alice, Content: raw(map[string]string{"body": "once"}), TxnID: "t1", DeviceID: "DEV"}
		a, err := p.SendEvents(ctx, room, []rooms.Draft{d})
		if err != nil {
			t.Fatal(err)
		}
		b, err := p.SendEvents(ctx, room, []rooms.Draft{d})
		if err != nil {
			t.Fatal(err)
		}
		if a[0].EventID != b[0].EventID || !b[0].Deduplicated {
			t.Fatalf("txn retry gave %v then %v", a, b)
		}
		d.DeviceID = "OTHER" // another device's txn ids are its own
		c, err := p.SendEvents(ctx, room, []rooms.Draft{d})
		if err != nil {
			t.Fatal(err)
		}
		if c[0].EventID == a[0].EventID {
			t.Fatal("txn id shared across devices")
		}
	})
}

func TestPersisterConcurrentSendersStayLinear(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := ctxT(t)
		p, _ := newPersister(t, db)
		store := rooms.NewStore(db)
		room := "!r4:" + server
		alice := "@alice:" + server
		if _, err := p.SendEvents(ctx, room, createDrafts(alice, "10")); err != nil {
			t.Fatal(err)
		}
		const senders, each = 6, 15
		var wg sync.WaitGroup
		errs := make(chan error, senders*each)
		for s := 0; s < senders; s++ {
			wg.Add(1)
			go func(s int) {
				defer wg.Done()
				for i := 0; i < each; i++ {
					_, err := p.SendEvents(ctx, room, []rooms.Draft{{Type: "m.room.message", Sender: alice,
						Content: raw(map[string]string{"body": fmt.Sprintf("%d-%d", s, i)})}})
					if err != nil {
						errs <- err
					}
				}
			}(s)
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		evs, err := store.RoomEvents(ctx, room, 0, -1, false, 1000)
		if err != nil {
			t.Fatal(err)
		}
		if len(evs) != 4+senders*each {
			t.Fatalf("got %d events", len(evs))
		}
		wantOneChain(t, evs)
	})
}

// TestPersisterBatchesKeepRequestsApart: concurrent requests for one room
// are persisted in shared transactions, yet each succeeds or fails alone:
// a refused draft fails its own request only (and nothing of that request
// is stored), a txn id sent twice at once yields one event, and the room
// stays one chain.
func TestPersisterBatchesKeepRequestsApart(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := ctxT(t)
		p, _ := newPersister(t, db)
		store := rooms.NewStore(db)
		room := "!batch:" + server
		alice, bob, mallory := "@alice:"+server, "@bob:"+server, "@mallory:"+server
		if _, err := p.SendEvents(ctx, room, append(createDrafts(alice, "10"),
			rooms.Draft{Type: "m.room.member", StateKey: ptr(bob), Sender: bob, Content: raw(map[string]any{"membership": "join"})})); err != nil {
			t.Fatal(err)
		}
		msg := func(sender, body, txn string) rooms.Draft {
			d := rooms.Draft{Type: "m.room.message", Sender: sender, Content: raw(map[string]string{"body": body})}
			if txn != "" {
				d.TxnID, d.DeviceID = txn, "DEV"
			}
			return d
		}
		type outcome struct {
			kind string
			res  []rooms.Persisted
			err  error
		}
		const rounds = 20
		out := make(chan outcome, rounds*5)
		var wg sync.WaitGroup
		for i := 0; i < rounds; i++ {
			send := func(kind string, drafts ...rooms.Draft) {
				defer wg.Done()
				res, err := p.SendEvents(ctx, room, drafts)
				out <- outcome{kind, res, err}
			}
			wg.Add(5)
			go send("ok", msg(alice, fmt.Sprintf("a%d", i), ""))
			// Not a member: refused.
			go send("outsider", msg(mallory, fmt.Sprintf("m%d", i), ""))
			// Bob may talk but not rename the room: the whole request fails.
			go send("partial", msg(bob, fmt.Sprintf("b%d", i), ""),
				rooms.Draft{Type: "m.room.name", StateKey: ptr(""), Sender: bob, Content: raw(map[string]string{"name": "x"})})
			// The same txn id twice at once.
			go send("txn", msg(alice, fmt.Sprintf("t%d", i), fmt.Sprintf("txn%d", i)))
			go send("txn", msg(alice, fmt.Sprintf("t%d", i), fmt.Sprintf("txn%d", i)))
		}
		wg.Wait()
		close(out)
		txnEvents := map[string]int{}
		for o := range out {
			var mx *mxhttp.Error
			switch o.kind {
			case "ok":
				if o.err != nil || len(o.res) != 1 {
					t.Fatalf("alice's message: %v %v", o.res, o.err)
				}
			case "outsider", "partial":
				if !errors.As(o.err, &mx) || mx.Status != 403 {
					t.Fatalf("%s request: got %v %v, want 403", o.kind, o.res, o.err)
				}
			case "txn":
				if o.err != nil || len(o.res) != 1 {
					t.Fatalf("txn message: %v %v", o.res, o.err)
				}
				txnEvents[o.res[0].EventID]++
			}
		}
		if len(txnEvents) != rounds {
			t.Fatalf("%d distinct events for %d txn ids sent twice each", len(txnEvents), rounds)
		}
		evs, err := store.RoomEvents(ctx, room, 0, -1, false, 1000)
		if err != nil {
			t.Fatal(err)
		}
		if want := 5 + 2*rounds; len(evs) != want {
			t.Fatalf("got %d events, want %d (create, 4 state, alice's and the txn messages)", len(evs), want)
		}
		for i, e := range evs {
			if s := e.Event.Sender(); i >= 5 && s != alice {
				t.Fatalf("event %d from %s: a refused request left a trace", i, s)
			}
		}
		wantOneChain(t, evs)
	})
}

// TestPersisterStoresALargeRequest: one request of more drafts than one
// INSERT takes (the batch splits its rows) is stored whole and in order.
func TestPersisterStoresALargeRequest(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := ctxT(t)
		p, _ := newPersister(t, db)
		store := rooms.NewStore(db)
		room := "!large:" + server
		alice := "@alice:" + server
		drafts := createDrafts(alice, "10")
		const n = 4500 // 4,504 rows of 15 parameters: past both engines' limits for one statement
		for i := range n {
			drafts = append(drafts, rooms.Draft{Type: "m.room.message", Sender: alice,
				Content: raw(map[string]string{"body": fmt.Sprint(i)})})
		}
		res, err := p.SendEvents(ctx, room, drafts)
		if err != nil {
			t.Fatal(err)
		}
		if len(res) != len(drafts) {
			t.Fatalf("%d results for %d drafts", len(res), len(drafts))
		}
		evs, err := store.RoomEvents(ctx, room, 0, -1, false, 2*n)
		if err != nil {
			t.Fatal(err)
		}
		if len(evs) != len(drafts) {
			t.Fatalf("stored %d events, want %d", len(evs), len(drafts))
		}
		for i, e := range evs {
			if e.Event.EventID() != res[i].EventID {
				t.Fatalf("event %d is %s, want %s", i, e.Event.EventID(), res[i].EventID)
			}
		}
		wantOneChain(t, evs)
	})
}

// wantOneChain checks the room did not fork: every event after the first
// points at its predecessor alone.
func wantOneChain(t *testing.T, evs []*rooms.StoredEvent) {
	t.Helper()
	for i := 1; i < len(evs); i++ {
		prev := evs[i].Event.PrevEventIDs()
		if len(prev) != 1 || prev[0] != evs[i-1].Event.EventID() {
			t.Fatalf("event %d forks: prev %v, predecessor %s", i, prev, evs[i-1].Event.EventID())
		}
	}
}

func TestStateLogAnswersHistoricalState(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := ctxT(t)
		p, _ := newPersister(t, db)
		store := rooms.NewStore(db)
		room := "!r5:" + server
		alice, bob := "@alice:"+server, "@bob:"+server
		if _, err := p.SendEvents(ctx, room, createDrafts(alice, "10")); err != nil {
			t.Fatal(err)
		}
		name := func(n string) int64 {
			r, err := p.SendEvents(ctx, room, []rooms.Draft{{Type: "m.room.name", StateKey: ptr(""), Sender: alice, Content: raw(map[string]string{"name": n})}})
			if err != nil {
				t.Fatal(err)
			}
			return r[0].StreamPos
		}
		p1 := name("one")
		join, err := p.SendEvents(ctx, room, []rooms.Draft{{Type: "m.room.member", StateKey: &bob, Sender: bob, Content: raw(map[string]string{"membership": "join"})}})
		if err != nil {
			t.Fatal(err)
		}
		p2 := name("two")
		if _, err := p.SendEvents(ctx, room, []rooms.Draft{{Type: "m.room.member", StateKey: &bob, Sender: bob, Content: raw(map[string]string{"membership": "leave"})}}); err != nil {
			t.Fatal(err)
		}
		at := func(pos int64) string {
			evs, err := store.StateAt(ctx, room, pos, []eventauth.StateKey{{Type: "m.room.name", StateKey: ""}})
			if err != nil || len(evs) != 1 {
				t.Fatalf("state at %d: %v %d", pos, err, len(evs))
			}
			var c struct{ Name string }
			_ = json.Unmarshal(evs[0].Event.Content(), &c)
			return c.Name
		}
		if at(p1) != "one" || at(p2-1) != "one" || at(p2) != "two" {
			t.Fatalf("names at %d/%d/%d: %s %s %s", p1, p2-1, p2, at(p1), at(p2-1), at(p2))
		}
		for pos, want := range map[int64]string{p1: "", join[0].StreamPos: "join", p2: "join", p2 + 1: "leave"} {
			m, _, err := store.MembershipAt(ctx, room, bob, pos)
			if err != nil || m != want {
				t.Fatalf("bob at %d = %q (%v), want %q", pos, m, err, want)
			}
		}
		all, err := store.StateAt(ctx, room, p2, nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(all) != 6 { // create, 2 members, power levels, join rules, name
			t.Fatalf("full state at %d has %d events", p2, len(all))
		}
	})
}

func TestPersisterResumesPositionAfterRestart(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := ctxT(t)
		p, _ := newPersister(t, db)
		room := "!r6:" + server
		res, err := p.SendEvents(ctx, room, createDrafts("@alice:"+server, "11"))
		if err != nil {
			t.Fatal(err)
		}
		last := res[len(res)-1].StreamPos
		// A new persister over the same database (a restart, without the
		// position ever having been saved) resumes at the last committed id
		// and keeps the room's DAG linear.
		p2, reg2 := newPersister(t, db)
		if got := reg2.Current(streams.Events); got != last {
			t.Fatalf("resumed at %d, want %d", got, last)
		}
		r2, err := p2.SendEvents(ctx, room, []rooms.Draft{{Type: "m.room.message", Sender: "@alice:" + server, Content: raw(map[string]string{"body": "after"})}})
		if err != nil {
			t.Fatal(err)
		}
		ev, err := rooms.NewStore(db).Event(ctx, r2[0].EventID)
		if err != nil {
			t.Fatal(err)
		}
		if prev := ev.Event.PrevEventIDs(); len(prev) != 1 || prev[0] != res[len(res)-1].EventID {
			t.Fatalf("after restart prev_events = %v", prev)
		}
		if err := p2.SavePosition(ctx); err != nil {
			t.Fatal(err)
		}
	})
}

func FuzzParseRoomToken(f *testing.F) {
	for _, s := range []string{"s12", "t3-45", "s9_1_2", "m5~1.7", "", "s-1", "t-"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, tok string) {
		pos, err := rooms.ParseRoomToken(tok)
		if err != nil {
			return
		}
		if back, err := rooms.ParseRoomToken(rooms.FormatRoomToken(pos)); err != nil || back != pos {
			t.Fatalf("%q → %d does not round-trip: %d %v", tok, pos, back, err)
		}
	})
}
