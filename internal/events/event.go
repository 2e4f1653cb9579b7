// Package events owns the Matrix event format: room versions, canonical
// JSON, content hashes, signatures, event ids and redaction. It does no I/O.
package events

import (
	"encoding/json"
	"fmt"
)

// Event is a parsed, immutable PDU. The raw JSON is kept in canonical form
// (as Parse produced it; "unsigned" replaced only via SetUnsigned) because
// hashes and signatures are computed over exactly those bytes, not over a
// re-encoding of the parsed fields.
type Event struct {
	raw     []byte
	id      string
	version *RoomVersion

	fields eventFields
}

// eventFields mirrors the keys of a PDU that the server interprets.
type eventFields struct {
	EventID        string          `json:"event_id,omitempty"` // v1/v2 only
	RoomID         string          `json:"room_id"`
	Sender         string          `json:"sender"`
	Type           string          `json:"type"`
	StateKey       *string         `json:"state_key,omitempty"`
	Content        json.RawMessage `json:"content"`
	Redacts        string          `json:"redacts,omitempty"` // top-level redacts (v1–v10)
	Depth          int64           `json:"depth"`
	OriginServerTS int64           `json:"origin_server_ts"`
	Origin         string          `json:"origin,omitempty"`
	Unsigned       json.RawMessage `json:"unsigned,omitempty"`
	// PrevEvents and AuthEvents are decoded per room version: v1/v2 use
	// [[id, {hashes}], …], v3+ use [id, …]. Both are normalised to ids.
	PrevEvents []string `json:"-"`
	AuthEvents []string `json:"-"`
	// roomIDImplied: a create event of a RoomIDFromCreate version without a
	// room_id key; RoomID is derived from its event id.
	roomIDImplied bool
}

func (e *Event) EventID() string           { return e.id }
func (e *Event) RoomID() string            { return e.fields.RoomID }
func (e *Event) Sender() string            { return e.fields.Sender }
func (e *Event) Type() string              { return e.fields.Type }
func (e *Event) StateKey() *string         { return e.fields.StateKey }
func (e *Event) Content() json.RawMessage  { return e.fields.Content }
func (e *Event) Depth() int64              { return e.fields.Depth }
func (e *Event) OriginServerTS() int64     { return e.fields.OriginServerTS }
func (e *Event) PrevEventIDs() []string    { return e.fields.PrevEvents }
func (e *Event) AuthEventIDs() []string    { return e.fields.AuthEvents }
func (e *Event) Unsigned() json.RawMessage { return e.fields.Unsigned }
func (e *Event) Version() *RoomVersion     { return e.version }

// HasImpliedRoomID reports whether the event is a create event of a room
// version whose room id is the create event's reference hash (v12+) and
// carries no room_id of its own, as it must. RoomID is then derived.
func (e *Event) HasImpliedRoomID() bool { return e.fields.roomIDImplied }

// JSON returns the event exactly as stored/signed.
func (e *Event) JSON() []byte { return e.raw }

// IsState reports whether the event has a state_key (possibly empty).
func (e *Event) IsState() bool { return e.fields.StateKey != nil }

// StateKeyEquals is a nil-safe comparison used throughout the auth rules.
func (e *Event) StateKeyEquals(s string) bool {
	return e.fields.StateKey != nil && *e.fields.StateKey == s
}

// Redacts returns the event id this m.room.redaction targets: the top-level
// key before room v11, content.redacts from v11 on (v11 events may carry both).
func (e *Event) Redacts() string {
	if e.version != nil && e.version.RedactsInContent {
		if s, ok := contentString(e.fields.Content, "redacts"); ok && s != "" {
			return s
		}
	}
	return e.fields.Redacts
}

// Membership returns content.membership for m.room.member events, "" otherwise.
func (e *Event) Membership() string {
	if e.fields.Type != "m.room.member" {
		return ""
	}
	s, _ := contentString(e.fields.Content, "membership")
	return s
}

// contentString reads a string from the event's (canonical) content by exact
// key. encoding/json would also match "Membership" or "MEMBERSHIP", which
// other servers do not treat as the same key.
func contentString(content []byte, key string) (string, bool) {
	c, err := parseObject(content)
	if err != nil {
		return "", false
	}
	v, ok := c.get(key)
	if !ok {
		return "", false
	}
	return unquote(v)
}

func (e *Event) String() string {
	return fmt.Sprintf("%s (%s in %s by %s)", e.id, e.fields.Type, e.fields.RoomID, e.fields.Sender)
}
