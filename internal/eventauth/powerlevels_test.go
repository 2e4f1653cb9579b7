package eventauth_test

import (
	"encoding/json"
	"maps"
	"testing"

	"ganglion/internal/eventauth"
)

// defaults is the effective content of "{}", which is also what a room
// without a power levels event uses apart from the creator's 100.
func defaults() eventauth.PowerLevels {
	return eventauth.PowerLevels{
		Ban: 50, Kick: 50, Redact: 50, Invite: 0,
		StateDefault: 50, EventsDefault: 0, UsersDefault: 0,
		Users: map[string]int64{}, Events: map[string]int64{},
		Notifications: map[string]int64{"room": 50},
	}
}

func equalLevels(a, b eventauth.PowerLevels) bool {
	return a.Ban == b.Ban && a.Kick == b.Kick && a.Redact == b.Redact && a.Invite == b.Invite &&
		a.StateDefault == b.StateDefault && a.EventsDefault == b.EventsDefault && a.UsersDefault == b.UsersDefault &&
		maps.Equal(a.Users, b.Users) && maps.Equal(a.Events, b.Events) && maps.Equal(a.Notifications, b.Notifications)
}

func TestParsePowerLevels(t *testing.T) {
	with := func(f func(*eventauth.PowerLevels)) eventauth.PowerLevels {
		pl := defaults()
		f(&pl)
		return pl
	}
	tests := []struct {
		name    string
		version string
		content string
		want    eventauth.PowerLevels
		wantErr bool
	}{
		{name: "empty content takes defaults", version: "10", content: `{}`, want: defaults()},
		{name: "integers", version: "10",
			content: `{"ban":1,"kick":2,"redact":3,"invite":4,"state_default":5,"events_default":6,"users_default":7,"users":{"@a:x":8},"events":{"m.x":9},"notifications":{"room":10}}`,
			want: eventauth.PowerLevels{Ban: 1, Kick: 2, Redact: 3, Invite: 4, StateDefault: 5, EventsDefault: 6, UsersDefault: 7,
				Users: map[string]int64{"@a:x": 8}, Events: map[string]int64{"m.x": 9}, Notifications: map[string]int64{"room": 10}}},
		// Before v10 values are read as Python's int() reads them.
		{name: "python int strings (v9)", version: "9", content: `{"ban":" 7 ","kick":"+1_0","redact":"-3","invite":"007"}`,
			want: with(func(p *eventauth.PowerLevels) { p.Ban, p.Kick, p.Redact, p.Invite = 7, 10, -3, 7 })},
		{name: "floats truncate toward zero (v5)", version: "5", content: `{"ban":7.9,"kick":-7.9,"users":{"@a:x":1e2}}`,
			want: with(func(p *eventauth.PowerLevels) { p.Ban, p.Kick, p.Users = 7, -7, map[string]int64{"@a:x": 100} })},
		{name: "booleans are 0 and 1 (v9)", version: "9", content: `{"ban":true,"kick":false}`,
			want: with(func(p *eventauth.PowerLevels) { p.Ban, p.Kick = 1, 0 })},
		{name: "double underscore (v9)", version: "9", content: `{"ban":"1__0"}`, wantErr: true},
		{name: "leading underscore (v9)", version: "9", content: `{"ban":"_10"}`, wantErr: true},
		{name: "trailing underscore (v9)", version: "9", content: `{"ban":"10_"}`, wantErr: true},
		{name: "hex string (v9)", version: "9", content: `{"ban":"0x10"}`, wantErr: true},
		{name: "decimal string (v9)", version: "9", content: `{"ban":"1.5"}`, wantErr: true},
		{name: "empty string (v9)", version: "9", content: `{"ban":""}`, wantErr: true},
		{name: "sign only (v9)", version: "9", content: `{"ban":"-"}`, wantErr: true},
		{name: "null (v9)", version: "9", content: `{"ban":null}`, wantErr: true},
		{name: "array (v9)", version: "9", content: `{"ban":[1]}`, wantErr: true},
		{name: "out of int64 range (v9)", version: "9", content: `{"ban":"99999999999999999999"}`, wantErr: true},
		{name: "users not an object (v9)", version: "9", content: `{"users":[]}`, wantErr: true},
		{name: "users key not a user id (v9)", version: "9", content: `{"users":{"alice":1}}`, wantErr: true},
		{name: "content not an object", version: "9", content: `[]`, wantErr: true},
		{name: "string rejected (v10)", version: "10", content: `{"ban":"50"}`, wantErr: true},
		{name: "integral float rejected (v10)", version: "10", content: `{"ban":50.0}`, wantErr: true},
		{name: "boolean rejected (v10)", version: "10", content: `{"ban":true}`, wantErr: true},
		{name: "string in events rejected (v10)", version: "10", content: `{"events":{"m.x":"1"}}`, wantErr: true},
		{name: "malformed notifications dropped before v6", version: "5", content: `{"ban":1,"notifications":{"room":null,"x":"2"}}`,
			want: with(func(p *eventauth.PowerLevels) { p.Ban, p.Notifications = 1, map[string]int64{"room": 50, "x": 2} })},
		{name: "malformed notifications rejected from v6", version: "6", content: `{"notifications":{"room":null}}`, wantErr: true},
		{name: "string in notifications rejected (v11)", version: "11", content: `{"notifications":{"room":"1"}}`, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := eventauth.ParsePowerLevels(json.RawMessage(tc.content), roomVersion(t, tc.version))
			if tc.wantErr {
				if err == nil {
					t.Fatalf("want error, got %+v", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !equalLevels(got, tc.want) {
				t.Fatalf("got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestDefaultPowerLevels(t *testing.T) {
	for _, v := range allVersions() {
		t.Run("v"+v, func(t *testing.T) {
			r := newRoom(t, v, roomSetup{bare: true})
			pl := eventauth.DefaultPowerLevels(r.create)
			want := defaults()
			want.Users = map[string]int64{alice: 100}
			if !equalLevels(pl, want) {
				t.Fatalf("got %+v, want %+v", pl, want)
			}
			if pl.UserLevel(alice) != 100 || pl.UserLevel(bob) != 0 {
				t.Fatalf("creator %d, other %d", pl.UserLevel(alice), pl.UserLevel(bob))
			}
			if pl.EventLevel("m.room.name", true) != 50 || pl.EventLevel("m.room.message", false) != 0 {
				t.Fatalf("state level %d, message level %d", pl.EventLevel("m.room.name", true), pl.EventLevel("m.room.message", false))
			}
		})
	}
	t.Run("no create event", func(t *testing.T) {
		if pl := eventauth.DefaultPowerLevels(nil); !equalLevels(pl, defaults()) {
			t.Fatalf("got %+v", pl)
		}
	})
}

func TestLevelLookups(t *testing.T) {
	pl, err := eventauth.ParsePowerLevels(json.RawMessage(
		`{"users_default":5,"events_default":10,"state_default":20,"users":{"@a:x":30},"events":{"m.room.name":40,"m.reaction":1}}`),
		roomVersion(t, "10"))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		got  int64
		want int64
	}{
		{"listed user", pl.UserLevel("@a:x"), 30},
		{"unlisted user gets users_default", pl.UserLevel("@b:x"), 5},
		{"listed state type", pl.EventLevel("m.room.name", true), 40},
		{"listed message type", pl.EventLevel("m.reaction", false), 1},
		{"unlisted state type gets state_default", pl.EventLevel("m.room.topic", true), 20},
		{"unlisted message type gets events_default", pl.EventLevel("m.room.message", false), 10},
	}
	for _, tc := range tests {
		if tc.got != tc.want {
			t.Errorf("%s: got %d, want %d", tc.name, tc.got, tc.want)
		}
	}
}
