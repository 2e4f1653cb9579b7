package push_test

import (
	"encoding/json"
	"slices"
	"testing"

	"ganglion/internal/push"
)

// TestPlannedEvaluation: evaluating a class's shared conditions once per
// event (Plan, EvaluatePlanned, as the hook does for a room's members)
// gives every user exactly the outcome of evaluating their own rules one
// by one, for users with the default rules (one class) and users with
// their own changes, over events that hit each kind of rule.
func TestPlannedEvaluation(t *testing.T) {
	notify := []json.RawMessage{json.RawMessage(`"notify"`)}
	highlight := []json.RawMessage{json.RawMessage(`"notify"`), json.RawMessage(`{"set_tweak":"highlight"}`)}
	type user struct {
		id, name string
		rules    push.Ruleset
	}
	def := func(id string) push.Ruleset { return push.DefaultRuleset(id) }
	withContent := func(id, pattern string) push.Ruleset {
		rs := def(id)
		rs[push.Content] = append([]push.Rule{{RuleID: pattern, Enabled: true, Pattern: &pattern, Actions: highlight}}, rs[push.Content]...)
		return rs
	}
	disabled := func(id, ruleID string) push.Ruleset {
		rs := def(id)
		for k, rules := range rs {
			for i := range rules {
				if rules[i].RuleID == ruleID {
					rs[k][i].Enabled = false
				}
			}
		}
		return rs
	}
	roomMuted := func(id string) push.Ruleset {
		rs := def(id)
		rs[push.Room] = []push.Rule{{RuleID: "!r:x", Enabled: true, Actions: []json.RawMessage{}}}
		return rs
	}
	fromSelf := func(id string) push.Ruleset {
		rs := def(id)
		rs[push.Override] = append([]push.Rule{{RuleID: "self", Enabled: true, Actions: notify,
			Conditions: json.RawMessage(`[{"kind":"event_match","key":"content.body","pattern":"` + id + `"}]`)}}, rs[push.Override]...)
		return rs
	}
	users := []user{
		{"@alice:x", "Alice", def("@alice:x")},
		{"@bob:x", "Bob Builder", def("@bob:x")},
		{"@carol:x", "", def("@carol:x")},
		{"@dan:x", "Dan", withContent("@dan:x", "cake")},
		{"@erin:x", "Erin", disabled("@erin:x", ".m.rule.message")},
		{"@frank:x", "Frank", roomMuted("@frank:x")},
		{"@gina:x", "Gina", fromSelf("@gina:x")},
		{"@hank:x", "Hank", disabled("@hank:x", ".m.rule.is_user_mention")},
	}
	msg := func(body string, extra string) string {
		return `{"type":"m.room.message","sender":"@s:x","room_id":"!r:x","content":{"msgtype":"m.text","body":"` + body + `"` + extra + `}}`
	}
	events := []struct {
		raw     string
		members int
		power   int64
	}{
		{msg("hello there", ""), 10, 0},
		{msg("hey", `,"m.mentions":{"user_ids":["@bob:x","@hank:x"]}`), 10, 0},
		{msg("alice and Bob Builder, and carol", ""), 10, 0},
		{msg("@room look", ""), 10, 100},
		{msg("@room look", ""), 10, 0},
		{msg("hey", `,"m.mentions":{"room":true}`), 10, 100},
		{msg("cake for @gina:x", ""), 10, 0},
		{msg("just us", ""), 2, 0},
		{`{"type":"m.room.encrypted","sender":"@s:x","room_id":"!r:x","content":{}}`, 2, 0},
		{`{"type":"m.room.encrypted","sender":"@s:x","room_id":"!r:x","content":{}}`, 10, 0},
		{`{"type":"m.room.message","sender":"@s:x","room_id":"!r:x","content":{"msgtype":"m.notice","body":"alice"}}`, 10, 0},
		{`{"type":"m.room.member","sender":"@s:x","room_id":"!r:x","state_key":"@carol:x","content":{"membership":"invite"}}`, 10, 0},
		{`{"type":"m.room.member","sender":"@s:x","room_id":"!r:x","state_key":"@s:x","content":{"membership":"join"}}`, 10, 0},
		{`{"type":"m.reaction","sender":"@s:x","room_id":"!r:x","content":{}}`, 10, 0},
		{msg("* edited alice", `,"m.relates_to":{"rel_type":"m.replace","event_id":"$e"}`), 10, 0},
		{`{"type":"m.room.tombstone","sender":"@s:x","room_id":"!r:x","state_key":"","content":{}}`, 10, 100},
		{`{"type":"m.call.invite","sender":"@s:x","room_id":"!r:x","content":{}}`, 10, 0},
	}
	for _, te := range events {
		ev := push.NewEvaluator()
		compiled := make([]*push.Compiled, len(users))
		for i, u := range users {
			compiled[i] = ev.CompileFor(u.id, u.rules)
		}
		if compiled[0].Class() == 0 || compiled[0].Class() != compiled[1].Class() || compiled[1].Class() != compiled[2].Class() {
			t.Fatalf("users with the default rules are not one class: %d, %d, %d", compiled[0].Class(), compiled[1].Class(), compiled[2].Class())
		}
		if slices.Contains([]int32{compiled[3].Class(), compiled[4].Class(), compiled[5].Class()}, compiled[0].Class()) {
			t.Fatalf("users with changed rules share the default class")
		}
		shared, err := push.NewEvent([]byte(te.raw))
		if err != nil {
			t.Fatal(err)
		}
		plans := map[int32]*push.Plan{}
		for i, u := range users {
			ctx := push.Context{UserID: u.id, DisplayName: u.name, MemberCount: te.members, SenderPower: te.power}
			want, wantOK := push.NewEvaluator().Evaluate(push.Compile(u.rules), ev2(t, te.raw), &ctx)
			c := compiled[i]
			p := plans[c.Class()]
			if p == nil {
				p = ev.Plan(c, shared, &ctx)
				plans[c.Class()] = p
			}
			got, gotOK := ev.EvaluatePlanned(c, p, shared, &ctx)
			if gotOK != wantOK || got.RuleID != want.RuleID || got.Notify != want.Notify || got.Highlight != want.Highlight {
				t.Errorf("%s on %s: planned %q %v/%v (%v), one by one %q %v/%v (%v)", u.id, te.raw,
					got.RuleID, got.Notify, got.Highlight, gotOK, want.RuleID, want.Notify, want.Highlight, wantOK)
			}
			// And the memoised evaluation without a plan.
			got, gotOK = ev.Evaluate(c, shared, &ctx)
			if gotOK != wantOK || got.RuleID != want.RuleID {
				t.Errorf("%s on %s: memoised %q (%v), one by one %q (%v)", u.id, te.raw, got.RuleID, gotOK, want.RuleID, wantOK)
			}
		}
	}
}

func ev2(t *testing.T, raw string) *push.Event {
	t.Helper()
	e, err := push.NewEvent([]byte(raw))
	if err != nil {
		t.Fatal(err)
	}
	return e
}
