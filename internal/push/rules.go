// Package push owns push rules (the push_rules stream and its endpoints),
// their evaluation against events where the events are persisted, and the
// push actions rows that notification counts are read from: one room-wide
// row per notifying event with the outcome most members share, and
// per-user rows where a user's outcome differs.
//
// A user's rules are stored as one document (their own rules per kind, in
// priority order, and their changes to the server-default rules): every
// write is a read-modify-write of that document by the stream's single
// writer, and a reader (the persister's evaluation, GET /pushrules/, sync)
// reads one row per user.
package push

import (
	"encoding/json"
	"slices"
	"strings"
)

// Kind is a push rule kind.
type Kind string

const (
	Override Kind = "override"
	Content  Kind = "content"
	// PostContent (MSC4306) rules are checked after content rules and
	// before room rules; they have conditions like override rules.
	PostContent Kind = "postcontent"
	Room        Kind = "room"
	Sender      Kind = "sender"
	Underride   Kind = "underride"
)

// Kinds lists the kinds in evaluation order.
var kinds = [...]Kind{Override, Content, PostContent, Room, Sender, Underride}

// Kinds returns the kinds in evaluation order.
func Kinds() []Kind { return kinds[:] }

// ParseKind recognises a kind from a request path.
func ParseKind(s string) (Kind, bool) {
	k := Kind(s)
	return k, slices.Contains(kinds[:], k)
}

// hasConditions reports whether rules of k carry conditions (the others
// have a pattern, or conditions implied by their rule id).
func (k Kind) hasConditions() bool { return k == Override || k == PostContent || k == Underride }

// Rule is a push rule as the client-server API shows it.
type Rule struct {
	RuleID  string            `json:"rule_id"`
	Default bool              `json:"default"`
	Enabled bool              `json:"enabled"`
	Actions []json.RawMessage `json:"actions"`
	// Conditions is the raw JSON array (kept verbatim so that condition
	// kinds this server does not know survive a round trip); nil for kinds
	// without conditions.
	Conditions json.RawMessage `json:"conditions,omitempty"`
	Pattern    *string         `json:"pattern,omitempty"`
}

// Ruleset is a user's rules per kind, each list in priority order.
type Ruleset map[Kind][]Rule

// MarshalJSON writes every standard kind (an empty list rather than
// nothing, as clients index the object by kind) and postcontent only when
// it has rules, since older clients do not know the kind.
func (rs Ruleset) MarshalJSON() ([]byte, error) {
	out := make(map[Kind][]Rule, len(kinds))
	for _, k := range kinds {
		rules := rs[k]
		if rules == nil {
			if k == PostContent {
				continue
			}
			rules = []Rule{}
		}
		out[k] = rules
	}
	return json.Marshal(out)
}

// Find returns the rule of kind k with id ruleID.
func (rs Ruleset) Find(k Kind, ruleID string) (Rule, bool) {
	for _, r := range rs[k] {
		if r.RuleID == ruleID {
			return r, true
		}
	}
	return Rule{}, false
}

// storedRule is one of a user's own rules.
type storedRule struct {
	RuleID     string            `json:"rule_id"`
	Enabled    bool              `json:"enabled"`
	Actions    []json.RawMessage `json:"actions"`
	Conditions json.RawMessage   `json:"conditions,omitempty"`
	Pattern    *string           `json:"pattern,omitempty"`
}

// defaultChange is a user's change to a server-default rule.
type defaultChange struct {
	Enabled *bool `json:"enabled,omitempty"`
	// Actions is a pointer so that an empty list (no action) is a change.
	Actions *[]json.RawMessage `json:"actions,omitempty"`
}

// userRules is the stored document of one user's push rules.
type userRules struct {
	Rules map[Kind][]storedRule `json:"rules,omitempty"`
	// Defaults is keyed by rule id: server-default ids are unique across
	// kinds.
	Defaults map[string]defaultChange `json:"defaults,omitempty"`
}

func parseUserRules(raw string) *userRules {
	u := &userRules{}
	if raw != "" {
		// A document this server wrote; a malformed one counts as no
		// customisation rather than wedging the user's notifications.
		_ = json.Unmarshal([]byte(raw), u)
	}
	return u
}

func (u *userRules) clone() *userRules {
	c := &userRules{Rules: map[Kind][]storedRule{}, Defaults: map[string]defaultChange{}}
	for k, rs := range u.Rules {
		c.Rules[k] = slices.Clone(rs)
	}
	for id, d := range u.Defaults {
		c.Defaults[id] = d
	}
	return c
}

// ruleset merges the user's document with the server-default rules: in
// each kind the user's rules come before the defaults, except that
// .m.rule.master stays the first override rule (as the spec describes it
// and Synapse orders it).
func (u *userRules) ruleset(userID string) Ruleset {
	defs := defaultRules(userID)
	rs := Ruleset{}
	for _, k := range kinds {
		var out []Rule
		var tail []Rule
		for _, d := range defs[k] {
			if ch, ok := u.Defaults[d.RuleID]; ok {
				if ch.Enabled != nil {
					d.Enabled = *ch.Enabled
				}
				if ch.Actions != nil {
					d.Actions = *ch.Actions
				}
			}
			if d.RuleID == ruleMaster {
				out = append(out, d)
			} else {
				tail = append(tail, d)
			}
		}
		for _, r := range u.Rules[k] {
			out = append(out, Rule{RuleID: r.RuleID, Enabled: r.Enabled, Actions: r.Actions, Conditions: r.Conditions, Pattern: r.Pattern})
		}
		out = append(out, tail...)
		if len(out) > 0 {
			rs[k] = out
		}
	}
	return rs
}

// isDefaultID reports whether a rule id is reserved for server-default
// rules (they all start with a dot).
func isDefaultID(ruleID string) bool { return strings.HasPrefix(ruleID, ".") }
