package push_test

import (
	"encoding/json"
	"fmt"
	"slices"
	"testing"

	"ganglion/internal/push"
)

func ev(t *testing.T, s string) *push.Event {
	t.Helper()
	e, err := push.NewEvent([]byte(s))
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// one evaluates a single override rule with the given condition.
func one(t *testing.T, cond string, event string, ctx push.Context) bool {
	t.Helper()
	rs := push.Ruleset{push.Override: {{RuleID: "r", Enabled: true, Actions: []json.RawMessage{json.RawMessage(`"notify"`)},
		Conditions: json.RawMessage(`[` + cond + `]`)}}}
	_, ok := push.NewEvaluator().Evaluate(push.Compile(rs), ev(t, event), &ctx)
	return ok
}

func TestConditions(t *testing.T) {
	msg := func(body string) string {
		b, _ := json.Marshal(body)
		return `{"type":"m.room.message","room_id":"!r:x","sender":"@s:x","content":{"msgtype":"m.text","body":` + string(b) + `}}`
	}
	ctx := push.Context{UserID: "@me:x", DisplayName: "Ålice Smith", MemberCount: 5, SenderPower: 50,
		NotificationLevels: map[string]int64{"room": 50}}
	cases := []struct {
		name, cond, event string
		want              bool
		ctx               *push.Context
	}{
		// event_match: whole value, case-insensitive, * and ?.
		{"type exact", `{"kind":"event_match","key":"type","pattern":"m.room.message"}`, msg("x"), true, nil},
		{"type case", `{"kind":"event_match","key":"type","pattern":"M.ROOM.MESSAGE"}`, msg("x"), true, nil},
		{"type glob star", `{"kind":"event_match","key":"type","pattern":"m.room.*"}`, msg("x"), true, nil},
		{"type glob q", `{"kind":"event_match","key":"type","pattern":"m.room.messag?"}`, msg("x"), true, nil},
		{"type prefix only", `{"kind":"event_match","key":"type","pattern":"m.room"}`, msg("x"), false, nil},
		{"dots are literal", `{"kind":"event_match","key":"type","pattern":"m?room?message"}`, msg("x"), true, nil},
		{"regexp chars literal", `{"kind":"event_match","key":"type","pattern":"m.room.(message)"}`, msg("x"), false, nil},
		{"absent key", `{"kind":"event_match","key":"content.nope","pattern":"*"}`, msg("x"), false, nil},
		{"non-string value", `{"kind":"event_match","key":"content","pattern":"*"}`, msg("x"), false, nil},
		// content.body: any substring between word boundaries.
		{"body word", `{"kind":"event_match","key":"content.body","pattern":"cake"}`, msg("The cake is a lie"), true, nil},
		{"body glob across words", `{"kind":"event_match","key":"content.body","pattern":"cake*lie"}`, msg("The cake is a lie!"), true, nil},
		{"body inside word", `{"kind":"event_match","key":"content.body","pattern":"cake"}`, msg("cakes are good"), false, nil},
		{"body underscore is word", `{"kind":"event_match","key":"content.body","pattern":"cake"}`, msg("cake_walk"), false, nil},
		{"body punctuation boundary", `{"kind":"event_match","key":"content.body","pattern":"@room"}`, msg("hey @room!"), true, nil},
		{"body case", `{"kind":"event_match","key":"content.body","pattern":"CAKE"}`, msg("Cake time"), true, nil},
		{"body newline", `{"kind":"event_match","key":"content.body","pattern":"a*b"}`, msg("a\nb"), true, nil},
		// Dotted paths with escapes.
		{"escaped dot", `{"kind":"event_property_is","key":"content.m\\.federate","value":false}`,
			`{"type":"m.room.create","content":{"m.federate":false}}`, true, nil},
		{"unescaped dot is nesting", `{"kind":"event_property_is","key":"content.m.federate","value":false}`,
			`{"type":"m.room.create","content":{"m.federate":false}}`, false, nil},
		{"escaped backslash", `{"kind":"event_match","key":"content.a\\\\b","pattern":"v"}`,
			`{"type":"t","content":{"a\\b":"v"}}`, true, nil},
		{"other backslash literal", `{"kind":"event_match","key":"content.a\\x","pattern":"v"}`,
			`{"type":"t","content":{"a\\x":"v"}}`, true, nil},
		// event_property_is: exact scalars.
		{"is string", `{"kind":"event_property_is","key":"content.m\\.relates_to.rel_type","value":"m.replace"}`,
			`{"type":"m.room.message","content":{"m.relates_to":{"rel_type":"m.replace"}}}`, true, nil},
		{"is string case-sensitive", `{"kind":"event_property_is","key":"content.m\\.relates_to.rel_type","value":"M.REPLACE"}`,
			`{"type":"m.room.message","content":{"m.relates_to":{"rel_type":"m.replace"}}}`, false, nil},
		{"is int", `{"kind":"event_property_is","key":"content.n","value":3}`, `{"content":{"n":3}}`, true, nil},
		{"is int vs string", `{"kind":"event_property_is","key":"content.n","value":"3"}`, `{"content":{"n":3}}`, false, nil},
		{"is null", `{"kind":"event_property_is","key":"content.n","value":null}`, `{"content":{"n":null}}`, true, nil},
		{"is null absent", `{"kind":"event_property_is","key":"content.n","value":null}`, `{"content":{}}`, false, nil},
		{"is true", `{"kind":"event_property_is","key":"content.m\\.mentions.room","value":true}`,
			`{"content":{"m.mentions":{"room":true}}}`, true, nil},
		{"is compound value never", `{"kind":"event_property_is","key":"content","value":{}}`, `{"content":{}}`, false, nil},
		// event_property_contains.
		{"contains", `{"kind":"event_property_contains","key":"content.m\\.mentions.user_ids","value":"@me:x"}`,
			`{"content":{"m.mentions":{"user_ids":["@a:x","@me:x"]}}}`, true, nil},
		{"contains missing", `{"kind":"event_property_contains","key":"content.m\\.mentions.user_ids","value":"@me:x"}`,
			`{"content":{"m.mentions":{"user_ids":["@a:x"]}}}`, false, nil},
		{"contains not array", `{"kind":"event_property_contains","key":"content.m\\.mentions.user_ids","value":"@me:x"}`,
			`{"content":{"m.mentions":{"user_ids":"@me:x"}}}`, false, nil},
		// contains_display_name: word boundaries, Unicode, case-insensitive.
		{"display name", `{"kind":"contains_display_name"}`, msg("hello ålice smith!"), true, nil},
		{"display name inside word", `{"kind":"contains_display_name"}`, msg("hello Ålice Smithers"), false, nil},
		{"display name absent", `{"kind":"contains_display_name"}`, msg("hello"), false, nil},
		{"no display name", `{"kind":"contains_display_name"}`, msg("hello "), false, &push.Context{DisplayName: ""}},
		{"display name regexp chars", `{"kind":"contains_display_name"}`, msg("hi a.b*"), true, &push.Context{DisplayName: "a.b*"}},
		{"display name regexp chars no match", `{"kind":"contains_display_name"}`, msg("hi axbb"), false, &push.Context{DisplayName: "a.b*"}},
		// room_member_count.
		{"count bare", `{"kind":"room_member_count","is":"5"}`, msg("x"), true, nil},
		{"count ==", `{"kind":"room_member_count","is":"==4"}`, msg("x"), false, nil},
		{"count <", `{"kind":"room_member_count","is":"<6"}`, msg("x"), true, nil},
		{"count >", `{"kind":"room_member_count","is":">5"}`, msg("x"), false, nil},
		{"count <=", `{"kind":"room_member_count","is":"<=5"}`, msg("x"), true, nil},
		{"count >=", `{"kind":"room_member_count","is":">=6"}`, msg("x"), false, nil},
		{"count garbage", `{"kind":"room_member_count","is":"five"}`, msg("x"), false, nil},
		// sender_notification_permission.
		{"permission met", `{"kind":"sender_notification_permission","key":"room"}`, msg("x"), true, nil},
		{"permission unmet", `{"kind":"sender_notification_permission","key":"room"}`, msg("x"), false,
			&push.Context{SenderPower: 0, NotificationLevels: map[string]int64{"room": 50}}},
		{"permission default 50", `{"kind":"sender_notification_permission","key":"other"}`, msg("x"), false,
			&push.Context{SenderPower: 49}},
		{"permission custom level", `{"kind":"sender_notification_permission","key":"room"}`, msg("x"), true,
			&push.Context{SenderPower: 0, NotificationLevels: map[string]int64{"room": 0}}},
		// Unknown or malformed conditions never match.
		{"unknown kind", `{"kind":"org.example.cond"}`, msg("x"), false, nil},
		{"event_match without pattern", `{"kind":"event_match","key":"type"}`, msg("x"), false, nil},
	}
	for _, c := range cases {
		cx := ctx
		if c.ctx != nil {
			cx = *c.ctx
		}
		if got := one(t, c.cond, c.event, cx); got != c.want {
			t.Errorf("%s: matched = %v, want %v", c.name, got, c.want)
		}
	}
}

// TestDefaultRules runs the server-default rules over typical events.
func TestDefaultRules(t *testing.T) {
	const me = "@alice:x"
	cs := push.Compile(push.DefaultRuleset(me))
	e := push.NewEvaluator()
	dm := push.Context{UserID: me, DisplayName: "Alice", MemberCount: 2, SenderPower: 0, NotificationLevels: map[string]int64{"room": 50}}
	group := dm
	group.MemberCount = 10
	admin := group
	admin.SenderPower = 100
	cases := []struct {
		name, event       string
		ctx               push.Context
		rule              string
		notify, highlight bool
		sound             string
	}{
		{"dm message", `{"type":"m.room.message","sender":"@b:x","content":{"msgtype":"m.text","body":"hi"}}`, dm, ".m.rule.room_one_to_one", true, false, "default"},
		{"dm encrypted", `{"type":"m.room.encrypted","sender":"@b:x","content":{}}`, dm, ".m.rule.encrypted_room_one_to_one", true, false, "default"},
		{"group message", `{"type":"m.room.message","sender":"@b:x","content":{"msgtype":"m.text","body":"hi"}}`, group, ".m.rule.message", true, false, ""},
		{"group encrypted", `{"type":"m.room.encrypted","sender":"@b:x","content":{}}`, group, ".m.rule.encrypted", true, false, ""},
		{"notice", `{"type":"m.room.message","sender":"@b:x","content":{"msgtype":"m.notice","body":"alice"}}`, group, ".m.rule.suppress_notices", false, false, ""},
		{"user mention", `{"type":"m.room.message","sender":"@b:x","content":{"body":"x","m.mentions":{"user_ids":["@alice:x"]}}}`, group, ".m.rule.is_user_mention", true, true, "default"},
		{"display name", `{"type":"m.room.message","sender":"@b:x","content":{"body":"hey Alice!"}}`, group, ".m.rule.contains_display_name", true, true, "default"},
		{"user name", `{"type":"m.room.message","sender":"@b:x","content":{"body":"ping ALICE"}}`, push.Context{UserID: me, MemberCount: 10}, ".m.rule.contains_user_name", true, true, "default"},
		{"room mention by admin", `{"type":"m.room.message","sender":"@b:x","content":{"body":"x","m.mentions":{"room":true}}}`, admin, ".m.rule.is_room_mention", true, true, ""},
		{"room mention by nobody", `{"type":"m.room.message","sender":"@b:x","content":{"body":"x","m.mentions":{"room":true}}}`, group, ".m.rule.message", true, false, ""},
		{"@room by admin", `{"type":"m.room.message","sender":"@b:x","content":{"body":"@room look"}}`, admin, ".m.rule.roomnotif", true, true, ""},
		{"invite for me", `{"type":"m.room.member","state_key":"@alice:x","sender":"@b:x","content":{"membership":"invite"}}`, group, ".m.rule.invite_for_me", true, false, "default"},
		{"invite for other", `{"type":"m.room.member","state_key":"@carol:x","sender":"@b:x","content":{"membership":"invite"}}`, group, ".m.rule.member_event", false, false, ""},
		{"tombstone", `{"type":"m.room.tombstone","state_key":"","sender":"@b:x","content":{}}`, group, ".m.rule.tombstone", true, true, ""},
		{"reaction", `{"type":"m.reaction","sender":"@b:x","content":{}}`, dm, ".m.rule.reaction", false, false, ""},
		{"acl", `{"type":"m.room.server_acl","state_key":"","sender":"@b:x","content":{}}`, dm, ".m.rule.room.server_acl", false, false, ""},
		{"edit", `{"type":"m.room.message","sender":"@b:x","content":{"body":"* fixed","m.relates_to":{"rel_type":"m.replace"}}}`, dm, ".m.rule.suppress_edits", false, false, ""},
		{"call", `{"type":"m.call.invite","sender":"@b:x","content":{}}`, group, ".m.rule.call", true, false, "ring"},
	}
	for _, c := range cases {
		out, ok := e.Evaluate(cs, ev(t, c.event), &c.ctx)
		if !ok || out.RuleID != c.rule || out.Notify != c.notify || out.Highlight != c.highlight {
			t.Errorf("%s: %v %+v, want %s notify=%v highlight=%v", c.name, ok, out, c.rule, c.notify, c.highlight)
		}
		if got := push.Sound(out.Actions); got != c.sound {
			t.Errorf("%s: sound %q, want %q", c.name, got, c.sound)
		}
	}
	if _, ok := e.Evaluate(cs, ev(t, `{"type":"org.example","sender":"@b:x","content":{}}`), &group); ok {
		t.Error("an unknown event type matched a default rule")
	}
}

// TestDefaultOrder pins the spec's order of the server-default rules.
func TestDefaultOrder(t *testing.T) {
	rs := push.DefaultRuleset("@u:x")
	ids := func(k push.Kind) []string {
		var out []string
		for _, r := range rs[k] {
			if !r.Default {
				t.Errorf("%s not marked default", r.RuleID)
			}
			out = append(out, r.RuleID)
		}
		return out
	}
	want := map[push.Kind][]string{
		push.Override: {".m.rule.master", ".m.rule.suppress_notices", ".m.rule.invite_for_me", ".m.rule.member_event",
			".m.rule.is_user_mention", ".m.rule.contains_display_name", ".m.rule.is_room_mention", ".m.rule.roomnotif",
			".m.rule.tombstone", ".m.rule.reaction", ".m.rule.room.server_acl", ".m.rule.suppress_edits"},
		push.Content: {".m.rule.contains_user_name"},
		push.Underride: {".m.rule.call", ".m.rule.encrypted_room_one_to_one", ".m.rule.room_one_to_one",
			".m.rule.message", ".m.rule.encrypted"},
	}
	for k, w := range want {
		if got := ids(k); !slices.Equal(got, w) {
			t.Errorf("%s = %v, want %v", k, got, w)
		}
	}
	if m, _ := rs.Find(push.Override, ".m.rule.master"); m.Enabled {
		t.Error("master enabled by default")
	}
	b, _ := json.Marshal(rs)
	var wire map[string][]map[string]any
	if err := json.Unmarshal(b, &wire); err != nil {
		t.Fatal(err)
	}
	if _, ok := wire["postcontent"]; ok || len(wire["room"]) != 0 || wire["room"] == nil {
		t.Errorf("wire kinds: %s", b)
	}
	if fmt.Sprint(wire["content"][0]["pattern"]) != "u" || wire["override"][0]["conditions"] == nil {
		t.Errorf("wire rules: %s", b)
	}
}

func TestMasterSilencesEverything(t *testing.T) {
	rs := push.DefaultRuleset("@alice:x")
	rs[push.Override][0].Enabled = true
	out, ok := push.NewEvaluator().Evaluate(push.Compile(rs), ev(t, `{"type":"m.room.message","content":{"body":"alice"}}`),
		&push.Context{UserID: "@alice:x", MemberCount: 2})
	if !ok || out.RuleID != ".m.rule.master" || out.Notify {
		t.Fatalf("%v %+v", ok, out)
	}
}

// FuzzEvaluate: any conditions, pattern and event a client or a remote
// server could supply compile and evaluate without panicking, and an
// unparsable condition list never matches.
func FuzzEvaluate(f *testing.F) {
	f.Add(`[{"kind":"event_match","key":"content.body","pattern":"*a?b*"}]`, `ca\.ke`, `{"type":"m.room.message","content":{"body":"xa1b"}}`, "5")
	f.Add(`[{"kind":"event_property_contains","key":"content.m\\.mentions.user_ids","value":"@u:x"}]`, `*`, `{"content":{"m.mentions":{"user_ids":["@u:x",1,null]}}}`, "2")
	f.Add(`[{"kind":"room_member_count","is":">=2"},{"kind":"sender_notification_permission","key":"room"},{"kind":"contains_display_name"}]`, `[`, `{"content":{"body":"U?"}}`, "U?")
	f.Add(`[{"kind":"event_property_is","key":"a\\\\.b\\","value":99999999999999999999}]`, `\`, `{"a\\":{"b\\":1}}`, "")
	f.Fuzz(func(t *testing.T, conditions, pattern, event, name string) {
		rs := push.Ruleset{
			push.Override: {{RuleID: "o", Enabled: true, Actions: []json.RawMessage{json.RawMessage(`"notify"`)}, Conditions: json.RawMessage(conditions)}},
			push.Content:  {{RuleID: "c", Enabled: true, Actions: []json.RawMessage{json.RawMessage(`{"set_tweak":"highlight"}`)}, Pattern: &pattern}},
		}
		e, err := push.NewEvent([]byte(event))
		if err != nil {
			return
		}
		out, ok := push.NewEvaluator().Evaluate(push.Compile(rs), e, &push.Context{UserID: "@u:x", DisplayName: name, MemberCount: len(name),
			SenderPower: int64(len(pattern)), NotificationLevels: map[string]int64{"room": 3}})
		var list []json.RawMessage
		if ok && out.RuleID == "o" && json.Unmarshal([]byte(conditions), &list) != nil && len(conditions) > 0 {
			t.Fatalf("a rule with unparsable conditions %q matched", conditions)
		}
		_ = push.SplitPath(pattern)
	})
}
