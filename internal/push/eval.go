package push

import (
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// Event is an event decoded once for evaluation against many users' rules
// (by one goroutine at a time: it caches derived values).
type Event struct {
	obj map[string]any
	// lowerBody is content.body in lower case, made on first use.
	lowerBody *string
	hasBody   bool
	// memo holds the results of conditions that depend on the event alone,
	// by the slot the evaluator gave them (0 not yet known, 1 false, 2
	// true): a room's members mostly share their rules, so each such
	// condition is decided once per event rather than once per member.
	memo []uint8
	// memoBy is the evaluator whose slots memo is indexed by.
	memoBy *Evaluator
}

// body returns content.body in lower case, and whether it is a string.
func (e *Event) body() (string, bool) {
	if e.lowerBody == nil {
		s, ok := stringAt(e, bodyPath)
		l := strings.ToLower(s)
		e.lowerBody, e.hasBody = &l, ok
	}
	return *e.lowerBody, e.hasBody
}

// NewEvent decodes an event's JSON (numbers kept exact).
func NewEvent(raw []byte) (*Event, error) {
	d := json.NewDecoder(bytes.NewReader(raw))
	d.UseNumber()
	var obj map[string]any
	if err := d.Decode(&obj); err != nil || obj == nil {
		return nil, fmt.Errorf("decode event for push rules: %v", err)
	}
	return &Event{obj: obj}, nil
}

// lookup follows a dotted path (already split) into the event.
func (e *Event) lookup(path []string) (any, bool) {
	var cur any = e.obj
	for _, p := range path {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		if cur, ok = m[p]; !ok {
			return nil, false
		}
	}
	return cur, true
}

// String returns a string property of the event ("" if absent).
func (e *Event) String(path ...string) string {
	v, _ := e.lookup(path)
	s, _ := v.(string)
	return s
}

// Context is what conditions read besides the event: the user the rules
// belong to and the room's state at the event.
type Context struct {
	UserID string
	// DisplayName is the user's display name in the room ("" for none).
	DisplayName string
	// MemberCount is the room's number of joined members.
	MemberCount int
	// SenderPower is the sender's power level; NotificationLevels the
	// power levels' notifications object (absent keys default to 50).
	SenderPower        int64
	NotificationLevels map[string]int64
	// lowerName, when set, is DisplayName in lower case (the caller
	// evaluating many events keeps it, sparing a conversion per event).
	lowerName string
}

// Outcome is what the first matching rule says.
type Outcome struct {
	RuleID    string
	Actions   []json.RawMessage
	Notify    bool
	Highlight bool
}

// Evaluator evaluates compiled rulesets. It numbers the conditions that
// depend on the event alone (CompileFor), so that an event's evaluation
// for many users decides each of them once.
type Evaluator struct {
	mu    sync.Mutex
	slots map[string]int32
	// actions interns rules' action lists, so that users with the same
	// actions share one slice and outcomes compare by pointer.
	actions map[string][]json.RawMessage
	classes map[string]int32
}

// intern returns the shared copy of actions (itself when the table is
// full).
func (ev *Evaluator) intern(actions []json.RawMessage) []json.RawMessage {
	var k strings.Builder
	for _, a := range actions {
		k.Write(a)
		k.WriteByte(0)
	}
	key := k.String()
	ev.mu.Lock()
	defer ev.mu.Unlock()
	if a, ok := ev.actions[key]; ok {
		return a
	}
	if len(ev.actions) >= maxMemoSlots {
		return actions
	}
	if ev.actions == nil {
		ev.actions = map[string][]json.RawMessage{}
	}
	ev.actions[key] = actions
	return actions
}

func NewEvaluator() *Evaluator { return &Evaluator{} }

// maxMemoSlots bounds the distinct memoised conditions (the server-default
// ones and the users' own; past it, new conditions are evaluated each time).
const maxMemoSlots = 4096

// slot returns key's memo slot (from 1), or 0 when the table is full.
func (ev *Evaluator) slot(key string) int32 {
	ev.mu.Lock()
	defer ev.mu.Unlock()
	if s, ok := ev.slots[key]; ok {
		return s
	}
	if len(ev.slots) >= maxMemoSlots {
		return 0
	}
	if ev.slots == nil {
		ev.slots = map[string]int32{}
	}
	s := int32(len(ev.slots) + 1)
	ev.slots[key] = s
	return s
}

// Compiled is a ruleset ready to evaluate, in evaluation order.
type Compiled struct {
	rules []compiledRule
	// by numbered the memo slots and the class (nil: Compile, neither).
	by *Evaluator
	// class numbers the ruleset's shape (0: none): rulesets of one class
	// have the same rules in the same order with the same actions and the
	// same conditions, but for the conditions about their own user (see
	// compiledRule.user), so one event's evaluation is mostly shared by
	// the class (Plan).
	class int32
}

type compiledRule struct {
	id    string
	conds []condition
	// memo gives each condition's memo slot (0: evaluate every time); nil
	// when none has one.
	memo []int32
	// user marks the conditions about the ruleset's own user (display
	// name, user id, user name); nil when there is none. The others give
	// the same answer for every user for one event and room state.
	user      []bool
	actions   []json.RawMessage
	notify    bool
	highlight bool
}

type condition func(ev *Evaluator, e *Event, c *Context) bool

// Compile prepares a user's ruleset. Disabled rules are left out; a rule
// with a condition this server does not understand can never match (the
// spec: unrecognised conditions match no event).
func Compile(rs Ruleset) *Compiled { return compile(rs, nil, "") }

// CompileFor is Compile for userID's ruleset, with the conditions that
// depend on the event alone numbered for memoising (see Event.memo), and
// the ruleset's class for Plan. A condition naming the user (their
// mention, their invite, their user name) is not memoised: no other user
// shares it.
func (ev *Evaluator) CompileFor(userID string, rs Ruleset) *Compiled { return compile(rs, ev, userID) }

func compile(rs Ruleset, ev *Evaluator, userID string) *Compiled {
	localpart := strings.TrimPrefix(userID, "@")
	if i := strings.IndexByte(localpart, ':'); i >= 0 {
		localpart = localpart[:i]
	}
	ownUser := func(key string) bool { return userID != "" && strings.Contains(key, userID) }
	slotFor := func(key string) int32 {
		if ev == nil || ownUser(key) {
			return 0
		}
		return ev.slot(key)
	}
	// shape spells out the ruleset with the conditions about the user
	// blanked out ("u"), for the class.
	var shape strings.Builder
	out := &Compiled{by: ev}
	for _, k := range kinds {
		for _, r := range rs[k] {
			if !r.Enabled {
				continue
			}
			cr := compiledRule{id: r.RuleID, actions: r.Actions}
			if ev != nil && len(r.Actions) > 0 {
				cr.actions = ev.intern(r.Actions)
			}
			cr.notify, cr.highlight = actionsOutcome(r.Actions)
			// key is a condition's text in the shape; user says it is
			// about the user.
			add := func(cond condition, key string, pure, user bool) {
				cr.conds = append(cr.conds, cond)
				var s int32
				if pure && !user {
					s = slotFor(key)
				}
				cr.memo = append(cr.memo, s)
				cr.user = append(cr.user, user)
				if user {
					key = "u"
				}
				shape.WriteString(key)
				shape.WriteByte(0)
			}
			shape.WriteString(string(k) + "\x00" + r.RuleID + "\x00")
			for _, a := range cr.actions {
				shape.Write(a)
				shape.WriteByte(1)
			}
			shape.WriteByte(0)
			switch k {
			case Override, PostContent, Underride:
				var raws []json.RawMessage
				if len(r.Conditions) > 0 && json.Unmarshal(r.Conditions, &raws) != nil {
					continue
				}
				for _, raw := range raws {
					cond, kind := compileCondition(raw)
					key := "c" + string(raw)
					add(cond, key, kind == condEvent, kind == condUser || ownUser(key))
				}
			case Content:
				if r.Pattern == nil {
					continue
				}
				key := "b" + *r.Pattern
				add(globCondition([]string{"content", "body"}, *r.Pattern), key, true, *r.Pattern == localpart || ownUser(key))
			case Room:
				add(equalsCondition([]string{"room_id"}, r.RuleID), "r"+r.RuleID, true, false)
			case Sender:
				add(equalsCondition([]string{"sender"}, r.RuleID), "s"+r.RuleID, true, ownUser(r.RuleID))
			}
			if !slices.ContainsFunc(cr.memo, func(s int32) bool { return s > 0 }) {
				cr.memo = nil
			}
			if !slices.Contains(cr.user, true) {
				cr.user = nil
			}
			out.rules = append(out.rules, cr)
			shape.WriteByte(2)
		}
	}
	if ev != nil {
		out.class = ev.classOf(shape.String())
	}
	return out
}

// classOf numbers a ruleset shape (0 when the table is full).
func (ev *Evaluator) classOf(shape string) int32 {
	ev.mu.Lock()
	defer ev.mu.Unlock()
	if c, ok := ev.classes[shape]; ok {
		return c
	}
	if len(ev.classes) >= maxMemoSlots {
		return 0
	}
	if ev.classes == nil {
		ev.classes = map[string]int32{}
	}
	c := int32(len(ev.classes) + 1)
	ev.classes[shape] = c
	return c
}

// Class is the ruleset's class (0: none; then only Evaluate applies).
func (c *Compiled) Class() int32 { return c.class }

// Plan is one event's evaluation shared by a class of rulesets: the rules
// that match for every user of the class but for the conditions about the
// user (candidates, in order), and the first rule that matches for every
// user (generic; -1 if none).
type Plan struct {
	candidates []int
	generic    int
}

// Plan evaluates the event against a class's shared conditions, with any
// ruleset of the class. ctx's fields but UserID and DisplayName must be
// those every user of the class is evaluated with (the room's state at
// the event).
func (ev *Evaluator) Plan(c *Compiled, e *Event, ctx *Context) *Plan {
	p := &Plan{generic: -1}
	ev.resetMemo(c, e)
	for i := range c.rules {
		r := &c.rules[i]
		ok, user := true, false
		for j := range r.conds {
			if r.user != nil && r.user[j] {
				user = true
				continue
			}
			if !ev.cond(r, j, e, ctx) {
				ok = false
				break
			}
		}
		if !ok {
			continue
		}
		if !user {
			p.generic = i
			break
		}
		p.candidates = append(p.candidates, i)
	}
	return p
}

// EvaluatePlanned is Evaluate for a ruleset of the plan's class: only the
// candidates' conditions about the user are evaluated.
func (ev *Evaluator) EvaluatePlanned(c *Compiled, p *Plan, e *Event, ctx *Context) (Outcome, bool) {
next:
	for _, i := range p.candidates {
		r := &c.rules[i]
		for j, cond := range r.conds {
			if r.user[j] && !cond(ev, e, ctx) {
				continue next
			}
		}
		return Outcome{RuleID: r.id, Actions: r.actions, Notify: r.notify, Highlight: r.highlight}, true
	}
	if p.generic < 0 {
		return Outcome{}, false
	}
	r := &c.rules[p.generic]
	return Outcome{RuleID: r.id, Actions: r.actions, Notify: r.notify, Highlight: r.highlight}, true
}

func (ev *Evaluator) resetMemo(c *Compiled, e *Event) {
	if c.by != nil && e.memoBy != c.by {
		e.memo, e.memoBy = e.memo[:0], c.by
	}
}

// cond evaluates rule r's condition j, through the event's memo when the
// condition has a slot.
func (ev *Evaluator) cond(r *compiledRule, j int, e *Event, ctx *Context) bool {
	if r.memo == nil || r.memo[j] == 0 {
		return r.conds[j](ev, e, ctx)
	}
	s := int(r.memo[j])
	if s >= len(e.memo) {
		e.memo = append(e.memo, make([]uint8, s+1-len(e.memo))...)
	}
	if e.memo[s] == 0 {
		e.memo[s] = 1
		if r.conds[j](ev, e, ctx) {
			e.memo[s] = 2
		}
	}
	return e.memo[s] == 2
}

// Evaluate returns the outcome of the first rule that matches, or false
// when none does.
func (ev *Evaluator) Evaluate(c *Compiled, e *Event, ctx *Context) (Outcome, bool) {
	ev.resetMemo(c, e)
next:
	for i := range c.rules {
		r := &c.rules[i]
		for j := range r.conds {
			if !ev.cond(r, j, e, ctx) {
				continue next
			}
		}
		return Outcome{RuleID: r.id, Actions: r.actions, Notify: r.notify, Highlight: r.highlight}, true
	}
	return Outcome{}, false
}

// actionsOutcome reads notify and the highlight tweak from actions.
// dont_notify and coalesce are legacy no-ops.
func actionsOutcome(actions []json.RawMessage) (notify, highlight bool) {
	for _, a := range actions {
		var s string
		if json.Unmarshal(a, &s) == nil {
			notify = notify || s == "notify"
			continue
		}
		var t struct {
			SetTweak string           `json:"set_tweak"`
			Value    *json.RawMessage `json:"value"`
		}
		if json.Unmarshal(a, &t) != nil || t.SetTweak != "highlight" {
			continue
		}
		// The highlight tweak without a value means true.
		var b bool
		highlight = t.Value == nil || (json.Unmarshal(*t.Value, &b) == nil && b)
	}
	return notify, highlight
}

func never(*Evaluator, *Event, *Context) bool { return false }

// Condition kinds by what their result depends on.
const (
	// condEvent: the event alone.
	condEvent = iota
	// condRoom: the event and the room's state (member count, power
	// levels), the same for every user.
	condRoom
	// condUser: the user (their display name).
	condUser
)

// compileCondition compiles one condition, and says what its result
// depends on.
func compileCondition(raw json.RawMessage) (condition, int) {
	cond := compileConditionFunc(raw)
	var c struct {
		Kind string `json:"kind"`
	}
	_ = json.Unmarshal(raw, &c)
	switch c.Kind {
	case "event_match", "event_property_is", "event_property_contains":
		return cond, condEvent
	case "contains_display_name":
		return cond, condUser
	}
	return cond, condRoom
}

func compileConditionFunc(raw json.RawMessage) condition {
	var c struct {
		Kind    string          `json:"kind"`
		Key     *string         `json:"key"`
		Pattern *string         `json:"pattern"`
		Value   json.RawMessage `json:"value"`
		Is      *string         `json:"is"`
	}
	if json.Unmarshal(raw, &c) != nil {
		return never
	}
	switch c.Kind {
	case "event_match":
		if c.Key == nil || c.Pattern == nil {
			return never
		}
		return globCondition(SplitPath(*c.Key), *c.Pattern)
	case "event_property_is", "event_property_contains":
		if c.Key == nil || c.Value == nil {
			return never
		}
		want, ok := scalar(c.Value)
		if !ok {
			return never
		}
		path := SplitPath(*c.Key)
		if c.Kind == "event_property_is" {
			return func(_ *Evaluator, e *Event, _ *Context) bool {
				v, ok := e.lookup(path)
				return ok && scalarEqual(v, want)
			}
		}
		return func(_ *Evaluator, e *Event, _ *Context) bool {
			v, _ := e.lookup(path)
			arr, ok := v.([]any)
			if !ok {
				return false
			}
			for _, x := range arr {
				if scalarEqual(x, want) {
					return true
				}
			}
			return false
		}
	case "contains_display_name":
		return func(_ *Evaluator, e *Event, c *Context) bool {
			if c.DisplayName == "" {
				return false
			}
			body, ok := e.body()
			lower := c.lowerName
			if lower == "" {
				lower = strings.ToLower(c.DisplayName)
			}
			return ok && containsWord(body, lower)
		}
	case "room_member_count":
		if c.Is == nil {
			return never
		}
		cmp, ok := parseMemberCount(*c.Is)
		if !ok {
			return never
		}
		return func(_ *Evaluator, _ *Event, c *Context) bool { return cmp(c.MemberCount) }
	case "sender_notification_permission":
		if c.Key == nil {
			return never
		}
		key := *c.Key
		return func(_ *Evaluator, _ *Event, c *Context) bool {
			need, ok := c.NotificationLevels[key]
			if !ok {
				need = 50
			}
			return c.SenderPower >= need
		}
	}
	return never
}

var bodyPath = []string{"content", "body"}

func stringAt(e *Event, path []string) (string, bool) {
	v, ok := e.lookup(path)
	s, isStr := v.(string)
	return s, ok && isStr
}

// globCondition is event_match: a case-insensitive glob over a string
// property; the whole value must match, except for content.body, where
// the pattern matches any run of the body between word boundaries.
func globCondition(path []string, pattern string) condition {
	words := len(path) == 2 && path[0] == "content" && path[1] == "body"
	if !strings.ContainsAny(pattern, "*?") {
		// Most patterns are literals (event types, keywords, @room): no
		// regular expression needed.
		if words {
			lower := strings.ToLower(pattern)
			return func(_ *Evaluator, e *Event, _ *Context) bool {
				body, ok := e.body()
				return ok && containsWord(body, lower)
			}
		}
		return func(_ *Evaluator, e *Event, _ *Context) bool {
			s, ok := stringAt(e, path)
			return ok && strings.EqualFold(s, pattern)
		}
	}
	re, err := regexp.Compile(globRegexp(pattern, words))
	if err != nil {
		return never
	}
	return func(_ *Evaluator, e *Event, _ *Context) bool {
		s, ok := stringAt(e, path)
		return ok && re.MatchString(s)
	}
}

func equalsCondition(path []string, want string) condition {
	return func(_ *Evaluator, e *Event, _ *Context) bool {
		s, ok := stringAt(e, path)
		return ok && s == want
	}
}

// globRegexp translates a glob (* and ?) into a regular expression.
func globRegexp(glob string, words bool) string {
	var b strings.Builder
	for _, r := range glob {
		switch r {
		case '*':
			b.WriteString(".*")
		case '?':
			b.WriteString(".")
		default:
			b.WriteString(regexp.QuoteMeta(string(r)))
		}
	}
	if words {
		return wordBounded(b.String())
	}
	return `(?is)\A(?:` + b.String() + `)\z`
}

// wordBounded matches re where it starts and ends at a word boundary: the
// ends of the value or a character outside [A-Za-z0-9_].
func wordBounded(re string) string {
	return `(?is)(?:\A|[^A-Za-z0-9_])(?:` + re + `)(?:[^A-Za-z0-9_]|\z)`
}

// containsWord reports whether needle occurs in hay starting and ending at
// word boundaries (both already in lower case). An empty needle never
// matches.
func containsWord(hay, needle string) bool {
	if needle == "" {
		return false
	}
	for from := 0; from <= len(hay)-len(needle); {
		i := strings.Index(hay[from:], needle)
		if i < 0 {
			return false
		}
		start, end := from+i, from+i+len(needle)
		if (start == 0 || !isWordByte(hay[start-1])) && (end == len(hay) || !isWordByte(hay[end])) {
			return true
		}
		from = start + 1
	}
	return false
}

func isWordByte(b byte) bool {
	return b == '_' || (b >= '0' && b <= '9') || (b >= 'a' && b <= 'z') || (b >= 'A' && b <= 'Z')
}

// SplitPath splits a dotted property path: "\." is a literal dot and "\\"
// a literal backslash; any other backslash stands for itself.
func SplitPath(key string) []string {
	var out []string
	var cur strings.Builder
	for i := 0; i < len(key); i++ {
		c := key[i]
		switch {
		case c == '\\' && i+1 < len(key) && (key[i+1] == '.' || key[i+1] == '\\'):
			cur.WriteByte(key[i+1])
			i++
		case c == '.':
			out = append(out, cur.String())
			cur.Reset()
		default:
			cur.WriteByte(c)
		}
	}
	return append(out, cur.String())
}

// scalar decodes a condition's value: a string, an integer, a boolean or
// null (the spec's non-compound canonical JSON values).
func scalar(raw json.RawMessage) (any, bool) {
	d := json.NewDecoder(bytes.NewReader(raw))
	d.UseNumber()
	var v any
	if d.Decode(&v) != nil {
		return nil, false
	}
	switch x := v.(type) {
	case nil, string, bool:
		return v, true
	case json.Number:
		n, err := x.Int64()
		return n, err == nil
	}
	return nil, false
}

func scalarEqual(v, want any) bool {
	switch x := v.(type) {
	case json.Number:
		n, err := x.Int64()
		w, ok := want.(int64)
		return err == nil && ok && n == w
	case string, bool, nil:
		return v == want
	}
	return false
}

// parseMemberCount reads room_member_count's "is": a decimal integer with
// an optional ==, <, >, <= or >= prefix (== when there is none).
func parseMemberCount(is string) (func(int) bool, bool) {
	op := ""
	for _, p := range []string{"==", "<=", ">=", "<", ">"} {
		if strings.HasPrefix(is, p) {
			op, is = p, is[len(p):]
			break
		}
	}
	n, err := strconv.Atoi(is)
	if err != nil || n < 0 {
		return nil, false
	}
	switch op {
	case "<":
		return func(c int) bool { return c < n }, true
	case ">":
		return func(c int) bool { return c > n }, true
	case "<=":
		return func(c int) bool { return c <= n }, true
	case ">=":
		return func(c int) bool { return c >= n }, true
	}
	return func(c int) bool { return c == n }, true
}

// Sound is the value of the sound tweak in actions ("" for none).
func Sound(actions []json.RawMessage) string {
	for _, a := range actions {
		var t struct {
			SetTweak string `json:"set_tweak"`
			Value    string `json:"value"`
		}
		if json.Unmarshal(a, &t) == nil && t.SetTweak == "sound" {
			return t.Value
		}
	}
	return ""
}
