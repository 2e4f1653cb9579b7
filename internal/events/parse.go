package events

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"ganglion/internal/canonicaljson"
)

// MaxPDUSize is the spec's limit on an event in canonical JSON, signatures
// and unsigned included.
const MaxPDUSize = 65536

// MaxIDLength is the spec's limit, in bytes, on an event's room_id, sender,
// type and state_key.
const MaxIDLength = 255

// Parse validates a PDU of room version rv and computes its event id.
//
// The event is canonicalised with the version's strictness and kept in that
// form: it is the exact byte sequence hashes and signatures are computed
// over, so storing or forwarding it never depends on re-encoding parsed
// fields. Parse checks structure only; hashes, signatures and the auth rules
// (including the 255-byte identifier limits and prev/auth event counts) are
// checked separately.
func Parse(raw []byte, rv *RoomVersion) (*Event, error) {
	if rv == nil {
		return nil, errors.New("parse event: nil room version")
	}
	canon, err := canonicaljson.Canonicalize(raw, rv.StrictCanonicalJSON)
	if err != nil {
		return nil, fmt.Errorf("parse event: %w: %w", ErrMalformedEvent, err)
	}
	if len(canon) > MaxPDUSize {
		return nil, fmt.Errorf("parse event: %w: %d bytes of canonical JSON, limit %d", ErrEventTooLarge, len(canon), MaxPDUSize)
	}
	return fromCanonical(canon, rv, "")
}

// fromCanonical builds an Event from canonical JSON it takes ownership of.
// id is computed unless given (Build and Redact already know it).
func fromCanonical(canon []byte, rv *RoomVersion, id string) (*Event, error) {
	o, err := parseObject(canon)
	if err != nil {
		return nil, fmt.Errorf("parse event: %w: %w", ErrMalformedEvent, err)
	}
	p := fieldParser{o: o, rv: rv}
	typ := p.str("type", true)
	// MSC4291 (v12+): the create event has no room_id; its id implies it.
	impliedRoomID := rv.RoomIDFromCreate && typ == "m.room.create"
	f := eventFields{
		RoomID:         p.str("room_id", !impliedRoomID),
		Sender:         p.str("sender", true),
		Type:           typ,
		Content:        p.obj("content", true),
		Depth:          p.integer("depth"),
		OriginServerTS: p.integer("origin_server_ts"),
		PrevEvents:     p.refs("prev_events"),
		AuthEvents:     p.refs("auth_events"),
		Redacts:        p.str("redacts", false),
		Origin:         p.str("origin", false),
		Unsigned:       p.obj("unsigned", false),
	}
	if _, ok := o.get("state_key"); ok {
		sk := p.str("state_key", true)
		f.StateKey = &sk
	}
	p.obj("hashes", false)
	p.obj("signatures", false)
	if rv.Format == FormatV1 {
		f.EventID = p.str("event_id", true)
		if p.err == nil && !strings.HasPrefix(f.EventID, "$") {
			p.fail("event_id %q does not start with '$'", f.EventID)
		}
	}
	if p.err != nil {
		return nil, fmt.Errorf("parse event: %w: %w", ErrMalformedEvent, p.err)
	}
	if id == "" {
		if rv.Format == FormatV1 {
			id = f.EventID
		} else {
			h, err := referenceHash(o, rv)
			if err != nil {
				return nil, fmt.Errorf("parse event: %w", err)
			}
			id = eventIDFromHash(h, rv)
		}
	}
	if impliedRoomID {
		// A create event that carries a room_id anyway keeps it, for the
		// auth rules to reject (HasImpliedRoomID reports false).
		if _, present := o.get("room_id"); !present {
			f.RoomID = "!" + id[1:]
			f.roomIDImplied = true
		}
	}
	return &Event{raw: canon, id: id, version: rv, fields: f}, nil
}

// fieldParser extracts top-level keys by exact name, remembering the first
// problem so that fromCanonical reads as a list of fields.
type fieldParser struct {
	o   object
	rv  *RoomVersion
	err error
}

func (p *fieldParser) fail(format string, args ...any) {
	if p.err == nil {
		p.err = fmt.Errorf(format, args...)
	}
}

func (p *fieldParser) lookup(key string, required bool) ([]byte, bool) {
	v, ok := p.o.get(key)
	if !ok && required {
		p.fail("missing %s", key)
	}
	return v, ok
}

func (p *fieldParser) str(key string, required bool) string {
	v, ok := p.lookup(key, required)
	if !ok {
		return ""
	}
	s, ok := unquote(v)
	if !ok {
		p.fail("%s is not a string", key)
	}
	return s
}

func (p *fieldParser) obj(key string, required bool) json.RawMessage {
	v, ok := p.lookup(key, required)
	if !ok {
		return nil
	}
	if !isObject(v) {
		p.fail("%s is not an object", key)
		return nil
	}
	return v
}

func (p *fieldParser) integer(key string) int64 {
	v, ok := p.lookup(key, true)
	if !ok {
		return 0
	}
	n, ok := parseInt(v)
	if !ok {
		p.fail("%s is not an integer in int64 range", key)
	}
	return n
}

// refs decodes prev_events/auth_events: [[id, {hashes}], …] in v1/v2,
// [id, …] from v3 on.
func (p *fieldParser) refs(key string) []string {
	v, ok := p.lookup(key, true)
	if !ok {
		return nil
	}
	elems, err := parseArray(v)
	if err != nil {
		p.fail("%s is not an array", key)
		return nil
	}
	ids := make([]string, 0, len(elems))
	for i, el := range elems {
		if p.rv.Format == FormatV1 {
			pair, err := parseArray(el)
			if err != nil || len(pair) != 2 || !isObject(pair[1]) {
				p.fail("%s[%d] is not an [event_id, hashes] pair", key, i)
				return nil
			}
			el = pair[0]
		}
		id, ok := unquote(el)
		if !ok {
			p.fail("%s[%d]: event id is not a string", key, i)
			return nil
		}
		ids = append(ids, id)
	}
	return ids
}

// WithUnsigned returns a copy of the event whose "unsigned" key is replaced
// by u (a JSON object; empty or null removes it). The event id, hashes and
// signatures are unaffected: unsigned is outside all of them.
func (e *Event) WithUnsigned(u json.RawMessage) (*Event, error) {
	o, err := parseObject(e.raw)
	if err != nil {
		return nil, fmt.Errorf("set unsigned on %s: %w", e.id, err)
	}
	var cu []byte
	if len(u) > 0 {
		if cu, err = canonicaljson.Canonicalize(u, false); err != nil {
			return nil, fmt.Errorf("set unsigned on %s: %w", e.id, err)
		}
		if string(cu) == "null" {
			cu = nil
		} else if !isObject(cu) {
			return nil, fmt.Errorf("set unsigned on %s: not a JSON object", e.id)
		}
	}
	if cu == nil {
		o = o.without("unsigned")
	} else {
		o = o.with("unsigned", cu)
	}
	ne := *e
	ne.raw = o.encode()
	ne.fields.Unsigned = cu
	return &ne, nil
}

// SetUnsigned is WithUnsigned for server-built values (age, transaction_id,
// redacted_because) that cannot be invalid; if u is nevertheless not a JSON
// object the copy carries no unsigned at all rather than a broken one.
func (e *Event) SetUnsigned(u json.RawMessage) *Event {
	if ne, err := e.WithUnsigned(u); err == nil {
		return ne
	}
	ne, err := e.WithUnsigned(nil)
	if err != nil {
		return e // unreachable: e.raw is a canonical object
	}
	return ne
}
