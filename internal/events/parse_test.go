package events_test

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"ganglion/internal/canonicaljson"
	"ganglion/internal/events"
)

// pdu renders a PDU with the given top-level keys replaced ("-" removes one).
func pdu(tb testing.TB, base string, overrides ...string) string {
	tb.Helper()
	s := strings.TrimSuffix(base, "}")
	var b strings.Builder
	// Later keys override earlier ones only in lenient parsers, so build
	// the object without duplicates: drop overridden keys from base.
	drop := map[string]bool{}
	for i := 0; i < len(overrides); i += 2 {
		drop[overrides[i]] = true
	}
	b.WriteString("{")
	first := true
	for _, part := range splitTopLevel(s[1:]) {
		key := part[1 : strings.Index(part[1:], `"`)+1]
		if drop[key] {
			continue
		}
		if !first {
			b.WriteString(",")
		}
		first = false
		b.WriteString(part)
	}
	for i := 0; i < len(overrides); i += 2 {
		if overrides[i+1] == "-" {
			continue
		}
		if !first {
			b.WriteString(",")
		}
		first = false
		fmt.Fprintf(&b, "%q:%s", overrides[i], overrides[i+1])
	}
	b.WriteString("}")
	return b.String()
}

// splitTopLevel splits the members of a compact object body (no braces).
func splitTopLevel(s string) []string {
	var parts []string
	depth, inStr, start := 0, false, 0
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case inStr && c == '\\':
			i++
		case c == '"':
			inStr = !inStr
		case inStr:
		case c == '{' || c == '[':
			depth++
		case c == '}' || c == ']':
			depth--
		case c == ',' && depth == 0:
			parts = append(parts, s[start:i])
			start = i + 1
		}
	}
	if start < len(s) {
		parts = append(parts, s[start:])
	}
	return parts
}

const (
	basePDU   = `{"auth_events":["$a"],"content":{"body":"hi"},"depth":5,"hashes":{"sha256":"x"},"origin_server_ts":1700000000000,"prev_events":["$p1","$p2"],"room_id":"!r:x","sender":"@a:x","signatures":{},"type":"m.room.message"}`
	baseV1PDU = `{"auth_events":[["$a:x",{"sha256":"aGFzaA"}]],"content":{"body":"hi"},"depth":5,"event_id":"$e:x","hashes":{"sha256":"x"},"origin_server_ts":1700000000000,"prev_events":[["$p1:x",{}],["$p2:x",{"sha256":"aGFzaA"}]],"room_id":"!r:x","sender":"@a:x","signatures":{},"type":"m.room.message"}`
)

func TestParseAccepts(t *testing.T) {
	tests := []struct {
		name, version, in string
		check             func(t *testing.T, e *events.Event)
	}{
		{"v10 message", "10", basePDU, func(t *testing.T, e *events.Event) {
			if e.RoomID() != "!r:x" || e.Sender() != "@a:x" || e.Type() != "m.room.message" || e.Depth() != 5 ||
				e.OriginServerTS() != 1700000000000 || e.IsState() || string(e.Content()) != `{"body":"hi"}` {
				t.Errorf("fields wrong: %v", e)
			}
			if !slices.Equal(e.PrevEventIDs(), []string{"$p1", "$p2"}) || !slices.Equal(e.AuthEventIDs(), []string{"$a"}) {
				t.Errorf("refs %v %v", e.PrevEventIDs(), e.AuthEventIDs())
			}
		}},
		{"v1 pairs normalised", "1", baseV1PDU, func(t *testing.T, e *events.Event) {
			if e.EventID() != "$e:x" {
				t.Errorf("id %s", e.EventID())
			}
			if !slices.Equal(e.PrevEventIDs(), []string{"$p1:x", "$p2:x"}) || !slices.Equal(e.AuthEventIDs(), []string{"$a:x"}) {
				t.Errorf("refs %v %v", e.PrevEventIDs(), e.AuthEventIDs())
			}
		}},
		{"empty state key", "10", pdu(t, basePDU, "state_key", `""`), func(t *testing.T, e *events.Event) {
			if !e.IsState() || !e.StateKeyEquals("") {
				t.Error("not a state event with empty state key")
			}
		}},
		{"pretty and unsorted is canonicalised", "10", "{\n \"type\": \"m.room.message\",\n " + strings.ReplaceAll(pdu(t, basePDU, "type", "-")[1:], ",", " ,\n\t"), func(t *testing.T, e *events.Event) {
			if want := canonical(t, basePDU); string(e.JSON()) != want {
				t.Errorf("JSON %s, want %s", e.JSON(), want)
			}
		}},
		{"unsigned kept", "10", pdu(t, basePDU, "unsigned", `{"age":5}`), func(t *testing.T, e *events.Event) {
			if string(e.Unsigned()) != `{"age":5}` {
				t.Errorf("unsigned %s", e.Unsigned())
			}
		}},
		{"origin tolerated", "10", pdu(t, basePDU, "origin", `"x"`), nil},
		{"event_id ignored in v4+", "10", pdu(t, basePDU, "event_id", `7`), nil},
		{"floats tolerated in v5", "5", pdu(t, basePDU, "content", `{"f":1.5,"n":123456789012345678901234}`), func(t *testing.T, e *events.Event) {
			if string(e.Content()) != `{"f":1.5,"n":123456789012345678901234}` {
				t.Errorf("content %s", e.Content())
			}
		}},
		{"duplicate keys last wins in v5", "5", `{"type":"a",` + basePDU[1:], func(t *testing.T, e *events.Event) {
			if e.Type() != "m.room.message" {
				t.Errorf("type %s", e.Type())
			}
		}},
		{"v11 redaction in content", "11", pdu(t, basePDU, "type", `"m.room.redaction"`, "content", `{"redacts":"$t"}`), func(t *testing.T, e *events.Event) {
			if e.Redacts() != "$t" {
				t.Errorf("redacts %q", e.Redacts())
			}
		}},
		{"v10 redaction at top level", "10", pdu(t, basePDU, "type", `"m.room.redaction"`, "content", `{"redacts":"$c"}`, "redacts", `"$t"`), func(t *testing.T, e *events.Event) {
			if e.Redacts() != "$t" {
				t.Errorf("redacts %q", e.Redacts())
			}
		}},
		{"membership exact key", "10", pdu(t, basePDU, "type", `"m.room.member"`, "state_key", `"@a:x"`, "content", `{"Membership":"join"}`), func(t *testing.T, e *events.Event) {
			if e.Membership() != "" {
				t.Errorf("Membership() = %q for content without membership", e.Membership())
			}
		}},
		{"membership", "10", pdu(t, basePDU, "type", `"m.room.member"`, "state_key", `"@a:x"`, "content", `{"membership":"join"}`), func(t *testing.T, e *events.Event) {
			if e.Membership() != "join" {
				t.Errorf("Membership() = %q", e.Membership())
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, err := events.Parse([]byte(tt.in), roomVersion(t, tt.version))
			if err != nil {
				t.Fatal(err)
			}
			if tt.check != nil {
				tt.check(t, e)
			}
		})
	}
}

func TestParseRejects(t *testing.T) {
	tests := []struct {
		name, version, in string
		kind              error
	}{
		{"not an object", "10", `[]`, events.ErrMalformedEvent},
		{"not JSON", "10", `{"type":`, canonicaljson.ErrSyntax},
		{"invalid utf8", "10", pdu(t, basePDU, "content", "{\"body\":\"\xff\"}"), canonicaljson.ErrUTF8},
		{"float in v6", "6", pdu(t, basePDU, "content", `{"f":1.5}`), canonicaljson.ErrNumber},
		{"integral float in v10", "10", pdu(t, basePDU, "content", `{"f":1.0}`), canonicaljson.ErrNumber},
		{"big int in v11", "11", pdu(t, basePDU, "content", `{"n":9007199254740992}`), canonicaljson.ErrNumber},
		{"duplicate key in v6", "6", `{"type":"a",` + basePDU[1:], canonicaljson.ErrDuplicateKey},
		{"case variant does not count", "10", pdu(t, basePDU, "room_id", "-", "ROOM_ID", `"!r:x"`), events.ErrMalformedEvent},
		{"float depth in v5", "5", pdu(t, basePDU, "depth", `5.0`), events.ErrMalformedEvent},
		{"depth beyond int64 in v5", "5", pdu(t, basePDU, "depth", `9223372036854775808`), events.ErrMalformedEvent},
		{"v1 refs in v3", "3", pdu(t, basePDU, "prev_events", `[["$p:x",{}]]`), events.ErrMalformedEvent},
		{"v3 refs in v1", "1", pdu(t, baseV1PDU, "prev_events", `["$p:x"]`), events.ErrMalformedEvent},
		{"v1 pair too long", "2", pdu(t, baseV1PDU, "auth_events", `[["$a:x",{},{}]]`), events.ErrMalformedEvent},
		{"v1 pair without hashes object", "2", pdu(t, baseV1PDU, "auth_events", `[["$a:x","h"]]`), events.ErrMalformedEvent},
		{"v1 missing event_id", "1", pdu(t, baseV1PDU, "event_id", "-"), events.ErrMalformedEvent},
		{"v1 event_id without sigil", "1", pdu(t, baseV1PDU, "event_id", `"e:x"`), events.ErrMalformedEvent},
		{"v1 event_id not a string", "1", pdu(t, baseV1PDU, "event_id", `1`), events.ErrMalformedEvent},
		{"oversize", "10", pdu(t, basePDU, "content", fmt.Sprintf(`{"body":%q}`, strings.Repeat("a", events.MaxPDUSize))), events.ErrEventTooLarge},
	}
	type field struct{ key, bad string }
	for _, f := range []field{
		{"room_id", "1"}, {"sender", "null"}, {"type", `["m.room.message"]`}, {"content", `"x"`}, {"content", `[]`},
		{"depth", `"5"`}, {"origin_server_ts", "true"}, {"prev_events", `{}`}, {"prev_events", `[1]`}, {"auth_events", `"$a"`},
		{"state_key", "1"}, {"redacts", "1"}, {"origin", "{}"}, {"unsigned", "[]"}, {"unsigned", "null"}, {"hashes", `"h"`}, {"signatures", "[]"},
	} {
		tests = append(tests, struct {
			name, version, in string
			kind              error
		}{"wrong type " + f.key + "=" + f.bad, "10", pdu(t, basePDU, f.key, f.bad), events.ErrMalformedEvent})
	}
	for _, key := range []string{"room_id", "sender", "type", "content", "depth", "origin_server_ts", "prev_events", "auth_events"} {
		tests = append(tests, struct {
			name, version, in string
			kind              error
		}{"missing " + key, "10", pdu(t, basePDU, key, "-"), events.ErrMalformedEvent})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, err := events.Parse([]byte(tt.in), roomVersion(t, tt.version))
			if err == nil {
				t.Fatalf("accepted: %s", e.JSON())
			}
			if !errors.Is(err, tt.kind) {
				t.Errorf("error %v is not %v", err, tt.kind)
			}
		})
	}
	if _, err := events.Parse([]byte(basePDU), nil); err == nil {
		t.Error("Parse with nil room version succeeded")
	}
}

func TestParseSizeLimit(t *testing.T) {
	rv := roomVersion(t, "10")
	base := len(canonical(t, pdu(t, basePDU, "content", `{"body":""}`)))
	for _, tt := range []struct {
		size    int
		wantErr bool
	}{{events.MaxPDUSize, false}, {events.MaxPDUSize + 1, true}} {
		in := pdu(t, basePDU, "content", fmt.Sprintf(`{"body":%q}`, strings.Repeat("a", tt.size-base)))
		// Whitespace does not count: only the canonical form is measured.
		in = strings.ReplaceAll(in, ",", " ,\n ")
		_, err := events.Parse([]byte(in), rv)
		if (err != nil) != tt.wantErr {
			t.Errorf("size %d: error %v, wantErr %v", tt.size, err, tt.wantErr)
		}
	}
}
