package push_test

import (
	"encoding/json"
	"fmt"
	"slices"
	"testing"

	"ganglion/internal/events"
	"ganglion/internal/push"
	"ganglion/internal/rooms"
	"ganglion/internal/storage"
	"ganglion/internal/storage/storagetest"
)

func ptr(s string) *string { return &s }

func content(v any) json.RawMessage {
	b, _ := json.Marshal(v)
	return b
}

func member(user, membership, name string) rooms.Draft {
	c := map[string]any{"membership": membership}
	if name != "" {
		c["displayname"] = name
	}
	return rooms.Draft{Type: "m.room.member", StateKey: ptr(user), Sender: user, Content: content(c)}
}

func message(sender, body string) rooms.Draft {
	return rooms.Draft{Type: "m.room.message", Sender: sender, Content: content(map[string]any{"msgtype": "m.text", "body": body})}
}

// newPersister starts a persister with the push hook over db.
func newPersister(t *testing.T, db *storage.DB, f *fixture) *rooms.Persister {
	t.Helper()
	p, _ := newPersisterHook(t, db, f)
	return p
}

func newPersisterHook(t *testing.T, db *storage.DB, f *fixture) (*rooms.Persister, *push.Hook) {
	t.Helper()
	key, err := events.GenerateSigningKey()
	if err != nil {
		t.Fatal(err)
	}
	p, err := rooms.NewPersister(ctxT(t), db, f.reg, server, key, discard)
	if err != nil {
		t.Fatal(err)
	}
	h := push.NewHook(db, f.s, server, discard)
	p.AddBatchHook(h)
	return p, h
}

// effectiveActions reads who an event notifies, whatever the layout: the
// users' own rows that notify and, if the event has a room-wide row, every
// local member joined since before it but the sender and the users with
// their own row.
func effectiveActions(t *testing.T, db *storage.DB, eventID string) map[string]effective {
	t.Helper()
	rows, err := db.Reader().QueryContext(ctxT(t), `SELECT user_id, highlight, actions FROM event_push_actions WHERE event_id = $1 AND notify = 1
		UNION ALL
		SELECT m.state_key, r.highlight, r.actions FROM event_push_actions_room r JOIN current_state m ON m.room_id = r.room_id
		AND m.type = 'm.room.member' AND m.membership = 'join' AND m.stream_ordering < r.stream_ordering
		WHERE r.event_id = $1 AND m.state_key <> r.sender AND m.state_key LIKE $2
		AND NOT EXISTS (SELECT 1 FROM event_push_actions x WHERE x.event_id = r.event_id AND x.user_id = m.state_key)`, eventID, "%:"+server)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]effective{}
	for rows.Next() {
		var u string
		var e effective
		if err := rows.Scan(&u, &e.highlight, &e.actions); err != nil {
			t.Fatal(err)
		}
		if _, dup := out[u]; dup {
			t.Fatalf("event %s notifies %s twice", eventID, u)
		}
		out[u] = e
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

type effective struct {
	highlight int
	actions   string
}

// actionsFor lists "user:highlight" for each user an event notifies.
func actionsFor(t *testing.T, db *storage.DB, eventID string) []string {
	t.Helper()
	var out []string
	for u, e := range effectiveActions(t, db, eventID) {
		out = append(out, fmt.Sprintf("%s:%d", u, e.highlight))
	}
	slices.Sort(out)
	return out
}

// TestHookWritesPushActions runs the evaluation where events are
// persisted, on both engines: every local joined member but the sender is
// evaluated against the room's state as of the event (members, display
// names and power levels changed earlier in the same batch count), remote
// members get no rows, rule changes apply to the next event, and a
// restarted persister loads the room's state from the database.
func TestHookWritesPushActions(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := ctxT(t)
		f := newFixture(t, db)
		p, hook := newPersisterHook(t, db, f)
		room := "!push:" + server
		alice, bob, carol, dave := "@alice:"+server, "@bob:"+server, "@carol:"+server, "@dave:remote.test"
		create := []rooms.Draft{
			{Type: "m.room.create", StateKey: ptr(""), Sender: alice, RoomVersion: "10", Content: content(map[string]any{"creator": alice, "room_version": "10"})},
			member(alice, "join", "Alice"),
			{Type: "m.room.power_levels", StateKey: ptr(""), Sender: alice, Content: content(map[string]any{"users": map[string]int{alice: 100}})},
			{Type: "m.room.join_rules", StateKey: ptr(""), Sender: alice, Content: content(map[string]any{"join_rule": "public"})},
			member(bob, "join", "Bob Builder"),
			member(carol, "join", ""),
			member(dave, "join", ""),
			message(alice, "hey bob builder"),
		}
		res, err := p.SendEvents(ctx, room, create)
		if err != nil {
			t.Fatal(err)
		}
		send := func(ds ...rooms.Draft) []string {
			t.Helper()
			res, err := p.SendEvents(ctx, room, ds)
			if err != nil {
				t.Fatal(err)
			}
			var ids []string
			for _, r := range res {
				ids = append(ids, r.EventID)
			}
			return ids
		}
		check := func(what, eventID string, want ...string) {
			t.Helper()
			if got := actionsFor(t, db, eventID); !slices.Equal(got, want) {
				t.Errorf("%s: rows %v, want %v", what, got, want)
			}
		}
		// In the creating batch: bob's display name (set in the same
		// batch) highlights him; carol gets a plain notification; the
		// sender and the remote member get nothing.
		check("message in the creating batch", res[7].EventID, bob+":1", carol+":0")
		// Member events notify nobody (.m.rule.member_event).
		check("join", res[5].EventID)

		ids := send(message(alice, "@room meeting"), message(carol, "@room too"))
		check("@room by the admin", ids[0], bob+":1", carol+":1")
		check("@room by a member without the power", ids[1], alice+":0", bob+":0")

		// Bob leaves and alice writes in one batch: bob is no longer
		// evaluated for her message.
		ids = send(member(bob, "leave", ""), message(alice, "bye"))
		check("after a leave in the same batch", ids[1], carol+":0")

		// Carol ignores alice: once the change is announced, alice's
		// messages notify her of nothing.
		if _, err := db.Exec(ctx, `INSERT INTO account_data (user_id, room_id, type, content, stream_id) VALUES ($1, '', 'm.ignored_user_list', $2, 1)`,
			carol, `{"ignored_users":{"`+alice+`":{}}}`); err != nil {
			t.Fatal(err)
		}
		hook.IgnoredChanged([]string{carol})
		ids = send(message(alice, "ignored"), message(dave, "not ignored"))
		check("from an ignored sender", ids[0])
		check("from another sender", ids[1], alice+":0", carol+":0")
		if _, err := db.Exec(ctx, `DELETE FROM account_data WHERE user_id = $1`, carol); err != nil {
			t.Fatal(err)
		}
		hook.IgnoredChanged(nil)

		// Carol silences everything; the next message has no row for her.
		if _, err := f.w.Apply(ctx, carol, push.Op{Op: push.OpSetEnabled, Kind: push.Override, RuleID: ".m.rule.master", Enabled: true}); err != nil {
			t.Fatal(err)
		}
		ids = send(message(alice, "anyone?"))
		check("after carol enabled master", ids[0])

		// A restarted persister loads the room's state: dave leaving
		// makes alice and carol a one-to-one room (sound default).
		if _, err := f.w.Apply(ctx, carol, push.Op{Op: push.OpSetEnabled, Kind: push.Override, RuleID: ".m.rule.master", Enabled: false}); err != nil {
			t.Fatal(err)
		}
		p2 := newPersister(t, db, f)
		if _, err := p2.SendEvents(ctx, room, []rooms.Draft{member(dave, "leave", "")}); err != nil {
			t.Fatal(err)
		}
		res2, err := p2.SendEvents(ctx, room, []rooms.Draft{message(alice, "just us")})
		if err != nil {
			t.Fatal(err)
		}
		if actions := effectiveActions(t, db, res2[0].EventID)[carol].actions; actions != `["notify",{"set_tweak":"sound","value":"default"}]` {
			t.Fatalf("one-to-one actions = %s", actions)
		}
		counts, err := f.s.Counts(ctx, carol, []string{room})
		if err != nil || counts[room]["main"].Notifications != 5 || counts[room]["main"].Highlights != 1 {
			t.Fatalf("carol's counts = %+v, %v", counts, err)
		}
	})
}
