package events

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"ganglion/internal/canonicaljson"
)

// ProtoEvent is what the server decides about an event before it exists:
// everything but hashes, signatures and (v3+) the id.
type ProtoEvent struct {
	RoomID, Sender, Type string
	StateKey             *string
	Content              json.RawMessage // a JSON object; nil means {}
	PrevEvents           []string
	AuthEvents           []string
	Depth                int64
	OriginServerTS       int64
	// Redacts is the target of an m.room.redaction. It is written at the top
	// level in every version and, from v11, also into content.redacts.
	Redacts  string
	Unsigned json.RawMessage // optional JSON object, outside hashes and signatures
	// RefHashes (v1/v2 only) maps a prev/auth event id to the unpadded
	// base64 sha256 written next to it ([id, {"sha256": …}]); ids without an
	// entry get {}. Nobody verifies these (Synapse writes the referenced
	// event's content hash), so rooms we create leave it empty.
	RefHashes map[string]string
}

// Build creates, hashes and signs an event of room version rv on behalf of
// serverName, and returns it parsed.
//
// The PDU carries no "origin": the spec dropped it from all PDU formats and
// Synapse stopped sending it; v1/v2 event ids still carry the server name.
// Content is canonicalised strictly in every room version: this server never
// creates events that room version 6+ rules would reject.
func Build(p ProtoEvent, rv *RoomVersion, key SigningKey, serverName string) (*Event, error) {
	if rv == nil {
		return nil, errors.New("build event: nil room version")
	}
	if err := checkSigner(serverName, key); err != nil {
		return nil, fmt.Errorf("build event: %w", err)
	}
	if err := p.validate(rv); err != nil {
		return nil, fmt.Errorf("build %s event in %s: %w", p.Type, p.RoomID, err)
	}
	o, eventID, err := p.object(rv, serverName)
	if err != nil {
		return nil, fmt.Errorf("build %s event in %s: %w", p.Type, p.RoomID, err)
	}
	if o, err = withContentHash(o); err != nil {
		return nil, fmt.Errorf("build %s event in %s: %w", p.Type, p.RoomID, err)
	}
	o, signed, err := signEventObject(o, rv, serverName, key)
	if err != nil {
		return nil, fmt.Errorf("build %s event in %s: %w", p.Type, p.RoomID, err)
	}
	if rv.Format != FormatV1 {
		// The signed bytes are the redacted event without signatures and
		// unsigned with final hashes: the reference hash input.
		sum := sha256.Sum256(signed)
		eventID = eventIDFromHash(sum[:], rv)
	}
	if len(p.Unsigned) > 0 {
		u, err := canonicaljson.Canonicalize(p.Unsigned, false)
		if err != nil {
			return nil, fmt.Errorf("build %s event in %s: unsigned: %w", p.Type, p.RoomID, err)
		}
		if string(u) != "null" {
			if !isObject(u) {
				return nil, fmt.Errorf("build %s event in %s: unsigned is not an object", p.Type, p.RoomID)
			}
			o = o.with("unsigned", u)
		}
	}
	raw := o.encode()
	if len(raw) > MaxPDUSize {
		return nil, fmt.Errorf("build %s event in %s: %w: %d bytes, limit %d", p.Type, p.RoomID, ErrEventTooLarge, len(raw), MaxPDUSize)
	}
	return fromCanonical(raw, rv, eventID)
}

func (p *ProtoEvent) validate(rv *RoomVersion) error {
	impliedRoomID := rv.RoomIDFromCreate && p.Type == "m.room.create"
	if impliedRoomID && p.RoomID != "" {
		return errors.New("room_id is set on a create event of a room version whose room id is the create event's hash")
	}
	for _, f := range []struct{ name, val string }{{"room_id", p.RoomID}, {"sender", p.Sender}, {"type", p.Type}} {
		if f.val == "" && !(f.name == "room_id" && impliedRoomID) {
			return fmt.Errorf("%s is empty", f.name)
		}
		if !utf8.ValidString(f.val) {
			return fmt.Errorf("%s is not valid UTF-8", f.name)
		}
	}
	if p.StateKey != nil && !utf8.ValidString(*p.StateKey) {
		return errors.New("state_key is not valid UTF-8")
	}
	// The spec's size limits on an event's identifiers; like the limit on
	// the whole event they are ErrEventTooLarge (M_TOO_LARGE to a client).
	limited := []struct{ name, val string }{{"room_id", p.RoomID}, {"sender", p.Sender}, {"type", p.Type}}
	if p.StateKey != nil {
		limited = append(limited, struct{ name, val string }{"state_key", *p.StateKey})
	}
	for _, f := range limited {
		if len(f.val) > MaxIDLength {
			return fmt.Errorf("%w: %s is %d bytes, limit %d", ErrEventTooLarge, f.name, len(f.val), MaxIDLength)
		}
	}
	if p.Redacts != "" {
		if p.Type != "m.room.redaction" {
			return fmt.Errorf("redacts set on a %s event", p.Type)
		}
		if !utf8.ValidString(p.Redacts) {
			return errors.New("redacts is not valid UTF-8")
		}
	}
	for _, id := range slices.Concat(p.PrevEvents, p.AuthEvents) {
		if !strings.HasPrefix(id, "$") || !utf8.ValidString(id) {
			return fmt.Errorf("referenced event id %q is invalid", id)
		}
	}
	if rv.StrictCanonicalJSON {
		for _, f := range []struct {
			name string
			val  int64
		}{{"depth", p.Depth}, {"origin_server_ts", p.OriginServerTS}} {
			if f.val < canonicaljson.MinSafeInt || f.val > canonicaljson.MaxSafeInt {
				return fmt.Errorf("%s %d is outside the canonical JSON integer range", f.name, f.val)
			}
		}
	}
	return nil
}

// object lays out the unsigned, unhashed PDU in canonical order.
func (p *ProtoEvent) object(rv *RoomVersion, serverName string) (object, string, error) {
	content := []byte("{}")
	if len(p.Content) > 0 {
		var err error
		if content, err = canonicaljson.Canonicalize(p.Content, true); err != nil {
			return nil, "", fmt.Errorf("content: %w", err)
		}
		if !isObject(content) {
			return nil, "", errors.New("content is not an object")
		}
	}
	if p.Redacts != "" && rv.RedactsInContent {
		c, err := parseObject(content)
		if err != nil {
			return nil, "", fmt.Errorf("content: %w", err)
		}
		if v, ok := c.get("redacts"); ok {
			if s, ok := unquote(v); !ok || s != p.Redacts {
				return nil, "", fmt.Errorf("content.redacts %s conflicts with redacts %q", v, p.Redacts)
			}
		} else {
			content = c.with("redacts", quote(p.Redacts)).encode()
		}
	}
	o := object{
		{"auth_events", p.refs(p.AuthEvents, rv)},
		{"content", content},
		{"depth", strconv.AppendInt(nil, p.Depth, 10)},
		{"origin_server_ts", strconv.AppendInt(nil, p.OriginServerTS, 10)},
		{"prev_events", p.refs(p.PrevEvents, rv)},
		{"sender", quote(p.Sender)},
		{"type", quote(p.Type)},
	}
	if p.RoomID != "" {
		// Empty only for a v12+ create event (validate), which has none.
		o = append(o, member{"room_id", quote(p.RoomID)})
	}
	if p.StateKey != nil {
		o = append(o, member{"state_key", quote(*p.StateKey)})
	}
	if p.Redacts != "" {
		o = append(o, member{"redacts", quote(p.Redacts)})
	}
	var eventID string
	if rv.Format == FormatV1 {
		local, err := randomLetters(18)
		if err != nil {
			return nil, "", fmt.Errorf("event id: %w", err)
		}
		eventID = "$" + local + ":" + serverName
		o = append(o, member{"event_id", quote(eventID)})
	}
	slices.SortFunc(o, func(a, b member) int { return strings.Compare(a.key, b.key) })
	return o, eventID, nil
}

func (p *ProtoEvent) refs(ids []string, rv *RoomVersion) []byte {
	out := []byte{'['}
	for i, id := range ids {
		if i > 0 {
			out = append(out, ',')
		}
		if rv.Format != FormatV1 {
			out = append(out, quote(id)...)
			continue
		}
		out = append(out, '[')
		out = append(out, quote(id)...)
		if h, ok := p.RefHashes[id]; ok {
			out = append(out, `,{"sha256":`...)
			out = append(out, quote(h)...)
			out = append(out, '}', ']')
		} else {
			out = append(out, ',', '{', '}', ']')
		}
	}
	return append(out, ']')
}

// EventIDOf is the event id Build would give p in room version rv, computed
// without signing: the reference hash covers neither signatures nor
// unsigned. Only for versions whose ids are hashes (v3+). Room version 12
// needs it to know a room's id (its create event's hash) before the create
// event is built by the room's persister.
func EventIDOf(p ProtoEvent, rv *RoomVersion) (string, error) {
	if rv == nil || rv.Format == FormatV1 {
		return "", errors.New("event id of a proto event: the room version's ids are not hashes")
	}
	if err := p.validate(rv); err != nil {
		return "", fmt.Errorf("event id of a %s event: %w", p.Type, err)
	}
	o, _, err := p.object(rv, "")
	if err != nil {
		return "", fmt.Errorf("event id of a %s event: %w", p.Type, err)
	}
	if o, err = withContentHash(o); err != nil {
		return "", fmt.Errorf("event id of a %s event: %w", p.Type, err)
	}
	h, err := referenceHash(o, rv)
	if err != nil {
		return "", fmt.Errorf("event id of a %s event: %w", p.Type, err)
	}
	return eventIDFromHash(h, rv), nil
}
