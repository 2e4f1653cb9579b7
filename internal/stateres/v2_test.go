package stateres_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"

	"ganglion/internal/events"
	"ganglion/internal/stateres"
)

// withInitial prepends the initial events and their chain.
func withInitial(rv *events.RoomVersion, nodes []node, chains ...[]string) ([]node, [][]string) {
	return append(initialNodes(rv), nodes...), append([][]string{initialEdges}, chains...)
}

// v2Versions are the room versions the algorithm tests run in: v2 with
// readable ids and with hash ids, and v2.1.
func v2Versions(t *testing.T) []*events.RoomVersion {
	return []*events.RoomVersion{roomVersion(t, "2"), roomVersion(t, "11"), v21Format2(t)}
}

// TestResolveBanBeatsConcurrentJoin is a membership conflict: evelyn joins
// the public room on one branch while alice bans her on another. The ban is
// a power event, applied first; the join is then checked against a state in
// which evelyn is banned and refused.
func TestResolveBanBeatsConcurrentJoin(t *testing.T) {
	for _, rv := range v2Versions(t) {
		nodes, chains := withInitial(rv, []node{
			member("BE", alice, evelyn, "ban"),
			member("JE", evelyn, evelyn, "join"),
		}, []string{"END", "BE", "START"}, []string{"END", "JE", "START"})
		buildDAG(t, rv, nodes, chains).checkEnd("BE")
	}
}

// TestResolveKickVsPowerLevels: bob, a moderator, kicks charlie while alice
// concurrently demotes bob. Alice's power levels event sorts first (higher
// power), so bob's kick is checked against a state where he is powerless.
func TestResolveKickVsPowerLevels(t *testing.T) {
	for _, rv := range v2Versions(t) {
		nodes, chains := withInitial(rv, []node{
			state("PA", alice, "m.room.power_levels", "", `{"users":{"`+alice+`":100,"`+bob+`":50}}`),
			state("PA2", alice, "m.room.power_levels", "", `{"users":{"`+alice+`":100,"`+bob+`":0}}`),
			member("KC", bob, charlie, "leave"),
		}, []string{"END", "PA2", "PA", "START"}, []string{"END", "KC", "PA"})
		buildDAG(t, rv, nodes, chains).checkEnd("PA2")
	}
}

// TestResolveMainlineTieBreaks: two topics authorised by the same power
// levels event have the same mainline position; the later origin_server_ts
// is applied last and wins, and with equal timestamps the greater event id.
func TestResolveMainlineTieBreaks(t *testing.T) {
	for _, rv := range v2Versions(t) {
		for _, tc := range []struct {
			tsA, tsB int64
			want     string // "" means the greater event id
		}{
			{tsA: 100, tsB: 200, want: "TB"},
			{tsA: 300, tsB: 200, want: "TA"},
			{tsA: 100, tsB: 100},
		} {
			ta := state("TA", alice, "m.room.topic", "", `{"topic":"a"}`)
			ta.ts = tc.tsA
			tb := state("TB", alice, "m.room.topic", "", `{"topic":"b"}`)
			tb.ts = tc.tsB
			// TB hangs off a message so that the two never have the same
			// event id: with hash ids, a topic's text is not part of it.
			nodes, chains := withInitial(rv, []node{ta, tb, message("M1", zara)},
				[]string{"END", "TA", "START"}, []string{"END", "TB", "M1", "START"})
			d := buildDAG(t, rv, nodes, chains)
			want := tc.want
			if want == "" {
				want = "TA"
				if d.ev["TB"].EventID() > d.ev["TA"].EventID() {
					want = "TB"
				}
			}
			d.checkEnd(want)
		}
	}
}

// TestMainlineOrderPositions checks the mainline sort directly: events are
// ordered by the position of the closest mainline power levels event, not
// by timestamp; an event that reaches no mainline event sorts first.
func TestMainlineOrderPositions(t *testing.T) {
	rv := roomVersion(t, "11")
	pl := func(id string) node {
		return state(id, alice, "m.room.power_levels", "", `{"users":{"`+alice+`":100},"state_default":`+fmt.Sprint(40+len(id))+`}`)
	}
	topic := func(id string, ts int64) node {
		n := state(id, alice, "m.room.topic", "", `{"topic":"`+id+`"}`)
		n.ts = ts
		return n
	}
	// Mainline P1 ← P2 ← P3. T3 (oldest timestamp) hangs off P3, T1 off P1,
	// T2 off P2, and TX off a power levels event outside the mainline whose
	// own parent is P1.
	nodes, chains := withInitial(rv, []node{
		pl("P1"), pl("P2"), pl("P3"), pl("PX"),
		topic("T1", 9000), topic("T2", 8000), topic("T3", 10), topic("TX", 7000),
	},
		[]string{"P3", "P2", "P1", "START"},
		[]string{"T3", "P3"}, []string{"T2", "P2"}, []string{"T1", "P1"},
		[]string{"TX", "PX", "P1"},
	)
	d := buildDAG(t, rv, nodes, chains)
	ids := []string{d.ev["T3"].EventID(), d.ev["TX"].EventID(), d.ev["T2"].EventID(), d.ev["T1"].EventID()}
	got, err := stateres.MainlineOrder(context.Background(), d.f, d.ev["P3"].EventID(), ids)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, id := range got {
		names = append(names, d.node(id))
	}
	// IPOWER is the mainline's root, so every topic reaches it at least.
	// T1 and TX both reach P1 (position 2): the timestamp decides.
	if want := []string{"TX", "T1", "T2", "T3"}; !slices.Equal(names, want) {
		t.Errorf("mainline order %v, want %v", names, want)
	}
}

// TestPowerOrderTieBreaks checks the reverse topological power ordering:
// among events with no auth edge between them, the sender's power level
// (descending), then origin_server_ts, then event id; an auth edge beats all
// of them.
func TestPowerOrderTieBreaks(t *testing.T) {
	for _, rv := range []*events.RoomVersion{roomVersion(t, "2"), roomVersion(t, "11")} {
		at := func(n node, ts int64) node { n.ts = ts; return n }
		nodes, chains := withInitial(rv, []node{
			state("PA", alice, "m.room.power_levels", "", `{"users":{"`+alice+`":100,"`+bob+`":50,"`+charlie+`":50}}`),
			at(state("JA", alice, "m.room.join_rules", "", `{"join_rule":"invite"}`), 900),
			at(state("JB", bob, "m.room.join_rules", "", `{"join_rule":"invite"}`), 500),
			at(state("JC", charlie, "m.room.join_rules", "", `{"join_rule":"knock"}`), 500),
			at(member("KZ", bob, zara, "leave"), 300),
			// Bob rewrites the power levels, then alice kicks charlie under
			// them: the kick's auth events include PB, so PB comes first
			// although alice outranks bob.
			at(state("PB", bob, "m.room.power_levels", "", `{"users":{"`+alice+`":100,"`+bob+`":50,"`+charlie+`":40}}`), 950),
			at(member("KC", alice, charlie, "leave"), 960),
		},
			[]string{"PA", "START"},
			[]string{"JA", "PA"}, []string{"JB", "PA"}, []string{"JC", "PA"}, []string{"KZ", "PA"},
			[]string{"KC", "PB", "PA"},
		)
		d := buildDAG(t, rv, nodes, chains)
		var ids []string
		for _, n := range []string{"JC", "KC", "JB", "PB", "KZ", "JA"} {
			ids = append(ids, d.ev[n].EventID())
		}
		got, err := stateres.PowerOrder(context.Background(), rv, d.f, ids)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, id := range got {
			names = append(names, d.node(id))
		}
		// JB and JC tie on power and timestamp: the smaller event id first.
		jbjc := []string{"JB", "JC"}
		if d.ev["JC"].EventID() < d.ev["JB"].EventID() {
			jbjc = []string{"JC", "JB"}
		}
		want := append([]string{"JA", "KZ"}, jbjc...)
		want = append(want, "PB", "KC")
		if !slices.Equal(names, want) {
			t.Errorf("room version %s: power order %v, want %v", rv.ID, names, want)
		}
	}
}

// TestResolveV21StartsFromEmptyState is a case where v2 and v2.1 differ.
// Both states agree that bob is banned (so the ban is unconflicted), but one
// of them accepted bob's join rules change, made before the ban. v2 checks
// the conflicted join rules against the unconflicted state, in which bob is
// banned, and drops his change; v2.1 checks them from an empty state, only
// against their own auth events, and keeps it (the ban is then re-applied
// with the rest of the unconflicted state).
func TestResolveV21StartsFromEmptyState(t *testing.T) {
	for _, tc := range []struct {
		rv   *events.RoomVersion
		want string
	}{
		{roomVersion(t, "2"), "IJR"},
		{roomVersion(t, "11"), "IJR"},
		{v21Format2(t), "JRB"},
	} {
		nodes, chains := withInitial(tc.rv, []node{
			state("PA", alice, "m.room.power_levels", "", `{"users":{"`+alice+`":100,"`+bob+`":50}}`),
			member("BANB", alice, bob, "ban"),
			state("JRB", bob, "m.room.join_rules", "", `{"join_rule":"invite"}`),
		}, []string{"BANB", "PA", "START"}, []string{"JRB", "PA"})
		d := buildDAG(t, tc.rv, nodes, chains)
		sets := []map[stateres.StateKey]string{d.stateOf("PA", "BANB"), d.stateOf("PA", "BANB", "JRB")}
		got, err := stateres.Resolve(context.Background(), tc.rv, sets, d.f)
		if err != nil {
			t.Fatal(err)
		}
		if n := d.node(got[d.key("IJR")]); n != tc.want {
			t.Errorf("room version %s: join rules %s, want %s", tc.rv.ID, n, tc.want)
		}
		if n := d.node(got[d.key("BANB")]); n != "BANB" {
			t.Errorf("room version %s: bob's membership %s, want the unconflicted BANB", tc.rv.ID, n)
		}
	}
}

// TestConflictedSubgraph: bob's membership MB2 (a displayname change) is
// unconflicted and lies on the auth path from one conflicted power levels
// event (PB, sent by bob) to the other (PA, which MB2 was authorised by).
// v2's full conflicted set leaves it out (it is in every state's auth
// chain); v2.1's conflicted state subgraph brings it in.
func TestConflictedSubgraph(t *testing.T) {
	rv := roomVersion(t, "2")
	nodes, chains := withInitial(rv, []node{
		state("PA", alice, "m.room.power_levels", "", `{"users":{"`+alice+`":100,"`+bob+`":50}}`),
		state("MB2", bob, "m.room.member", bob, `{"membership":"join","displayname":"Bob"}`),
		state("PB", bob, "m.room.power_levels", "", `{"users":{"`+alice+`":100,"`+bob+`":50,"`+charlie+`":10}}`),
	}, []string{"PB", "MB2", "PA", "START"})
	d := buildDAG(t, rv, nodes, chains)
	sets := []map[stateres.StateKey]string{d.stateAt["MB2"], d.stateAt["PB"]}
	for _, tc := range []struct {
		v21  bool
		want []string
	}{
		{false, []string{"PA", "PB"}},
		{true, []string{"MB2", "PA", "PB"}},
	} {
		ids, err := stateres.FullConflictedSet(context.Background(), d.f, sets, tc.v21)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, id := range ids {
			names = append(names, d.node(id))
		}
		slices.Sort(names)
		if !slices.Equal(names, tc.want) {
			t.Errorf("v2.1=%v: full conflicted set %v, want %v", tc.v21, names, tc.want)
		}
	}
	// Both algorithms still agree on the outcome here: bob's change stands.
	for _, rv := range []*events.RoomVersion{rv, v21Format2(t)} {
		d := buildDAG(t, rv, nodes, chains)
		got, err := stateres.Resolve(context.Background(), rv, []map[stateres.StateKey]string{d.stateAt["MB2"], d.stateAt["PB"]}, d.f)
		if err != nil {
			t.Fatal(err)
		}
		if n := d.node(got[d.key("PB")]); n != "PB" {
			t.Errorf("room version %s: power levels %s, want PB", rv.ID, n)
		}
	}
}

// TestResolveTrivialInputs: no state sets, one, and sets without conflicts
// need no events at all; a conflicted event the fetcher lacks is an error.
func TestResolveTrivialInputs(t *testing.T) {
	ctx := context.Background()
	k := stateres.StateKey{Type: "m.room.topic"}
	for _, v := range []string{"1", "2", "11", "12"} {
		rv := roomVersion(t, v)
		empty := newMemFetcher()
		if got, err := stateres.Resolve(ctx, rv, nil, empty); err != nil || len(got) != 0 {
			t.Errorf("v%s: no sets: %v, %v", v, got, err)
		}
		one := map[stateres.StateKey]string{k: "$a"}
		got, err := stateres.Resolve(ctx, rv, []map[stateres.StateKey]string{one}, empty)
		if err != nil || got[k] != "$a" {
			t.Errorf("v%s: one set: %v, %v", v, got, err)
		}
		got[k] = "$changed"
		if one[k] != "$a" {
			t.Errorf("v%s: Resolve returned its input map", v)
		}
		if got, err := stateres.Resolve(ctx, rv, []map[stateres.StateKey]string{one, {k: "$a"}}, empty); err != nil || got[k] != "$a" {
			t.Errorf("v%s: agreeing sets: %v, %v", v, got, err)
		}
		_, err = stateres.Resolve(ctx, rv, []map[stateres.StateKey]string{one, {k: "$b"}}, empty)
		if !errors.Is(err, stateres.ErrMissingEvent) {
			t.Errorf("v%s: unknown conflicted events: err %v, want ErrMissingEvent", v, err)
		}
		if empty.eventsCalls > 2 {
			t.Errorf("v%s: %d fetches for trivial inputs", v, empty.eventsCalls)
		}
	}
}

// TestResolveLargeRoomBatchesFetches: a room with a thousand members and a
// conflict over the power levels and the topic is resolved with a bounded
// number of fetches, independent of the number of members.
func TestResolveLargeRoomBatchesFetches(t *testing.T) {
	for _, rv := range []*events.RoomVersion{roomVersion(t, "11"), v21Format2(t)} {
		var extra []node
		chain := []string{"PA"}
		for i := 0; i < 1000; i++ {
			id := fmt.Sprintf("M%04d", i)
			u := fmt.Sprintf("@u%04d:example.com", i)
			extra = append(extra, member(id, u, u, "join"))
			chain = append(chain, id)
		}
		chain = append(chain, "START")
		slices.Reverse(chain[1 : len(chain)-1])
		extra = append(extra,
			state("PA", alice, "m.room.power_levels", "", `{"users":{"`+alice+`":100,"`+bob+`":50}}`),
			state("PB", bob, "m.room.power_levels", "", `{"users":{"`+alice+`":100,"`+bob+`":50,"`+charlie+`":20}}`),
			state("T1", bob, "m.room.topic", "", `{"topic":"1"}`),
			state("T2", alice, "m.room.topic", "", `{"topic":"2"}`),
		)
		// Build the member chain only once, linearly (no resolution per step).
		nodes, chains := withInitial(rv, extra, chain, []string{"T1", "PB", "PA"}, []string{"T2", "PA"})
		d := buildDAG(t, rv, nodes, chains)
		d.f.eventsCalls = 0
		got := d.resolve("T1", "T2")
		if d.f.eventsCalls > 12 {
			t.Errorf("room version %s: %d Events calls for one resolution", rv.ID, d.f.eventsCalls)
		}
		if len(got) < 1000 {
			t.Errorf("room version %s: resolved state has %d entries", rv.ID, len(got))
		}
		// Bob's PB and alice's T2 are concurrent: T2 is authorised by PA,
		// T1 by PB, and PB is resolved (nothing overrides it), so T1 has the
		// later mainline position and wins.
		if n := d.node(got[d.key("T1")]); n != "T1" {
			t.Errorf("room version %s: topic %s, want T1", rv.ID, n)
		}
		if n := d.node(got[d.key("PB")]); n != "PB" {
			t.Errorf("room version %s: power levels %s, want PB", rv.ID, n)
		}
	}
}

// TestPowerOrderLexicographical is the lexicographical topological sort
// case of Synapse's suite: with equal power and timestamps only the event
// ids break ties, and an event still waits for its auth events. Graph
// (event → its auth events): l→o, m→{n,o}, n→o, p→o.
func TestPowerOrderLexicographical(t *testing.T) {
	rv := roomVersion(t, "2")
	d := &dag{tb: t, rv: rv, roomID: "!room:example.com", f: newMemFetcher(), ev: map[string]*events.Event{}}
	id := func(n string) string { return "$" + n + ":example.com" }
	for n, auth := range map[string][]string{"o": nil, "l": {"o"}, "m": {"n", "o"}, "n": {"o"}, "p": {"o"}} {
		var ids []string
		for _, a := range auth {
			ids = append(ids, id(a))
		}
		ev := d.build(state(n, alice, "m.room.join_rules", "", `{"join_rule":"public"}`), nil, ids, 1, 42)
		d.ev[n] = ev
		d.f.evs[ev.EventID()] = ev
	}
	got, err := stateres.PowerOrder(context.Background(), rv, d.f, []string{id("p"), id("n"), id("m"), id("l"), id("o")})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{id("o"), id("l"), id("n"), id("m"), id("p")}
	if !slices.Equal(got, want) {
		t.Errorf("order %v, want %v", got, want)
	}
}
