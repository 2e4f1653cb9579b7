package events_test

import (
	"errors"
	"fmt"
	"testing"

	"ganglion/internal/events"
)

func TestRedactContent(t *testing.T) {
	const (
		member    = `{"membership":"join","displayname":"Al","avatar_url":"mxc://x/y","join_authorised_via_users_server":"@a:x","third_party_invite":{"display_name":"d","signed":{"mxid":"@a:x","token":"t"}}}`
		create    = `{"creator":"@a:x","m.federate":false,"room_version":"1","predecessor":{"room_id":"!o:x"}}`
		joinRules = `{"join_rule":"restricted","allow":[{"type":"m.room_membership","room_id":"!s:x"}],"extra":1}`
		power     = `{"ban":50,"events":{"m.room.name":50},"events_default":0,"invite":0,"kick":50,"notifications":{"room":50},"redact":50,"state_default":50,"users":{"@a:x":100},"users_default":0,"extra":true}`
		powerKept = `{"ban":50,"events":{"m.room.name":50},"events_default":0,"kick":50,"redact":50,"state_default":50,"users":{"@a:x":100},"users_default":0}`
	)
	tests := []struct {
		version, typ, content, want string
	}{
		{"1", "m.room.member", member, `{"membership":"join"}`},
		{"8", "m.room.member", member, `{"membership":"join"}`},
		{"9", "m.room.member", member, `{"join_authorised_via_users_server":"@a:x","membership":"join"}`},
		{"10", "m.room.member", member, `{"join_authorised_via_users_server":"@a:x","membership":"join"}`},
		{"11", "m.room.member", member, `{"join_authorised_via_users_server":"@a:x","membership":"join","third_party_invite":{"signed":{"mxid":"@a:x","token":"t"}}}`},
		// Synapse keeps an empty third_party_invite when "signed" is absent;
		// the reference hash depends on it.
		{"11", "m.room.member", `{"membership":"invite","third_party_invite":{"display_name":"d"}}`, `{"membership":"invite","third_party_invite":{}}`},
		{"11", "m.room.member", `{"membership":"invite","third_party_invite":"not an object"}`, `{"membership":"invite"}`},
		{"11", "m.room.member", `{"displayname":"no membership"}`, `{}`},
		{"1", "m.room.create", create, `{"creator":"@a:x"}`},
		{"10", "m.room.create", create, `{"creator":"@a:x"}`},
		{"11", "m.room.create", create, create},
		{"7", "m.room.join_rules", joinRules, `{"join_rule":"restricted"}`},
		{"8", "m.room.join_rules", joinRules, `{"allow":[{"room_id":"!s:x","type":"m.room_membership"}],"join_rule":"restricted"}`},
		{"11", "m.room.join_rules", joinRules, `{"allow":[{"room_id":"!s:x","type":"m.room_membership"}],"join_rule":"restricted"}`},
		{"1", "m.room.power_levels", power, powerKept},
		{"10", "m.room.power_levels", power, powerKept},
		{"11", "m.room.power_levels", power, `{"ban":50,"events":{"m.room.name":50},"events_default":0,"invite":0,"kick":50,"redact":50,"state_default":50,"users":{"@a:x":100},"users_default":0}`},
		{"1", "m.room.aliases", `{"aliases":["#a:x"],"extra":1}`, `{"aliases":["#a:x"]}`},
		{"5", "m.room.aliases", `{"aliases":["#a:x"],"extra":1}`, `{"aliases":["#a:x"]}`},
		{"6", "m.room.aliases", `{"aliases":["#a:x"],"extra":1}`, `{}`},
		{"1", "m.room.history_visibility", `{"history_visibility":"shared","extra":1}`, `{"history_visibility":"shared"}`},
		{"11", "m.room.history_visibility", `{"history_visibility":"shared","extra":1}`, `{"history_visibility":"shared"}`},
		{"10", "m.room.redaction", `{"redacts":"$e","reason":"spam"}`, `{}`},
		{"11", "m.room.redaction", `{"redacts":"$e","reason":"spam"}`, `{"redacts":"$e"}`},
		{"11", "m.room.message", `{"body":"hi","msgtype":"m.text"}`, `{}`},
		{"11", "m.room.name", `{"name":"secret"}`, `{}`},
		// Keys are matched exactly, after canonicalisation of escapes.
		{"10", "m.room.member", `{"Membership":"join","member\u0073hip":"leave"}`, `{"membership":"leave"}`},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("v%s/%s", tt.version, tt.typ), func(t *testing.T) {
			rv := roomVersion(t, tt.version)
			in := fmt.Sprintf(`{"type":%q,"content":%s,"room_id":"!r:x","sender":"@a:x","depth":1,"origin_server_ts":1,"prev_events":[],"auth_events":[]}`, tt.typ, tt.content)
			got, err := events.Redact([]byte(in), rv)
			if err != nil {
				t.Fatal(err)
			}
			want := canonical(t, fmt.Sprintf(`{"auth_events":[],"content":%s,"depth":1,"origin_server_ts":1,"prev_events":[],"room_id":"!r:x","sender":"@a:x","type":%q}`, tt.want, tt.typ))
			if string(got) != want {
				t.Errorf("got  %s\nwant %s", got, want)
			}
			again, err := events.Redact(got, rv)
			if err != nil || string(again) != string(got) {
				t.Errorf("not idempotent: %s (%v)", again, err)
			}
		})
	}
}

func TestRedactTopLevel(t *testing.T) {
	const in = `{"type":"m.room.message","content":{"body":"x"},"room_id":"!r:x","sender":"@a:x",
		"origin":"x","membership":"join","prev_state":[],"depth":1,"origin_server_ts":1,"prev_events":[],
		"auth_events":[],"hashes":{"sha256":"h"},"signatures":{"x":{}},"unsigned":{"age":1},
		"event_id":"$a:x","state_key":"","redacts":"$b","age_ts":5,"foo":"bar"}`
	const kept = `"auth_events":[],"content":{},"depth":1,"event_id":"$a:x","hashes":{"sha256":"h"},"origin_server_ts":1,"prev_events":[],"room_id":"!r:x","sender":"@a:x","signatures":{"x":{}},"state_key":"","type":"m.room.message"`
	tests := []struct {
		version string
		want    string
	}{
		{"1", `{` + kept + `,"membership":"join","origin":"x","prev_state":[]}`},
		{"10", `{` + kept + `,"membership":"join","origin":"x","prev_state":[]}`},
		{"11", `{` + kept + `}`},
	}
	for _, tt := range tests {
		t.Run("v"+tt.version, func(t *testing.T) {
			got, err := events.Redact([]byte(in), roomVersion(t, tt.version))
			if err != nil {
				t.Fatal(err)
			}
			if want := canonical(t, tt.want); string(got) != want {
				t.Errorf("got  %s\nwant %s", got, want)
			}
		})
	}
}

func TestRedactRejects(t *testing.T) {
	rv := roomVersion(t, "10")
	for _, in := range []string{
		`[]`, `{"content":{}}`, `{"type":1,"content":{}}`, `{"type":"m.room.member"}`,
		`{"type":"m.room.member","content":[]}`, `{"type":"x","content":{},"a":1.5}`, `{`,
	} {
		if got, err := events.Redact([]byte(in), rv); err == nil {
			t.Errorf("Redact(%s) = %s, want error", in, got)
		} else if !errors.Is(err, events.ErrMalformedEvent) {
			t.Errorf("Redact(%s): %v is not ErrMalformedEvent", in, err)
		}
	}
	if _, err := events.Redact([]byte(`{}`), nil); err == nil {
		t.Error("Redact with nil room version succeeded")
	}
}
