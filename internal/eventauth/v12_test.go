package eventauth_test

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"ganglion/internal/eventauth"
	"ganglion/internal/events"
)

// v12Room is a room version 12 room: alice created it with carol as an
// additional creator; bob has 100 from the power levels event; mod has 50.
type v12Room struct {
	rv     *events.RoomVersion
	create *events.Event
	state  eventauth.StateMap
	ts     int64
}

func (r *v12Room) parse(tb testing.TB, fields map[string]any) *events.Event {
	tb.Helper()
	r.ts++
	m := map[string]any{"depth": 3, "origin_server_ts": r.ts, "prev_events": []string{"$prev"}, "auth_events": []string{},
		"hashes": map[string]string{"sha256": "x"}, "content": map[string]any{}}
	if r.create != nil {
		m["room_id"] = r.create.RoomID()
	}
	for k, v := range fields {
		if v == nil {
			delete(m, k)
			continue
		}
		m[k] = v
	}
	raw, err := json.Marshal(m)
	if err != nil {
		tb.Fatal(err)
	}
	ev, err := events.Parse(raw, r.rv)
	if err != nil {
		tb.Fatalf("parse %s: %v", raw, err)
	}
	return ev
}

func newV12Room(tb testing.TB) *v12Room {
	r := &v12Room{rv: roomVersion(tb, "12")}
	r.create = r.parse(tb, map[string]any{"type": "m.room.create", "state_key": "", "sender": alice, "prev_events": []string{},
		"content": map[string]any{"room_version": "12", "additional_creators": []string{carol}}})
	r.state = eventauth.NewStateMap(r.create)
	for _, f := range []map[string]any{
		{"type": "m.room.member", "state_key": alice, "sender": alice, "content": map[string]any{"membership": "join"}},
		{"type": "m.room.member", "state_key": carol, "sender": carol, "content": map[string]any{"membership": "join"}},
		{"type": "m.room.member", "state_key": bob, "sender": bob, "content": map[string]any{"membership": "join"}},
		{"type": "m.room.member", "state_key": mod, "sender": mod, "content": map[string]any{"membership": "join"}},
		{"type": "m.room.power_levels", "state_key": "", "sender": alice, "content": map[string]any{"users": map[string]any{bob: 100, mod: 50}}},
		{"type": "m.room.join_rules", "state_key": "", "sender": alice, "content": map[string]any{"join_rule": "public"}},
	} {
		ev := r.parse(tb, f)
		r.state[eventauth.StateKey{Type: ev.Type(), StateKey: *ev.StateKey()}] = ev
	}
	return r
}

// TestV12CreateEvent: MSC4291's create event (no room_id, no auth events)
// and MSC4289's additional_creators (an array of user ids).
func TestV12CreateEvent(t *testing.T) {
	r := newV12Room(t)
	if err := eventauth.Check(r.create, nil); err != nil {
		t.Fatalf("valid v12 create refused: %v", err)
	}
	for name, fields := range map[string]map[string]any{
		"with room_id":               {"room_id": "!r:a.test"},
		"with auth_events":           {"auth_events": []string{"$x"}},
		"additional_creators string": {"content": map[string]any{"additional_creators": carol}},
		"additional_creators number": {"content": map[string]any{"additional_creators": []any{1}}},
		"additional_creators bad id": {"content": map[string]any{"additional_creators": []string{"carol"}}},
		"additional_creators null":   {"content": map[string]any{"additional_creators": nil}},
	} {
		f := map[string]any{"type": "m.room.create", "state_key": "", "sender": alice, "prev_events": []string{}, "room_id": nil}
		for k, v := range fields {
			f[k] = v
		}
		if c, ok := f["content"].(map[string]any); ok && c["additional_creators"] == nil {
			f["content"] = json.RawMessage(`{"additional_creators":null}`)
		}
		ev := (&v12Room{rv: r.rv}).parse(t, f)
		if err := eventauth.Check(ev, nil); err == nil {
			t.Errorf("%s: create event allowed", name)
		}
	}
}

// TestV12AuthEventsSelection: the create event is implied, so it is neither
// needed nor allowed among auth_events.
func TestV12AuthEventsSelection(t *testing.T) {
	r := newV12Room(t)
	for _, k := range eventauth.AuthEventsNeeded("m.room.topic", nil, bob, nil, r.rv) {
		if k.Type == "m.room.create" {
			t.Fatal("AuthEventsNeeded lists m.room.create in v12")
		}
	}
	pl, bobJoin := r.state.Get("m.room.power_levels", ""), r.state.Get("m.room.member", bob)
	good := r.parse(t, map[string]any{"type": "m.room.topic", "state_key": "", "sender": bob,
		"auth_events": []string{pl.EventID(), bobJoin.EventID()}})
	if err := eventauth.CheckAuthEventsSelection(good, []*events.Event{pl, bobJoin}); err != nil {
		t.Errorf("selection without create refused: %v", err)
	}
	bad := r.parse(t, map[string]any{"type": "m.room.topic", "state_key": "", "sender": bob,
		"auth_events": []string{r.create.EventID(), pl.EventID(), bobJoin.EventID()}})
	if err := eventauth.CheckAuthEventsSelection(bad, []*events.Event{r.create, pl, bobJoin}); err == nil {
		t.Error("selection listing the create event allowed")
	}
}

// TestV12PrivilegedCreators: creators outrank every power level and may not
// be listed in the power levels event.
func TestV12PrivilegedCreators(t *testing.T) {
	r := newV12Room(t)
	member := func(sender, target, membership string) *events.Event {
		return r.parse(t, map[string]any{"type": "m.room.member", "state_key": target, "sender": sender, "content": map[string]any{"membership": membership}})
	}
	pl := func(sender string, users map[string]any) *events.Event {
		return r.parse(t, map[string]any{"type": "m.room.power_levels", "state_key": "", "sender": sender, "content": map[string]any{"users": users}})
	}
	for _, tc := range []struct {
		name  string
		ev    *events.Event
		allow bool
	}{
		{"additional creator bans a 100", member(carol, bob, "ban"), true},
		{"creator kicks a 100", member(alice, bob, "leave"), true},
		{"a 100 bans the creator", member(bob, alice, "ban"), false},
		{"a 100 kicks an additional creator", member(bob, carol, "leave"), false},
		{"creator kicks the other creator", member(alice, carol, "leave"), false},
		{"power levels listing the creator", pl(alice, map[string]any{alice: 100, bob: 100}), false},
		{"power levels listing an additional creator", pl(alice, map[string]any{carol: 1}), false},
		{"creator raises mod to 100", pl(alice, map[string]any{bob: 100, mod: 100}), true},
		{"a 100 demotes another 100", pl(bob, map[string]any{bob: 100}), true},
		{"creator sets a level above 100", pl(alice, map[string]any{bob: 100, mod: 1000}), true},
		{"a 100 sets a level above 100", pl(bob, map[string]any{bob: 100, mod: 101}), false},
	} {
		err := eventauth.Check(tc.ev, r.state)
		if (err == nil) != tc.allow {
			t.Errorf("%s: allowed=%v (%v), want %v", tc.name, err == nil, err, tc.allow)
		}
	}
	// Without a power levels event the creators still rank first.
	delete(r.state, eventauth.StateKey{Type: "m.room.power_levels"})
	topic := func(sender string) *events.Event {
		return r.parse(t, map[string]any{"type": "m.room.topic", "state_key": "", "sender": sender})
	}
	if err := eventauth.Check(topic(carol), r.state); err != nil {
		t.Errorf("additional creator may not set the topic without power levels: %v", err)
	}
	if err := eventauth.Check(topic(bob), r.state); err == nil {
		t.Error("bob may set the topic without power levels")
	}
	if !eventauth.IsCreator(r.create, carol) || !eventauth.IsCreator(r.create, alice) || eventauth.IsCreator(r.create, bob) {
		t.Error("IsCreator")
	}
	if got := eventauth.DefaultPowerLevels(r.create).UserLevel(carol); got != eventauth.CreatorLevel {
		t.Errorf("additional creator's default level %d", got)
	}
}

// TestV12CreateOfAnotherRoom: the create event supplied must be the one the
// room id names.
func TestV12CreateOfAnotherRoom(t *testing.T) {
	r := newV12Room(t)
	other := (&v12Room{rv: r.rv}).parse(t, map[string]any{"type": "m.room.create", "state_key": "", "sender": alice, "prev_events": []string{},
		"content": map[string]any{"room_version": "12", "x": 1}})
	topic := r.parse(t, map[string]any{"type": "m.room.topic", "state_key": "", "sender": alice})
	r.state[eventauth.StateKey{Type: "m.room.create"}] = other
	err := eventauth.Check(topic, r.state)
	if err == nil || !strings.Contains(err.Error(), "another room") {
		t.Errorf("event checked against another room's create event: %v", err)
	}
}

// FuzzCheckV12 feeds arbitrary room version 12 PDUs to the auth rules
// against the v12 test room: nothing may panic and every rejection is a
// *NotAllowedError.
func FuzzCheckV12(f *testing.F) {
	r := newV12Room(f)
	f.Add(r.create.JSON())
	for _, ev := range r.state {
		f.Add(ev.JSON())
	}
	list := make([]*events.Event, 0, len(r.state))
	for _, ev := range r.state {
		list = append(list, ev)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		ev, err := events.Parse(data, r.rv)
		if err != nil {
			return
		}
		for _, auth := range []eventauth.AuthEvents{r.state, nil, eventauth.StateMap{}} {
			if err := eventauth.Check(ev, auth); err != nil {
				var na *eventauth.NotAllowedError
				if !errors.As(err, &na) {
					t.Fatalf("Check returned %T, want *NotAllowedError: %v", err, err)
				}
			}
		}
		_ = eventauth.CheckAuthEventsSelection(ev, list)
		_, _ = eventauth.ParsePowerLevels(ev.Content(), r.rv)
	})
}
