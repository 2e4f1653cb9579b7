package push

import (
	"encoding/json"
	"strings"
)

const ruleMaster = ".m.rule.master"

// defaultRules are the spec's server-default rules (client-server API,
// "Predefined rules", v1.7 and later) for userID, in the spec's order.
// .m.rule.contains_display_name, .m.rule.roomnotif and
// .m.rule.contains_user_name are deprecated but still part of the list:
// clients that do not send m.mentions rely on them.
func defaultRules(userID string) Ruleset {
	localpart := strings.TrimPrefix(userID, "@")
	if i := strings.IndexByte(localpart, ':'); i >= 0 {
		localpart = localpart[:i]
	}
	uid, _ := json.Marshal(userID)
	lp := localpart
	r := func(id string, enabled bool, actions string, conditions string) Rule {
		rule := Rule{RuleID: id, Default: true, Enabled: enabled, Actions: rawList(actions)}
		if conditions != "" {
			rule.Conditions = json.RawMessage(conditions)
		}
		return rule
	}
	const (
		none          = `[]`
		notify        = `["notify"]`
		notifySound   = `["notify",{"set_tweak":"sound","value":"default"}]`
		notifyHigh    = `["notify",{"set_tweak":"highlight"}]`
		notifyAllHigh = `["notify",{"set_tweak":"sound","value":"default"},{"set_tweak":"highlight"}]`
		notifyRing    = `["notify",{"set_tweak":"sound","value":"ring"}]`
	)
	match := func(key, pattern string) string {
		k, _ := json.Marshal(key)
		p, _ := json.Marshal(pattern)
		return `{"kind":"event_match","key":` + string(k) + `,"pattern":` + string(p) + `}`
	}
	two := `{"kind":"room_member_count","is":"2"}`
	contains := r(".m.rule.contains_user_name", true, notifyAllHigh, "")
	contains.Pattern = &lp
	return Ruleset{
		Override: {
			r(ruleMaster, false, none, `[]`),
			r(".m.rule.suppress_notices", true, none, `[`+match("content.msgtype", "m.notice")+`]`),
			r(".m.rule.invite_for_me", true, notifySound, `[`+match("type", "m.room.member")+`,`+
				match("content.membership", "invite")+`,`+match("state_key", userID)+`]`),
			r(".m.rule.member_event", true, none, `[`+match("type", "m.room.member")+`]`),
			r(".m.rule.is_user_mention", true, notifyAllHigh,
				`[{"kind":"event_property_contains","key":"content.m\\.mentions.user_ids","value":`+string(uid)+`}]`),
			r(".m.rule.contains_display_name", true, notifyAllHigh, `[{"kind":"contains_display_name"}]`),
			r(".m.rule.is_room_mention", true, notifyHigh,
				`[{"kind":"event_property_is","key":"content.m\\.mentions.room","value":true},{"kind":"sender_notification_permission","key":"room"}]`),
			r(".m.rule.roomnotif", true, notifyHigh,
				`[{"kind":"sender_notification_permission","key":"room"},`+match("content.body", "@room")+`]`),
			r(".m.rule.tombstone", true, notifyHigh, `[`+match("type", "m.room.tombstone")+`,`+match("state_key", "")+`]`),
			r(".m.rule.reaction", true, none, `[`+match("type", "m.reaction")+`]`),
			r(".m.rule.room.server_acl", true, none, `[`+match("type", "m.room.server_acl")+`,`+match("state_key", "")+`]`),
			r(".m.rule.suppress_edits", true, none,
				`[{"kind":"event_property_is","key":"content.m\\.relates_to.rel_type","value":"m.replace"}]`),
		},
		Content: {contains},
		Underride: {
			r(".m.rule.call", true, notifyRing, `[`+match("type", "m.call.invite")+`]`),
			r(".m.rule.encrypted_room_one_to_one", true, notifySound, `[`+two+`,`+match("type", "m.room.encrypted")+`]`),
			r(".m.rule.room_one_to_one", true, notifySound, `[`+two+`,`+match("type", "m.room.message")+`]`),
			r(".m.rule.message", true, notify, `[`+match("type", "m.room.message")+`]`),
			r(".m.rule.encrypted", true, notify, `[`+match("type", "m.room.encrypted")+`]`),
		},
	}
}

// isDefaultRule reports whether ruleID is a server-default rule of kind k.
func isDefaultRule(k Kind, ruleID string) bool {
	for _, r := range defaultRules("@x:x")[k] {
		if r.RuleID == ruleID {
			return true
		}
	}
	return false
}

func rawList(s string) []json.RawMessage {
	var out []json.RawMessage
	if err := json.Unmarshal([]byte(s), &out); err != nil {
		panic("push: bad default actions " + s) // a constant above; caught by tests
	}
	return out
}

// DefaultRuleset is userID's ruleset before any change of theirs.
func DefaultRuleset(userID string) Ruleset { return (&userRules{}).ruleset(userID) }
