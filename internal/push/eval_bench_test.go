package push

import (
	"fmt"
	"strings"
	"testing"
)

// BenchmarkEvaluateRoom evaluates one message for 1,000 users with the
// default rules, as the hook does for a send into a 1,000-member room:
// with rules compiled by Compile (every condition evaluated for every
// user), by an evaluator's CompileFor (conditions on the event alone
// decided once per event), and planned (the class's shared conditions
// decided once per event, as the hook does).
func BenchmarkEvaluateRoom(b *testing.B) {
	const members = 1000
	raw := []byte(`{"type":"m.room.message","sender":"@sender:x","room_id":"!r:x","content":{"msgtype":"m.text","body":"hello everyone, how is it going"}}`)
	for _, mode := range []string{"plain", "memo", "plan"} {
		memo := mode != "plain"
		b.Run(mode, func(b *testing.B) {
			ev := NewEvaluator()
			users := make([]string, members)
			names, lower := make([]string, members), make([]string, members)
			compiled := make([]*Compiled, members)
			for i := range users {
				users[i], names[i] = fmt.Sprintf("@user%d:x", i), fmt.Sprintf("User %d", i)
				lower[i] = strings.ToLower(names[i])
				rs := DefaultRuleset(users[i])
				if memo {
					compiled[i] = ev.CompileFor(users[i], rs)
				} else {
					compiled[i] = Compile(rs)
				}
			}
			ctx := Context{MemberCount: members + 1, SenderPower: 0}
			b.ReportAllocs()
			for b.Loop() {
				e, err := NewEvent(raw)
				if err != nil {
					b.Fatal(err)
				}
				var plan *Plan
				for i, u := range users {
					ctx.UserID, ctx.DisplayName = u, names[i]
					if memo { // as the hook does, which keeps members' names in lower case
						ctx.lowerName = lower[i]
					}
					var out Outcome
					var ok bool
					if mode == "plan" {
						if plan == nil {
							plan = ev.Plan(compiled[i], e, &ctx)
						}
						out, ok = ev.EvaluatePlanned(compiled[i], plan, e, &ctx)
					} else {
						out, ok = ev.Evaluate(compiled[i], e, &ctx)
					}
					if !ok || !out.Notify {
						b.Fatalf("%s not notified", u)
					}
				}
			}
		})
	}
}
