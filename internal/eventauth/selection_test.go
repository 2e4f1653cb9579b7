package eventauth_test

import (
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"

	"ganglion/internal/eventauth"
	"ganglion/internal/events"
)

func sk(t, k string) eventauth.StateKey { return eventauth.StateKey{Type: t, StateKey: k} }

func ptr(s string) *string { return &s }

func TestAuthEventsNeeded(t *testing.T) {
	create := sk("m.room.create", "")
	pl := sk("m.room.power_levels", "")
	jr := sk("m.room.join_rules", "")
	member := func(u string) eventauth.StateKey { return sk("m.room.member", u) }

	tests := []struct {
		name      string
		version   string
		eventType string
		stateKey  *string
		sender    string
		content   string
		want      []eventauth.StateKey
	}{
		{name: "create needs nothing", version: "10", eventType: "m.room.create", stateKey: ptr(""), sender: alice,
			content: `{}`, want: nil},
		{name: "message", version: "10", eventType: "m.room.message", sender: bob,
			content: `{"body":"x"}`, want: []eventauth.StateKey{create, pl, member(bob)}},
		{name: "state event", version: "1", eventType: "m.room.name", stateKey: ptr(""), sender: bob,
			content: `{"name":"x"}`, want: []eventauth.StateKey{create, pl, member(bob)}},
		{name: "join", version: "10", eventType: "m.room.member", stateKey: ptr(carol), sender: carol,
			content: `{"membership":"join"}`, want: []eventauth.StateKey{create, pl, member(carol), jr}},
		{name: "invite", version: "10", eventType: "m.room.member", stateKey: ptr(carol), sender: bob,
			content: `{"membership":"invite"}`, want: []eventauth.StateKey{create, pl, member(bob), jr, member(carol)}},
		{name: "knock", version: "7", eventType: "m.room.member", stateKey: ptr(carol), sender: carol,
			content: `{"membership":"knock"}`, want: []eventauth.StateKey{create, pl, member(carol), jr}},
		{name: "leave needs no join rules", version: "10", eventType: "m.room.member", stateKey: ptr(bob), sender: mod,
			content: `{"membership":"leave"}`, want: []eventauth.StateKey{create, pl, member(mod), member(bob)}},
		{name: "third-party invite names its token", version: "10", eventType: "m.room.member", stateKey: ptr(carol), sender: bob,
			content: `{"membership":"invite","third_party_invite":{"signed":{"mxid":"@carol:c.test","token":"tok"}}}`,
			want:    []eventauth.StateKey{create, pl, member(bob), jr, member(carol), sk("m.room.third_party_invite", "tok")}},
		{name: "restricted join names the authoriser (v8+)", version: "8", eventType: "m.room.member", stateKey: ptr(carol), sender: carol,
			content: `{"membership":"join","join_authorised_via_users_server":"@mod:a.test"}`,
			want:    []eventauth.StateKey{create, pl, member(carol), jr, member(mod)}},
		{name: "authoriser ignored before v8", version: "7", eventType: "m.room.member", stateKey: ptr(carol), sender: carol,
			content: `{"membership":"join","join_authorised_via_users_server":"@mod:a.test"}`,
			want:    []eventauth.StateKey{create, pl, member(carol), jr}},
		{name: "malformed member content", version: "10", eventType: "m.room.member", stateKey: ptr(carol), sender: carol,
			content: `[1]`, want: []eventauth.StateKey{create, pl, member(carol)}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := eventauth.AuthEventsNeeded(tc.eventType, tc.stateKey, tc.sender, json.RawMessage(tc.content), roomVersion(t, tc.version))
			if !slices.Equal(got, tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
}

// withAuth sets a literal's auth_events to the ids of evs.
func withAuth(tb testing.TB, literal string, evs ...*events.Event) string {
	tb.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(literal), &m); err != nil {
		tb.Fatal(err)
	}
	ids := []any{}
	for _, ev := range evs {
		ids = append(ids, ev.EventID())
	}
	m["auth_events"] = ids
	b, err := json.Marshal(m)
	if err != nil {
		tb.Fatal(err)
	}
	return string(b)
}

func TestCheckAuthEventsSelection(t *testing.T) {
	const (
		message      = `{"type":"m.room.message","sender":"@bob:b.test","content":{"body":"hi"}}`
		carolJoin    = `{"type":"m.room.member","state_key":"@carol:c.test","sender":"@carol:c.test","content":{"membership":"join"}}`
		carolViaMod  = `{"type":"m.room.member","state_key":"@carol:c.test","sender":"@carol:c.test","content":{"membership":"join","join_authorised_via_users_server":"@mod:a.test"}}`
		bobLeave     = `{"type":"m.room.member","state_key":"@bob:b.test","sender":"@bob:b.test","content":{"membership":"leave"}}`
		otherPL      = `{"type":"m.room.power_levels","state_key":"","sender":"@alice:a.test","content":{"users":{"@alice:a.test":99}}}`
		otherRoomPL  = `{"type":"m.room.power_levels","state_key":"","room_id":"!other:a.test","sender":"@alice:a.test","content":{}}`
		someMessage  = `{"type":"m.room.message","sender":"@alice:a.test","content":{"body":"not state"}}`
		createLookup = "create"
	)
	type pick = string // "create", "pl", "jr", or a user id for a membership
	tests := []struct {
		name     string
		versions []string
		event    string
		auth     []pick
		extra    []string // further auth events, built from literals
		supplied int      // if >0, pass only the first n auth events
		wantErr  string
	}{
		{name: "message with create, power levels, sender membership", versions: allVersions(),
			event: message, auth: []pick{createLookup, "pl", bob}},
		{name: "message with only create", versions: allVersions(),
			event: message, auth: []pick{createLookup}},
		{name: "message with join rules rejected", versions: allVersions(),
			event: message, auth: []pick{createLookup, "pl", bob, "jr"}, wantErr: "may not include"},
		{name: "message with someone else's membership rejected", versions: allVersions(),
			event: message, auth: []pick{createLookup, "pl", bob, mod}, wantErr: "may not include"},
		{name: "message without create rejected", versions: allVersions(),
			event: message, auth: []pick{"pl", bob}, wantErr: "no m.room.create"},
		{name: "two power levels events rejected", versions: allVersions(),
			event: message, auth: []pick{createLookup, "pl", bob}, extra: []string{otherPL}, wantErr: "two m.room.power_levels"},
		{name: "auth event of another room rejected", versions: allVersions(),
			event: message, auth: []pick{createLookup, bob}, extra: []string{otherRoomPL}, wantErr: "another room"},
		{name: "non-state auth event rejected", versions: allVersions(),
			event: message, auth: []pick{createLookup, bob}, extra: []string{someMessage}, wantErr: "not a state event"},
		{name: "auth events missing from the supplied list rejected", versions: allVersions(),
			event: message, auth: []pick{createLookup, "pl", bob}, supplied: 2, wantErr: "were supplied"},
		{name: "join with join rules", versions: allVersions(),
			event: carolJoin, auth: []pick{createLookup, "pl", "jr"}},
		{name: "leave with join rules rejected", versions: allVersions(),
			event: bobLeave, auth: []pick{createLookup, "pl", bob, "jr"}, wantErr: "may not include"},
		{name: "restricted join with authoriser membership (v8+)", versions: versions(8, 11),
			event: carolViaMod, auth: []pick{createLookup, "pl", "jr", mod}},
		{name: "authoriser membership not allowed before v8", versions: versions(1, 7),
			event: carolViaMod, auth: []pick{createLookup, "pl", "jr", mod}, wantErr: "may not include"},
		{name: "third-party invite with its m.room.third_party_invite", versions: allVersions(),
			event: tpiInvite, auth: []pick{createLookup, "pl", bob, "jr"}, extra: []string{tpiByBob}},
	}
	for _, tc := range tests {
		for _, v := range tc.versions {
			t.Run("v"+v+"/"+tc.name, func(t *testing.T) {
				r := newRoom(t, v, roomSetup{state: []string{publicRoom}})
				var auth []*events.Event
				for _, p := range tc.auth {
					switch p {
					case createLookup:
						auth = append(auth, r.create)
					case "pl":
						auth = append(auth, r.state.Get("m.room.power_levels", ""))
					case "jr":
						auth = append(auth, r.state.Get("m.room.join_rules", ""))
					default:
						auth = append(auth, r.state.Get("m.room.member", p))
					}
				}
				for _, lit := range tc.extra {
					auth = append(auth, r.event(t, lit))
				}
				ev := r.event(t, withAuth(t, r.repl.Replace(tc.event), auth...))
				if tc.supplied > 0 {
					auth = auth[:tc.supplied]
				}
				err := eventauth.CheckAuthEventsSelection(ev, auth)
				if tc.wantErr == "" {
					if err != nil {
						t.Fatalf("want ok, got %v", err)
					}
					return
				}
				var na *eventauth.NotAllowedError
				if !errors.As(err, &na) || !strings.Contains(na.Reason, tc.wantErr) {
					t.Fatalf("want rejection containing %q, got %v", tc.wantErr, err)
				}
			})
		}
	}

	t.Run("create event is not checked", func(t *testing.T) {
		r := newRoom(t, "10", roomSetup{bare: true})
		if err := eventauth.CheckAuthEventsSelection(r.create, nil); err != nil {
			t.Fatal(err)
		}
	})
}
