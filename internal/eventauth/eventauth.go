// Package eventauth implements the Matrix authorization rules for room
// versions 1–12: given an event and the state it claims as its auth events,
// decide whether the event is allowed. It is pure: no I/O, no clocks, no
// package-level state, so every server component (room service, federation
// receiver, state resolution) gets identical answers for identical input.
//
// What the rules here deliberately do not do, because they need I/O or data
// this package does not have, and which the caller must therefore do first:
//
//   - Signature checks: the event must be signed by the sender's server and,
//     when content.join_authorised_via_users_server is present (v8+), by that
//     user's server as well (spec rule "If the event is not validly signed by
//     the homeserver of the user ID denoted by the key, reject").
//   - Rejected auth events (rule 2.3): the caller knows which events were
//     rejected; a rejected event must never be passed as an auth event.
//   - Restricted joins (v8+): whether the joining user is a member of one of
//     the rooms listed in join_rules.allow is decided by the resident server
//     that signs the join (it sets join_authorised_via_users_server). The auth
//     rules only check that the named authoriser is joined and may invite.
//   - Size limits on events (65536 bytes, 255-byte ids) belong to parsing.
//   - Room version 12 (MSC4291): events do not list the create event among
//     their auth_events; the room id names it. The caller must still supply
//     it in AuthEvents (Check rejects events without one).
//
// Spec ambiguities are resolved in favour of Synapse's behaviour, since a
// disagreement with the dominant implementation splits room state; each such
// choice is noted where it is made.
package eventauth

import (
	"bytes"
	"encoding/json"
	"strings"

	"ganglion/internal/events"
)

// Event types and memberships the auth rules interpret.
const (
	typeCreate           = "m.room.create"
	typeMember           = "m.room.member"
	typeJoinRules        = "m.room.join_rules"
	typePowerLevels      = "m.room.power_levels"
	typeThirdPartyInvite = "m.room.third_party_invite"
	typeAliases          = "m.room.aliases"
	typeRedaction        = "m.room.redaction"

	membershipJoin   = "join"
	membershipInvite = "invite"
	membershipLeave  = "leave"
	membershipBan    = "ban"
	membershipKnock  = "knock"

	joinRulePublic          = "public"
	joinRuleInvite          = "invite"
	joinRuleKnock           = "knock"
	joinRuleRestricted      = "restricted"
	joinRuleKnockRestricted = "knock_restricted"
)

// StateKey identifies one piece of room state.
type StateKey struct {
	Type     string
	StateKey string
}

// AuthEvents is the state an event is authorised against: either the
// event's own auth_events, or the room state before it. Get returns nil when
// there is no such state.
type AuthEvents interface {
	Get(eventType, stateKey string) *events.Event
}

// StateMap is the simplest AuthEvents: a map of state.
type StateMap map[StateKey]*events.Event

var _ AuthEvents = StateMap(nil)

// Get implements AuthEvents.
func (m StateMap) Get(eventType, stateKey string) *events.Event {
	return m[StateKey{Type: eventType, StateKey: stateKey}]
}

// NewStateMap indexes state events by (type, state_key); non-state events
// and nils are skipped. Later events win, as they would in a state snapshot
// built by applying events in order.
func NewStateMap(evs ...*events.Event) StateMap {
	m := make(StateMap, len(evs))
	for _, ev := range evs {
		if ev == nil || !ev.IsState() {
			continue
		}
		m[StateKey{Type: ev.Type(), StateKey: *ev.StateKey()}] = ev
	}
	return m
}

// NotAllowedError is returned when the auth rules reject an event. HTTP maps
// it to M_FORBIDDEN; federation marks the event rejected.
type NotAllowedError struct {
	Reason string
}

func (e *NotAllowedError) Error() string { return "event not allowed: " + e.Reason }

func reject(reason string) *NotAllowedError { return &NotAllowedError{Reason: reason} }

// Check applies the authorization rules of ev's room version to ev, with
// auth providing the state the rules consult (m.room.create,
// m.room.power_levels, m.room.join_rules, m.room.member and
// m.room.third_party_invite entries). It returns nil when the event is
// allowed and a *NotAllowedError otherwise. Whether auth holds exactly the
// right events is CheckAuthEventsSelection's concern, not Check's.
func Check(ev *events.Event, auth AuthEvents) error {
	if ev == nil {
		return reject("no event")
	}
	rv := ev.Version()
	if rv == nil {
		return reject("event has no room version")
	}
	if auth == nil {
		auth = StateMap(nil)
	}

	// Rule 1: the create event is authorised by itself alone.
	if ev.Type() == typeCreate {
		return checkCreate(ev, rv)
	}

	// Rule 2.4. From v12 (MSC4291) the create event is not among the auth
	// events but implied by the room id; auth must supply it all the same
	// (the room id names it, so there is no choice to check).
	create := auth.Get(typeCreate, "")
	if create == nil {
		return reject("no m.room.create event among the auth events")
	}
	if create.RoomID() != ev.RoomID() || (rv.RoomIDFromCreate && !create.HasImpliedRoomID()) {
		return reject("m.room.create event belongs to another room")
	}

	// Rule 3: m.federate.
	if !canFederate(create) {
		if !sameDomain(ev.Sender(), create.Sender()) {
			return reject("room is not federated and sender is on another server")
		}
	}

	// v1–v5 rule 4: aliases are owned per server, not by power levels.
	if rv.SpecialCaseAliases && ev.Type() == typeAliases {
		sk := ev.StateKey()
		if sk == nil || *sk == "" {
			return reject("m.room.aliases must have a server name as state_key")
		}
		d, ok := domainOf(ev.Sender())
		if !ok || d != *sk {
			return reject("m.room.aliases state_key does not match the sender's server")
		}
		return nil
	}

	pl := levelsFromState(auth, create, rv)

	if ev.Type() == typeMember {
		return checkMember(ev, auth, create, rv, pl)
	}

	// Rule: the sender must be joined for everything but membership events.
	if membershipOf(auth, ev.Sender()) != membershipJoin {
		return reject("sender is not joined to the room")
	}
	senderLevel := pl.UserLevel(ev.Sender())

	if ev.Type() == typeThirdPartyInvite {
		if senderLevel < pl.Invite {
			return reject("sender's power level is below the invite level")
		}
		return nil
	}

	if senderLevel < pl.EventLevel(ev.Type(), ev.IsState()) {
		return reject("sender's power level is below the level required for " + ev.Type())
	}

	// Keys starting with '@' are reserved for the user they name.
	if sk := ev.StateKey(); sk != nil && strings.HasPrefix(*sk, "@") && *sk != ev.Sender() {
		return reject("state_key starting with '@' must be the sender's user id")
	}

	switch ev.Type() {
	case typePowerLevels:
		return checkPowerLevelsChange(ev, auth, rv, senderLevel)
	case typeRedaction:
		// Room versions 1 and 2 (the v1 event format, whose event ids carry a
		// domain) authorise redactions here. From v3 on, the redaction falls
		// through to "otherwise, allow"; whether it may take effect (same
		// sender, or redact level) is checked when the redacted event is
		// served, because the target may not be known yet.
		if rv.Format == events.FormatV1 {
			if senderLevel >= pl.Redact {
				return nil
			}
			d1, ok1 := domainOf(ev.EventID())
			d2, ok2 := domainOf(ev.Redacts())
			if ok1 && ok2 && d1 == d2 {
				return nil
			}
			return reject("sender may not redact events from another server")
		}
	}
	return nil
}

// checkCreate is rule 1.
func checkCreate(ev *events.Event, rv *events.RoomVersion) error {
	if len(ev.PrevEventIDs()) > 0 {
		return reject("m.room.create must not have prev_events")
	}
	if rv.RoomIDFromCreate {
		// MSC4291: the room id is the create event's hash, so it has no
		// room_id (nor a server to compare) and no auth events.
		if !ev.HasImpliedRoomID() {
			return reject("m.room.create must not have a room_id in this room version")
		}
		if len(ev.AuthEventIDs()) > 0 {
			return reject("m.room.create must not have auth_events")
		}
	} else {
		rd, ok1 := domainOf(ev.RoomID())
		sd, ok2 := domainOf(ev.Sender())
		if !ok1 || !ok2 || rd != sd {
			return reject("m.room.create room_id domain does not match the sender's domain")
		}
	}
	content, ok := objectOf(ev.Content())
	if !ok {
		return reject("m.room.create content is not an object")
	}
	if rv.PrivilegedCreators {
		if raw, present := content["additional_creators"]; present {
			var users []json.RawMessage
			if err := json.Unmarshal(raw, &users); err != nil || users == nil {
				return reject("m.room.create additional_creators is not an array")
			}
			for _, u := range users {
				var s string
				if len(bytes.TrimSpace(u)) == 0 || bytes.TrimSpace(u)[0] != '"' || json.Unmarshal(u, &s) != nil || !isUserID(s) {
					return reject("m.room.create additional_creators must list user ids")
				}
			}
		}
	}
	if _, present := content["room_version"]; present {
		v, ok := stringField(content, "room_version")
		if !ok {
			return reject("m.room.create room_version is not a string")
		}
		if _, known := events.LookupRoomVersion(v); !known {
			return reject("m.room.create has unknown room_version " + v)
		}
	}
	// Presence only, as Synapse checks it: a non-string creator makes a room
	// nobody created, which is harmless.
	if !rv.ImplicitRoomCreator {
		if _, present := content["creator"]; !present {
			return reject("m.room.create content has no creator")
		}
	}
	return nil
}

// creatorOf is the room creator: the create event's sender from v11, its
// content.creator before.
func creatorOf(create *events.Event, rv *events.RoomVersion) string {
	if create == nil {
		return ""
	}
	if rv.ImplicitRoomCreator {
		return create.Sender()
	}
	// Keys are matched exactly: struct decoding would also take "Creator".
	content, _ := objectOf(create.Content())
	s, _ := stringField(content, "creator")
	return s
}

// creatorsOf lists the room's creators: the creator, plus from v12
// (MSC4289) content.additional_creators (invalid entries cannot be there:
// the create event would have been rejected).
func creatorsOf(create *events.Event, rv *events.RoomVersion) []string {
	c := creatorOf(create, rv)
	if c == "" {
		return nil
	}
	out := []string{c}
	if !rv.PrivilegedCreators {
		return out
	}
	content, _ := objectOf(create.Content())
	var users []string
	if raw, ok := content["additional_creators"]; ok && json.Unmarshal(raw, &users) == nil {
		out = append(out, users...)
	}
	return out
}

// IsCreator reports whether userID created the room of create: its creator
// (content.creator before v11, the sender from v11) or, from v12, one of its
// additional_creators.
func IsCreator(create *events.Event, userID string) bool {
	if create == nil || create.Version() == nil {
		return false
	}
	for _, c := range creatorsOf(create, create.Version()) {
		if c == userID {
			return true
		}
	}
	return false
}

// canFederate reports whether servers other than the creator's may take
// part. The spec says "m.federate set to false"; only a JSON false counts.
// Synapse treats any value other than true as false; such values are not
// produced by any client we know of, so we follow the spec's wording.
func canFederate(create *events.Event) bool {
	content, ok := objectOf(create.Content())
	if !ok {
		return true
	}
	raw, present := content["m.federate"]
	return !present || string(bytes.TrimSpace(raw)) != "false"
}

// membershipOf is userID's current membership, "" when there is none.
func membershipOf(auth AuthEvents, userID string) string {
	m := auth.Get(typeMember, userID)
	if m == nil {
		return ""
	}
	return m.Membership()
}

// domainOf is the server part of a user, room or (v1/v2) event id: whatever
// follows the first ':'. Ids without one have no domain.
func domainOf(id string) (string, bool) {
	i := strings.IndexByte(id, ':')
	if i < 0 {
		return "", false
	}
	return id[i+1:], true
}

func sameDomain(a, b string) bool {
	da, ok1 := domainOf(a)
	db, ok2 := domainOf(b)
	return ok1 && ok2 && da == db
}

// objectOf decodes a JSON object one level deep, keeping key presence (a key
// with a null value is present, as in Synapse's "key in content").
func objectOf(raw json.RawMessage) (map[string]json.RawMessage, bool) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil || m == nil {
		return nil, false
	}
	return m, true
}

// stringField returns m[key] when it is a JSON string.
func stringField(m map[string]json.RawMessage, key string) (string, bool) {
	raw, ok := m[key]
	if !ok {
		return "", false
	}
	// Unmarshal accepts null into a string; a null is not a string here.
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || raw[0] != '"' {
		return "", false
	}
	var s string
	if json.Unmarshal(raw, &s) != nil {
		return "", false
	}
	return s, true
}
