package eventauth

import (
	"encoding/json"

	"ganglion/internal/events"
)

// checkMember is the m.room.member rule.
func checkMember(ev *events.Event, auth AuthEvents, create *events.Event, rv *events.RoomVersion, pl PowerLevels) error {
	sk := ev.StateKey()
	if sk == nil {
		return reject("m.room.member must have a state_key")
	}
	target := *sk
	content, ok := objectOf(ev.Content())
	if !ok {
		return reject("m.room.member content is not an object")
	}
	membership, ok := stringField(content, "membership")
	if !ok {
		return reject("m.room.member content has no membership string")
	}

	// Not in the spec; Synapse also refuses memberships of users from other
	// servers in unfederated rooms. Only the creator's server can be in such
	// a room, so this changes what that server accepts, never what two
	// servers agree on.
	if !canFederate(create) && !sameDomain(target, create.Sender()) {
		return reject("room is not federated and the target user is on another server")
	}

	sender := ev.Sender()
	senderMembership := membershipOf(auth, sender)
	targetMembership := membershipOf(auth, target)
	senderLevel := pl.UserLevel(sender)
	targetLevel := pl.UserLevel(target)

	switch membership {
	case membershipJoin:
		// The creator's own join straight after the create event. The v11
		// text says "the state_key is the sender", meaning the create event's
		// sender (matrix-spec#2023). Like Synapse, the event's own sender is
		// not compared here.
		if prev := ev.PrevEventIDs(); len(prev) == 1 && prev[0] == create.EventID() {
			if c := creatorOf(create, rv); c != "" && c == target {
				return nil
			}
		}
		if sender != target {
			return reject("sender may not join on behalf of another user")
		}
		if senderMembership == membershipBan {
			return reject("sender is banned from the room")
		}
		joinRule := joinRuleOf(auth)
		alreadyIn := senderMembership == membershipJoin || senderMembership == membershipInvite
		switch {
		case joinRule == joinRulePublic:
			return nil
		case (rv.RestrictedJoinRule && joinRule == joinRuleRestricted) ||
			(rv.KnockRestrictedJoinRule && joinRule == joinRuleKnockRestricted):
			if alreadyIn {
				return nil
			}
			return checkJoinAuthoriser(content, auth, pl)
		case joinRule == joinRuleInvite || (rv.KnockJoinRule && joinRule == joinRuleKnock):
			if alreadyIn {
				return nil
			}
			return reject("room is invite-only and sender is not invited")
		default:
			return reject("join rule does not allow joining")
		}

	case membershipInvite:
		if raw, present := content["third_party_invite"]; present {
			if targetMembership == membershipBan {
				return reject("target user is banned")
			}
			return checkThirdPartyInvite(ev, target, raw, auth)
		}
		if senderMembership != membershipJoin {
			return reject("sender is not joined to the room")
		}
		if targetMembership == membershipJoin || targetMembership == membershipBan {
			return reject("target user is already " + targetMembership)
		}
		if senderLevel < pl.Invite {
			return reject("sender's power level is below the invite level")
		}
		return nil

	case membershipLeave:
		if sender == target {
			switch senderMembership {
			case membershipInvite, membershipJoin:
				return nil
			case membershipKnock:
				if rv.KnockJoinRule {
					return nil
				}
			}
			return reject("sender may only leave from invite, join or knock")
		}
		if senderMembership != membershipJoin {
			return reject("sender is not joined to the room")
		}
		if targetMembership == membershipBan && senderLevel < pl.Ban {
			return reject("sender's power level is below the ban level needed to unban")
		}
		if senderLevel >= pl.Kick && targetLevel < senderLevel {
			return nil
		}
		return reject("sender may not kick the target user (kick level, or target level not below sender's)")

	case membershipBan:
		if senderMembership != membershipJoin {
			return reject("sender is not joined to the room")
		}
		if senderLevel >= pl.Ban && targetLevel < senderLevel {
			return nil
		}
		return reject("sender may not ban the target user (ban level, or target level not below sender's)")

	case membershipKnock:
		if !rv.KnockJoinRule {
			break
		}
		joinRule := joinRuleOf(auth)
		if joinRule != joinRuleKnock && !(rv.KnockRestrictedJoinRule && joinRule == joinRuleKnockRestricted) {
			return reject("join rule does not allow knocking")
		}
		if sender != target {
			return reject("sender may not knock on behalf of another user")
		}
		switch senderMembership {
		case membershipBan, membershipInvite, membershipJoin:
			return reject("sender may not knock while " + senderMembership)
		}
		return nil
	}
	return reject("unknown membership " + membership)
}

// checkJoinAuthoriser is the restricted-join rule: the join names a user who
// vouches for it, and that user must be joined and able to invite. Synapse
// requires the authoriser to be joined; the spec's "a user with sufficient
// permission to invite" implies it, since only members can invite.
func checkJoinAuthoriser(content map[string]json.RawMessage, auth AuthEvents, pl PowerLevels) error {
	authoriser, ok := stringField(content, "join_authorised_via_users_server")
	if !ok || authoriser == "" {
		return reject("restricted join has no join_authorised_via_users_server")
	}
	if membershipOf(auth, authoriser) != membershipJoin {
		return reject("join_authorised_via_users_server user is not joined to the room")
	}
	if pl.UserLevel(authoriser) < pl.Invite {
		return reject("join_authorised_via_users_server user may not invite")
	}
	return nil
}

// joinRuleOf is the room's join rule. Without an m.room.join_rules event, or
// without join_rule in it, rooms are invite-only (Synapse's default). A
// non-string join_rule matches no rule, so nobody new can join.
func joinRuleOf(auth AuthEvents) string {
	ev := auth.Get(typeJoinRules, "")
	if ev == nil {
		return joinRuleInvite
	}
	content, ok := objectOf(ev.Content())
	if !ok {
		return joinRuleInvite
	}
	if _, present := content["join_rule"]; !present {
		return joinRuleInvite
	}
	rule, _ := stringField(content, "join_rule")
	return rule
}
