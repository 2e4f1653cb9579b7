package push_test

import (
	"context"
	"encoding/json"
	"maps"
	"slices"
	"testing"
	"time"

	"ganglion/internal/push"
	"ganglion/internal/rooms"
	"ganglion/internal/storage"
	"ganglion/internal/storage/storagetest"
)

// countsFixture is a room with an admin who sends and local members with
// default rules, plus one who muted the room and one with a keyword rule.
type countsFixture struct {
	t    *testing.T
	db   *storage.DB
	f    *fixture
	p    *rooms.Persister
	room string
}

func (c *countsFixture) send(ds ...rooms.Draft) []rooms.Persisted {
	c.t.Helper()
	res, err := c.p.SendEvents(ctxT(c.t), c.room, ds)
	if err != nil {
		c.t.Fatal(err)
	}
	return res
}

// receipt stores a read receipt as the receipts writer would.
func (c *countsFixture) receipt(user, typ, thread string, at rooms.Persisted) {
	c.t.Helper()
	if _, err := c.db.Exec(ctxT(c.t), `DELETE FROM receipts WHERE room_id = $1 AND receipt_type = $2 AND user_id = $3 AND thread_id = $4`,
		c.room, typ, user, thread); err != nil {
		c.t.Fatal(err)
	}
	if _, err := c.db.Exec(ctxT(c.t), `INSERT INTO receipts (room_id, receipt_type, user_id, thread_id, event_id, event_stream_ordering, data, stream_id, instance_name)
		VALUES ($1, $2, $3, $4, $5, $6, '{}', $6, 'main')`, c.room, typ, user, thread, at.EventID, at.StreamPos); err != nil {
		c.t.Fatal(err)
	}
}

// counts is user's count per thread, as "notifications/highlights".
func (c *countsFixture) counts(user string) map[string][2]int {
	c.t.Helper()
	got, err := c.f.s.Counts(ctxT(c.t), user, []string{c.room})
	if err != nil {
		c.t.Fatal(err)
	}
	out := map[string][2]int{}
	for thread, n := range got[c.room] {
		out[thread] = [2]int{n.Notifications, n.Highlights}
	}
	return out
}

func (c *countsFixture) wantCounts(what, user string, want map[string][2]int) {
	c.t.Helper()
	if got := c.counts(user); !maps.Equal(got, want) {
		c.t.Errorf("%s: counts of %s = %v, want %v", what, user, got, want)
	}
}

// notified lists the event ids of user's GET /notifications, newest first.
func (c *countsFixture) notified(user string, highlights bool) []string {
	c.t.Helper()
	list, _, err := c.f.s.Notifications(ctxT(c.t), user, 0, 100, highlights)
	if err != nil {
		c.t.Fatal(err)
	}
	var out []string
	for _, n := range list {
		out = append(out, n.Event.(string))
	}
	return out
}

func (c *countsFixture) roomRows(eventID string) (room, own int) {
	c.t.Helper()
	ctx := ctxT(c.t)
	if err := c.db.Reader().QueryRowContext(ctx, `SELECT count(*) FROM event_push_actions_room WHERE event_id = $1`, eventID).Scan(&room); err != nil {
		c.t.Fatal(err)
	}
	if err := c.db.Reader().QueryRowContext(ctx, `SELECT count(*) FROM event_push_actions WHERE event_id = $1`, eventID).Scan(&own); err != nil {
		c.t.Fatal(err)
	}
	return room, own
}

func threadReply(sender, root, body string) rooms.Draft {
	return rooms.Draft{Type: "m.room.message", Sender: sender, Content: content(map[string]any{"msgtype": "m.text", "body": body,
		"m.relates_to": map[string]any{"rel_type": "m.thread", "event_id": root}})}
}

// TestCountsRoomWideRows checks unread counts and GET /notifications over
// the room-wide layout, on both engines: one room-wide row per notifying
// event, per-user rows only where a user's outcome differs (a mention, a
// keyword rule, a muted room), a member who joins later not counting what
// came before, receipts (unthreaded, threaded, m.read.private) and
// redactions.
func TestCountsRoomWideRows(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := ctxT(t)
		f := newFixture(t, db)
		f.s.SetEventLoader(func(_ context.Context, _ string, ids []string) (map[string]push.EventView, error) {
			out := map[string]push.EventView{}
			for _, id := range ids {
				out[id] = push.EventView{Event: id}
			}
			return out, nil
		})
		c := &countsFixture{t: t, db: db, f: f, p: newPersister(t, db, f), room: "!counts:" + server}
		alice, bob, carol, dan, frank, erin := "@alice:"+server, "@bob:"+server, "@carol:"+server, "@dan:"+server, "@frank:"+server, "@erin:"+server
		gina, hank := "@gina:"+server, "@hank:"+server
		c.send(
			rooms.Draft{Type: "m.room.create", StateKey: ptr(""), Sender: alice, RoomVersion: "10", Content: content(map[string]any{"creator": alice, "room_version": "10"})},
			member(alice, "join", "Alice"),
			rooms.Draft{Type: "m.room.power_levels", StateKey: ptr(""), Sender: alice, Content: content(map[string]any{"users": map[string]int{alice: 100}})},
			rooms.Draft{Type: "m.room.join_rules", StateKey: ptr(""), Sender: alice, Content: content(map[string]any{"join_rule": "public"})},
			member(bob, "join", ""), member(carol, "join", ""), member(dan, "join", ""), member(frank, "join", ""),
			member(gina, "join", ""), member(hank, "join", ""),
		)
		// Dan mutes the room (a room rule without notify); frank
		// highlights "deploy".
		if _, err := f.w.Apply(ctx, dan, push.Op{Op: push.OpPut, Kind: push.Room, RuleID: c.room, Actions: []json.RawMessage{}}); err != nil {
			t.Fatal(err)
		}
		if _, err := f.w.Apply(ctx, frank, push.Op{Op: push.OpPut, Kind: push.Content, RuleID: "deploy", Pattern: ptr("deploy"),
			Actions: []json.RawMessage{json.RawMessage(`"notify"`), json.RawMessage(`{"set_tweak":"highlight"}`)}}); err != nil {
			t.Fatal(err)
		}

		m1 := c.send(message(alice, "deploy at noon"))[0]
		// One room-wide row; own rows for dan (muted) and frank (keyword).
		if room, own := c.roomRows(m1.EventID); room != 1 || own != 2 {
			t.Errorf("m1: %d room-wide rows and %d own rows, want 1 and 2", room, own)
		}
		if got, want := actionsFor(t, db, m1.EventID), []string{bob + ":0", carol + ":0", frank + ":1", gina + ":0", hank + ":0"}; !slices.Equal(got, want) {
			t.Errorf("m1 notifies %v, want %v", got, want)
		}

		// Erin joins after m1: it is not unread for her.
		c.send(member(erin, "join", ""))
		m2 := c.send(message(alice, "hello all"))[0]
		if room, own := c.roomRows(m2.EventID); room != 1 || own != 1 {
			t.Errorf("m2: %d room-wide rows and %d own rows, want 1 and 1 (dan)", room, own)
		}
		c.wantCounts("erin after joining", erin, map[string][2]int{"main": {1, 0}})
		c.wantCounts("bob", bob, map[string][2]int{"main": {2, 0}})
		c.wantCounts("the sender", alice, map[string][2]int{})
		c.wantCounts("dan, who muted the room", dan, map[string][2]int{})
		c.wantCounts("frank", frank, map[string][2]int{"main": {2, 1}})

		// A mention highlights carol alone.
		m3 := c.send(rooms.Draft{Type: "m.room.message", Sender: alice, Content: content(map[string]any{"msgtype": "m.text", "body": "carol: look",
			"m.mentions": map[string]any{"user_ids": []string{carol}}})})[0]
		c.wantCounts("carol mentioned", carol, map[string][2]int{"main": {3, 1}})
		c.wantCounts("bob not mentioned", bob, map[string][2]int{"main": {3, 0}})

		// A thread under m1.
		t1 := c.send(threadReply(alice, m1.EventID, "in the thread"))[0]
		c.wantCounts("bob with a thread reply", bob, map[string][2]int{"main": {3, 0}, m1.EventID: {1, 0}})

		// Receipts: bob reads the main timeline up to m2 (unthreaded:
		// everything up to m2 in every thread), then the thread.
		c.receipt(bob, "m.read", "", m2)
		c.wantCounts("bob read up to m2", bob, map[string][2]int{"main": {1, 0}, m1.EventID: {1, 0}})
		c.receipt(bob, "m.read", m1.EventID, t1)
		c.wantCounts("bob read the thread", bob, map[string][2]int{"main": {1, 0}})
		// A private receipt counts too.
		c.receipt(carol, "m.read.private", "", m3)
		c.wantCounts("carol read privately", carol, map[string][2]int{m1.EventID: {1, 0}})

		// GET /notifications lists what counts, read or not.
		if got, want := c.notified(erin, false), []string{t1.EventID, m3.EventID, m2.EventID}; !slices.Equal(got, want) {
			t.Errorf("erin's notifications %v, want %v", got, want)
		}
		if got, want := c.notified(carol, true), []string{m3.EventID}; !slices.Equal(got, want) {
			t.Errorf("carol's highlights %v, want %v", got, want)
		}
		if got := c.notified(dan, false); len(got) != 0 {
			t.Errorf("dan's notifications %v, want none", got)
		}
		if got, want := c.notified(frank, true), []string{m1.EventID}; !slices.Equal(got, want) {
			t.Errorf("frank's highlights %v, want %v", got, want)
		}

		// Redacting m3 removes its notification: counts drop.
		c.send(rooms.Draft{Type: "m.room.redaction", Sender: alice, Redacts: m3.EventID, Content: content(map[string]any{})})
		if room, own := c.roomRows(m3.EventID); room != 0 || own != 0 {
			t.Errorf("redacted m3 still has %d room-wide and %d own rows", room, own)
		}
		c.wantCounts("erin after the redaction", erin, map[string][2]int{"main": {1, 0}, m1.EventID: {1, 0}})
		c.wantCounts("carol after the redaction", carol, map[string][2]int{m1.EventID: {1, 0}})
		if got, want := c.notified(erin, false), []string{t1.EventID, m2.EventID}; !slices.Equal(got, want) {
			t.Errorf("erin's notifications after the redaction %v, want %v", got, want)
		}

		// Erin leaves and comes back: what came before is not unread.
		c.send(member(erin, "leave", ""))
		c.send(member(erin, "join", ""))
		c.wantCounts("erin after rejoining", erin, map[string][2]int{})
	})
}

// TestPrunePushActions: the prune job deletes old rows nobody needs for a
// count, and keeps old rows a member has not read yet, on both engines.
func TestPrunePushActions(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := ctxT(t)
		f := newFixture(t, db)
		c := &countsFixture{t: t, db: db, f: f, p: newPersister(t, db, f), room: "!prune:" + server}
		alice, bob, carol, dan := "@alice:"+server, "@bob:"+server, "@carol:"+server, "@dan:"+server
		c.send(
			rooms.Draft{Type: "m.room.create", StateKey: ptr(""), Sender: alice, RoomVersion: "10", Content: content(map[string]any{"creator": alice, "room_version": "10"})},
			member(alice, "join", "Alice"),
			rooms.Draft{Type: "m.room.join_rules", StateKey: ptr(""), Sender: alice, Content: content(map[string]any{"join_rule": "public"})},
			member(bob, "join", ""), member(carol, "join", ""), member(dan, "join", ""),
		)
		m1 := c.send(message(alice, "one"))[0]
		m2 := c.send(rooms.Draft{Type: "m.room.message", Sender: alice, Content: content(map[string]any{"msgtype": "m.text", "body": "two",
			"m.mentions": map[string]any{"user_ids": []string{bob}}})})[0]
		m3 := c.send(message(alice, "three"))[0]
		total := func(table string) int {
			var n int
			if err := db.Reader().QueryRowContext(ctx, `SELECT count(*) FROM `+table).Scan(&n); err != nil {
				t.Fatal(err)
			}
			return n
		}
		// Nothing is older than the cut-off yet.
		if n, err := push.Prune(ctx, db, server, time.Now().Add(-push.NotificationsMaxAge)); err != nil || n != 0 {
			t.Fatalf("prune of recent rows: %d, %v", n, err)
		}
		// Everyone but the sender reads m2 (bob's highlight included).
		for _, u := range []string{bob, carol, dan} {
			c.receipt(u, "m.read", "", m2)
		}
		// With the cut-off after every event: m1 and m2 are read by all
		// and go; m3 is unread and stays.
		n, err := push.Prune(ctx, db, server, time.Now().Add(time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		if n != 3 || total("event_push_actions_room") != 1 || total("event_push_actions") != 0 {
			t.Fatalf("pruned %d rows, left %d room-wide and %d own, want 3 pruned (m1, m2 and bob's mention) and m3 left",
				n, total("event_push_actions_room"), total("event_push_actions"))
		}
		if room, _ := c.roomRows(m3.EventID); room != 1 {
			t.Fatalf("m3's room-wide row pruned")
		}
		c.wantCounts("bob after pruning", bob, map[string][2]int{"main": {1, 0}})
		_ = m1
	})
}
