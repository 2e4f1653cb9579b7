package filters_test

import (
	"encoding/json"
	"testing"

	"ganglion/internal/filters"
)

func TestMatches(t *testing.T) {
	f, err := filters.ParseRoomEventFilter([]byte(`{"types":["m.room.*","org.example"],"not_types":["m.room.member"],
		"not_senders":["@spam:x"],"rooms":["!a:x"],"contains_url":true}`))
	if err != nil {
		t.Fatal(err)
	}
	url := json.RawMessage(`{"url":"mxc://x/y"}`)
	for _, tc := range []struct {
		room, typ, sender string
		content           json.RawMessage
		want              bool
	}{
		{"!a:x", "m.room.message", "@u:x", url, true},
		{"!a:x", "org.example", "@u:x", url, true},
		{"!a:x", "m.room.member", "@u:x", url, false},
		{"!a:x", "m.reaction", "@u:x", url, false},
		{"!a:x", "m.room.message", "@spam:x", url, false},
		{"!b:x", "m.room.message", "@u:x", url, false},
		{"!a:x", "m.room.message", "@u:x", json.RawMessage(`{"body":"no url"}`), false},
	} {
		if got := f.MatchesEvent(tc.room, tc.typ, tc.sender, tc.content); got != tc.want {
			t.Errorf("%s %s %s: got %v", tc.room, tc.typ, tc.sender, got)
		}
	}
	var nilFilter *filters.RoomEventFilter
	if !nilFilter.MatchesEvent("!a:x", "t", "@u:x", nil) {
		t.Fatal("nil filter must match everything")
	}
}

func TestParseErrors(t *testing.T) {
	for _, in := range []string{`{"limit":-1}`, `{"senders":["nobody"]}`, `{"rooms":["a"]}`, `{"types":"m.room.message"}`, `[]`, `nope`} {
		if _, err := filters.ParseRoomEventFilter([]byte(in)); err == nil {
			t.Errorf("%s: no error", in)
		}
	}
}

func FuzzParseFilter(f *testing.F) {
	for _, s := range []string{`{}`, `{"room":{"timeline":{"limit":5,"types":["m.*"]},"state":{"lazy_load_members":true}}}`,
		`{"presence":{"not_senders":["@a:b"]}}`, `{"room":{"rooms":["!a:b"],"include_leave":true}}`, `[]`, `{"event_format":"x"}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		flt, err := filters.Parse(raw)
		if err != nil {
			return
		}
		// A filter that parsed must be usable without panicking.
		_ = flt.RoomAllowed("!r:x")
		_ = flt.Timeline().MatchesEvent("!r:x", "m.room.message", "@u:x", []byte(`{"url":"mxc://a/b"}`))
		_ = flt.State().MatchesEvent("!r:x", "m.room.member", "@u:x", nil)
		_ = flt.PresenceFilter().Matches("m.presence", "@u:x")
		_ = flt.TimelineLimit(10)
		_ = flt.LazyLoadMembers()
	})
}
