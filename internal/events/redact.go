package events

import (
	"errors"
	"fmt"

	"ganglion/internal/canonicaljson"
)

// Redact applies the room version's redaction algorithm to the event raw and
// returns the canonical JSON of what is left.
//
// Following the spec (not Synapse, which keeps unsigned.age_ts and
// unsigned.replaces_state for its own bookkeeping), "unsigned" is removed
// entirely; servers that show redacted events to clients add what they need
// back with Event.SetUnsigned.
//
// Where the spec is silent on a detail that changes reference hashes, this
// follows Synapse: for v11 m.room.member events whose content has a
// third_party_invite object without "signed", an empty third_party_invite
// object is kept.
func Redact(raw []byte, rv *RoomVersion) ([]byte, error) {
	if rv == nil {
		return nil, errors.New("redact event: nil room version")
	}
	canon, err := canonicaljson.Canonicalize(raw, rv.StrictCanonicalJSON)
	if err != nil {
		return nil, fmt.Errorf("redact event: %w: %w", ErrMalformedEvent, err)
	}
	o, err := parseObject(canon)
	if err != nil {
		return nil, fmt.Errorf("redact event: %w: %w", ErrMalformedEvent, err)
	}
	r, err := redactObject(o, rv)
	if err != nil {
		return nil, fmt.Errorf("redact event: %w", err)
	}
	return r.encode(), nil
}

// Redact returns the event as the redaction algorithm leaves it, with the
// same event id. Adding unsigned.redacted_because is up to the caller.
func (e *Event) Redact() (*Event, error) {
	o, err := parseObject(e.raw)
	if err != nil {
		return nil, fmt.Errorf("redact event %s: %w", e.id, err)
	}
	r, err := redactObject(o, e.version)
	if err != nil {
		return nil, fmt.Errorf("redact event %s: %w", e.id, err)
	}
	return fromCanonical(r.encode(), e.version, e.id)
}

// keptTopLevel reports whether the redaction algorithm keeps a top-level key.
func keptTopLevel(key string, rv *RoomVersion) bool {
	switch key {
	case "event_id", "type", "room_id", "sender", "state_key", "content", "hashes",
		"signatures", "depth", "prev_events", "auth_events", "origin_server_ts":
		return true
	case "prev_state", "origin", "membership":
		return !rv.UpdatedRedactionRules
	}
	return false
}

func redactObject(o object, rv *RoomVersion) (object, error) {
	typeRaw, ok := o.get("type")
	if !ok {
		return nil, fmt.Errorf("%w: no type", ErrMalformedEvent)
	}
	typ, ok := unquote(typeRaw)
	if !ok {
		return nil, fmt.Errorf("%w: type is not a string", ErrMalformedEvent)
	}
	contentRaw, ok := o.get("content")
	if !ok || !isObject(contentRaw) {
		return nil, fmt.Errorf("%w: content is not an object", ErrMalformedEvent)
	}
	content, err := parseObject(contentRaw)
	if err != nil {
		return nil, fmt.Errorf("%w: content: %w", ErrMalformedEvent, err)
	}
	newContent, err := redactContent(typ, content, rv)
	if err != nil {
		return nil, err
	}
	out := make(object, 0, len(o))
	for _, m := range o {
		if !keptTopLevel(m.key, rv) {
			continue
		}
		if m.key == "content" {
			m.val = newContent.encode()
		}
		out = append(out, m)
	}
	return out, nil
}

func redactContent(typ string, c object, rv *RoomVersion) (object, error) {
	switch typ {
	case "m.room.member":
		out := c.only("membership")
		if rv.RestrictedJoinRuleFix {
			out = c.only("membership", "join_authorised_via_users_server")
		}
		if rv.UpdatedRedactionRules {
			if tpi, ok := c.get("third_party_invite"); ok && isObject(tpi) {
				inner, err := parseObject(tpi)
				if err != nil {
					return nil, fmt.Errorf("%w: third_party_invite: %w", ErrMalformedEvent, err)
				}
				out = out.with("third_party_invite", inner.only("signed").encode())
			}
		}
		return out, nil
	case "m.room.create":
		switch {
		case rv.UpdatedRedactionRules:
			return c, nil
		case rv.ImplicitRoomCreator:
			return object{}, nil
		default:
			return c.only("creator"), nil
		}
	case "m.room.join_rules":
		if rv.RestrictedJoinRule {
			return c.only("join_rule", "allow"), nil
		}
		return c.only("join_rule"), nil
	case "m.room.power_levels":
		keys := []string{"ban", "events", "events_default", "kick", "redact", "state_default", "users", "users_default"}
		if rv.UpdatedRedactionRules {
			keys = append(keys, "invite")
		}
		return c.only(keys...), nil
	case "m.room.aliases":
		if rv.SpecialCaseAliases {
			return c.only("aliases"), nil
		}
	case "m.room.history_visibility":
		return c.only("history_visibility"), nil
	case "m.room.redaction":
		if rv.UpdatedRedactionRules {
			return c.only("redacts"), nil
		}
	}
	return object{}, nil
}
