package eventauth

import (
	"encoding/json"
	"fmt"

	"ganglion/internal/events"
)

// AuthEventsNeeded lists the state an event's auth_events are chosen from
// (the server-server spec's "auth events selection"): m.room.create,
// m.room.power_levels and the sender's membership, plus for membership
// events the target's membership, m.room.join_rules (join, invite, knock),
// the m.room.third_party_invite named by an invite's token, and, for joins
// in room versions with restricted join rules, the membership of
// join_authorised_via_users_server. Entries may be absent from the room;
// the builder includes the ones that exist. Create events have none.
//
// The authoriser's membership is listed only for joins, as Synapse does; the
// spec does not name the membership but the key means nothing elsewhere.
func AuthEventsNeeded(eventType string, stateKey *string, sender string, content json.RawMessage, rv *events.RoomVersion) []StateKey {
	if eventType == typeCreate {
		return nil
	}
	keys := make([]StateKey, 0, 6)
	if rv == nil || !rv.RoomIDFromCreate {
		// From v12 the create event is implied by the room id (MSC4291).
		keys = append(keys, StateKey{Type: typeCreate})
	}
	keys = append(keys,
		StateKey{Type: typePowerLevels},
		StateKey{Type: typeMember, StateKey: sender},
	)
	add := func(k StateKey) {
		for _, have := range keys {
			if have == k {
				return
			}
		}
		keys = append(keys, k)
	}
	if eventType != typeMember {
		return keys
	}
	obj, _ := objectOf(content)
	membership, _ := stringField(obj, "membership")
	switch membership {
	case membershipJoin, membershipInvite, membershipKnock:
		add(StateKey{Type: typeJoinRules})
	}
	if stateKey != nil {
		add(StateKey{Type: typeMember, StateKey: *stateKey})
	}
	if membership == membershipInvite {
		if tpi, ok := objectOf(obj["third_party_invite"]); ok {
			if signed, ok := objectOf(tpi["signed"]); ok {
				if token, ok := stringField(signed, "token"); ok {
					add(StateKey{Type: typeThirdPartyInvite, StateKey: token})
				}
			}
		}
	}
	if membership == membershipJoin && rv != nil && rv.RestrictedJoinRule {
		if user, ok := stringField(obj, "join_authorised_via_users_server"); ok {
			add(StateKey{Type: typeMember, StateKey: user})
		}
	}
	return keys
}

// CheckAuthEventsSelection is rule 2 of the auth rules, applied to the
// events ev names in auth_events (authEvents must be those events, fetched):
// each must be a state event of ev's room, of a (type, state_key) that
// AuthEventsNeeded allows, with no (type, state_key) twice, and
// m.room.create must be among them. Whether any was itself rejected (rule
// 2.3) is the caller's knowledge and check. Create events are not checked,
// as in Synapse: rule 1 decides them alone.
func CheckAuthEventsSelection(ev *events.Event, authEvents []*events.Event) error {
	if ev == nil {
		return reject("no event")
	}
	if ev.Type() == typeCreate {
		return nil
	}
	listed := make(map[string]bool, len(ev.AuthEventIDs()))
	for _, id := range ev.AuthEventIDs() {
		if listed[id] {
			return reject("auth_events lists " + id + " twice")
		}
		listed[id] = true
	}
	if len(authEvents) != len(listed) {
		return reject(fmt.Sprintf("auth_events names %d events but %d were supplied", len(listed), len(authEvents)))
	}

	allowed := map[StateKey]bool{}
	for _, k := range AuthEventsNeeded(ev.Type(), ev.StateKey(), ev.Sender(), ev.Content(), ev.Version()) {
		allowed[k] = true
	}
	seen := make(map[StateKey]bool, len(authEvents))
	seenIDs := make(map[string]bool, len(authEvents))
	for _, ae := range authEvents {
		if ae == nil {
			return reject("missing auth event")
		}
		if !listed[ae.EventID()] || seenIDs[ae.EventID()] {
			return reject("auth event " + ae.EventID() + " is not (once) in auth_events")
		}
		seenIDs[ae.EventID()] = true
		if ae.RoomID() != ev.RoomID() {
			return reject("auth event " + ae.EventID() + " belongs to another room")
		}
		if !ae.IsState() {
			return reject("auth event " + ae.EventID() + " is not a state event")
		}
		k := StateKey{Type: ae.Type(), StateKey: *ae.StateKey()}
		if seen[k] {
			return reject(fmt.Sprintf("auth_events has two %s/%q events", k.Type, k.StateKey))
		}
		seen[k] = true
		if !allowed[k] {
			return reject(fmt.Sprintf("auth_events may not include %s/%q", k.Type, k.StateKey))
		}
	}
	if rv := ev.Version(); rv != nil && rv.RoomIDFromCreate {
		// AuthEventsNeeded does not allow it, so it was refused above.
		return nil
	}
	if !seen[StateKey{Type: typeCreate}] {
		return reject("no m.room.create event among the auth events")
	}
	return nil
}
