package stateres_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"
	"testing"

	"ganglion/internal/eventauth"
	"ganglion/internal/events"
	"ganglion/internal/stateres"
)

const (
	alice   = "@alice:example.com"
	bob     = "@bob:example.com"
	charlie = "@charlie:example.com"
	evelyn  = "@evelyn:example.com"
	zara    = "@zara:example.com"
)

func roomVersion(tb testing.TB, id string) *events.RoomVersion {
	tb.Helper()
	rv, ok := events.LookupRoomVersion(id)
	if !ok {
		tb.Fatalf("unknown room version %q", id)
	}
	return rv
}

// v21Format2 is room version 2 (sender-chosen "$node:example.com" event ids,
// explicit create in auth_events) resolved with v2.1, so that the golden
// DAGs read the same under both algorithms. Room version 12 itself is
// covered by its own tests.
func v21Format2(tb testing.TB) *events.RoomVersion {
	rv := *roomVersion(tb, "2")
	rv.ID, rv.StateRes = "2-with-v2.1", events.StateResV21
	return &rv
}

// memFetcher is an EventFetcher over a map, counting calls so tests can
// see batching.
type memFetcher struct {
	evs         map[string]*events.Event
	eventsCalls int
}

func newMemFetcher() *memFetcher { return &memFetcher{evs: map[string]*events.Event{}} }

func (m *memFetcher) Events(_ context.Context, ids []string) (map[string]*events.Event, error) {
	m.eventsCalls++
	out := make(map[string]*events.Event, len(ids))
	for _, id := range ids {
		if ev, ok := m.evs[id]; ok {
			out[id] = ev
		}
	}
	return out, nil
}

func (m *memFetcher) AuthChain(_ context.Context, ids []string) ([]string, error) {
	seen := map[string]bool{}
	var out []string
	stack := []string{}
	for _, id := range ids {
		if ev, ok := m.evs[id]; ok {
			stack = append(stack, ev.AuthEventIDs()...)
		}
	}
	for len(stack) > 0 {
		id := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if seen[id] {
			continue
		}
		seen[id] = true
		out = append(out, id)
		if ev, ok := m.evs[id]; ok {
			stack = append(stack, ev.AuthEventIDs()...)
		}
	}
	return out, nil
}

// node is one event of a test DAG, named by a short node id. In room
// versions 1 and 2 the node id is the event id's localpart; later versions
// compute ids from the content, so tests always speak in node ids.
type node struct {
	id       string
	sender   string
	typ      string
	stateKey *string
	content  string // JSON object
	ts       int64  // 0: the next value of the DAG's clock
}

func sk(s string) *string { return &s }

func state(id, sender, typ, stateKey, content string) node {
	return node{id: id, sender: sender, typ: typ, stateKey: sk(stateKey), content: content}
}

func member(id, sender, target, membership string) node {
	return state(id, sender, "m.room.member", target, `{"membership":"`+membership+`"}`)
}

func message(id, sender string) node {
	return node{id: id, sender: sender, typ: "m.room.message", content: `{}`}
}

// initialNodes start every golden DAG, chained START → IMZ → … → CREATE:
// alice creates a public room with users {alice: 100}, and bob, charlie and
// zara join. These are the initial events of Synapse's and Dendrite's state
// resolution tests, rebuilt here from their description.
func initialNodes(rv *events.RoomVersion) []node {
	create := `{"room_version":"` + rv.ID + `"}`
	if !rv.ImplicitRoomCreator {
		create = `{"creator":"` + alice + `"}`
	}
	pl := `{"users":{"` + alice + `":100}}`
	if rv.PrivilegedCreators {
		pl = `{"users":{}}`
	}
	return []node{
		state("CREATE", alice, "m.room.create", "", create),
		member("IMA", alice, alice, "join"),
		state("IPOWER", alice, "m.room.power_levels", "", pl),
		state("IJR", alice, "m.room.join_rules", "", `{"join_rule":"public"}`),
		member("IMB", bob, bob, "join"),
		member("IMC", charlie, charlie, "join"),
		member("IMZ", zara, zara, "join"),
		message("START", zara),
		message("END", zara),
	}
}

var initialEdges = []string{"START", "IMZ", "IMC", "IMB", "IJR", "IPOWER", "IMA", "CREATE"}

// dag is a room built from nodes and prev_event edges the way a server
// would build it: in topological order, each event's state before it being
// the resolution (with the algorithm under test) of the states after its
// prev_events, and its auth_events chosen from that state by the auth
// events selection rules.
type dag struct {
	tb      testing.TB
	rv      *events.RoomVersion
	roomID  string
	f       *memFetcher
	ev      map[string]*events.Event // by node id
	stateAt map[string]map[stateres.StateKey]string
	clock   int64
}

// chains: each inner list is a path of prev_event edges, [A, B, C] meaning
// A's prev_events include B and B's include C.
func buildDAG(tb testing.TB, rv *events.RoomVersion, nodes []node, chains [][]string) *dag {
	tb.Helper()
	d := &dag{tb: tb, rv: rv, roomID: "!room:example.com", f: newMemFetcher(),
		ev: map[string]*events.Event{}, stateAt: map[string]map[stateres.StateKey]string{}}
	byID := map[string]node{}
	prevs := map[string][]string{}
	for _, n := range nodes {
		if _, dup := byID[n.id]; dup {
			tb.Fatalf("node %s twice", n.id)
		}
		byID[n.id] = n
		prevs[n.id] = nil
	}
	for _, chain := range chains {
		for i := 0; i+1 < len(chain); i++ {
			if _, ok := byID[chain[i]]; !ok {
				tb.Fatalf("edge from unknown node %s", chain[i])
			}
			if !slices.Contains(prevs[chain[i]], chain[i+1]) {
				prevs[chain[i]] = append(prevs[chain[i]], chain[i+1])
			}
		}
	}
	for _, id := range topoOrder(tb, prevs) {
		d.add(byID[id], prevs[id])
	}
	return d
}

// topoOrder orders nodes parents first, ties by node id.
func topoOrder(tb testing.TB, prevs map[string][]string) []string {
	tb.Helper()
	pending := map[string]int{}
	children := map[string][]string{}
	for n, ps := range prevs {
		pending[n] = len(ps)
		for _, p := range ps {
			children[p] = append(children[p], n)
		}
	}
	var ready, out []string
	for n, c := range pending {
		if c == 0 {
			ready = append(ready, n)
		}
	}
	for len(ready) > 0 {
		sort.Strings(ready)
		n := ready[0]
		ready = ready[1:]
		out = append(out, n)
		for _, c := range children[n] {
			pending[c]--
			if pending[c] == 0 {
				ready = append(ready, c)
			}
		}
	}
	if len(out) != len(prevs) {
		tb.Fatalf("test DAG has a cycle")
	}
	return out
}

func (d *dag) add(n node, prevNodes []string) {
	tb := d.tb
	tb.Helper()
	slices.Sort(prevNodes)
	var before map[stateres.StateKey]string
	switch len(prevNodes) {
	case 0:
		before = map[stateres.StateKey]string{}
	case 1:
		before = copyState(d.stateAt[prevNodes[0]])
	default:
		sets := make([]map[stateres.StateKey]string, len(prevNodes))
		for i, p := range prevNodes {
			sets[i] = d.stateAt[p]
		}
		var err error
		if before, err = stateres.Resolve(context.Background(), d.rv, sets, d.f); err != nil {
			tb.Fatalf("resolve state before %s: %v", n.id, err)
		}
	}
	var auth []string
	for _, k := range eventauth.AuthEventsNeeded(n.typ, n.stateKey, n.sender, json.RawMessage(n.content), d.rv) {
		if id, ok := before[k]; ok {
			auth = append(auth, id)
		}
	}
	var prev []string
	var depth int64
	for _, p := range prevNodes {
		prev = append(prev, d.ev[p].EventID())
		depth = max(depth, d.ev[p].Depth())
	}
	ts := n.ts
	if ts == 0 {
		d.clock++
		ts = d.clock
	}
	ev := d.build(n, prev, auth, depth+1, ts)
	if _, dup := d.f.evs[ev.EventID()]; dup {
		tb.Fatalf("node %s has the event id of node %s: make them differ in more than redactable content", n.id, d.node(ev.EventID()))
	}
	d.ev[n.id] = ev
	d.f.evs[ev.EventID()] = ev
	after := before
	if ev.IsState() {
		after = copyState(before)
		after[stateres.StateKey{Type: ev.Type(), StateKey: *ev.StateKey()}] = ev.EventID()
	}
	d.stateAt[n.id] = after
}

// build makes the PDU of node n (hashes and signatures are not needed: the
// auth rules and state resolution do not look at them).
func (d *dag) build(n node, prev, auth []string, depth, ts int64) *events.Event {
	tb := d.tb
	tb.Helper()
	m := map[string]any{
		"sender": n.sender, "type": n.typ, "content": json.RawMessage(n.content),
		"depth": depth, "origin_server_ts": ts,
		"hashes": map[string]string{"sha256": "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU"}, "signatures": map[string]any{},
	}
	if !(d.rv.RoomIDFromCreate && n.typ == "m.room.create") {
		m["room_id"] = d.roomID
	}
	if n.stateKey != nil {
		m["state_key"] = *n.stateKey
	}
	refs := func(ids []string) any {
		if d.rv.Format != events.FormatV1 {
			if ids == nil {
				return []string{}
			}
			return ids
		}
		out := []any{}
		for _, id := range ids {
			out = append(out, []any{id, map[string]any{}})
		}
		return out
	}
	m["prev_events"], m["auth_events"] = refs(prev), refs(auth)
	if d.rv.Format == events.FormatV1 {
		m["event_id"] = "$" + n.id + ":example.com"
	}
	raw, err := json.Marshal(m)
	if err != nil {
		tb.Fatal(err)
	}
	ev, err := events.Parse(raw, d.rv)
	if err != nil {
		tb.Fatalf("parse node %s: %v", n.id, err)
	}
	if d.rv.RoomIDFromCreate && n.typ == "m.room.create" {
		d.roomID = ev.RoomID()
	}
	return ev
}

func copyState(m map[stateres.StateKey]string) map[stateres.StateKey]string {
	out := make(map[stateres.StateKey]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// node returns the node id of an event id of the DAG.
func (d *dag) node(eventID string) string {
	for n, ev := range d.ev {
		if ev.EventID() == eventID {
			return n
		}
	}
	return "?" + eventID
}

// describe renders a state as "type/state_key=NODE" lines, sorted.
func (d *dag) describe(s map[stateres.StateKey]string) string {
	var lines []string
	for k, v := range s {
		lines = append(lines, fmt.Sprintf("%s/%s=%s", k.Type, k.StateKey, d.node(v)))
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// checkEnd asserts the state at END: for each expected node its key holds
// it, and every other key that changed since START is among the expected
// (the golden tests' convention, so that they name only what the conflict
// is about).
func (d *dag) checkEnd(expected ...string) {
	tb := d.tb
	tb.Helper()
	want := map[stateres.StateKey]string{}
	for _, n := range expected {
		ev := d.ev[n]
		if ev == nil {
			tb.Fatalf("no node %s", n)
		}
		want[stateres.StateKey{Type: ev.Type(), StateKey: *ev.StateKey()}] = ev.EventID()
	}
	start, end := d.stateAt["START"], d.stateAt["END"]
	got := map[stateres.StateKey]string{}
	for k, v := range end {
		if _, ok := want[k]; ok || start[k] != v {
			got[k] = v
		}
	}
	for k := range start {
		if _, ok := end[k]; !ok {
			got[k] = "(removed)"
		}
	}
	if d.describe(got) != d.describe(want) {
		tb.Errorf("room version %s: state at END (changes since START):\n%s\nwant:\n%s", d.rv.ID, d.describe(got), d.describe(want))
	}
}

// resolve resolves the states after the given nodes.
func (d *dag) resolve(nodes ...string) map[stateres.StateKey]string {
	tb := d.tb
	tb.Helper()
	var sets []map[stateres.StateKey]string
	for _, n := range nodes {
		sets = append(sets, d.stateAt[n])
	}
	out, err := stateres.Resolve(context.Background(), d.rv, sets, d.f)
	if err != nil {
		tb.Fatalf("resolve: %v", err)
	}
	return out
}

// stateOf is the state after nodes applied, in order, to the state at base:
// for hand-made state sets that no single DAG node has.
func (d *dag) stateOf(base string, nodes ...string) map[stateres.StateKey]string {
	s := copyState(d.stateAt[base])
	for _, n := range nodes {
		ev := d.ev[n]
		s[stateres.StateKey{Type: ev.Type(), StateKey: *ev.StateKey()}] = ev.EventID()
	}
	return s
}

func (d *dag) key(n string) stateres.StateKey {
	ev := d.ev[n]
	return stateres.StateKey{Type: ev.Type(), StateKey: *ev.StateKey()}
}

// resolveSets resolves hand-made state sets with the DAG's events.
func (d *dag) resolveSets(sets ...map[stateres.StateKey]string) map[stateres.StateKey]string {
	tb := d.tb
	tb.Helper()
	out, err := stateres.Resolve(context.Background(), d.rv, sets, d.f)
	if err != nil {
		tb.Fatalf("resolve: %v", err)
	}
	return out
}
