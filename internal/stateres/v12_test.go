package stateres_test

import (
	"strings"
	"testing"

	"ganglion/internal/events"
)

// v12Nodes are the initial events of a room version 12 room: the create
// event has no room_id (the room id is its hash) and lists charlie as an
// additional creator; alice, the sender, is the creator; the power levels
// event may not list either of them.
func v12Nodes() []node {
	return []node{
		state("CREATE", alice, "m.room.create", "", `{"room_version":"12","additional_creators":["`+charlie+`"]}`),
		member("IMA", alice, alice, "join"),
		state("IPOWER", alice, "m.room.power_levels", "", `{"users":{}}`),
		state("IJR", alice, "m.room.join_rules", "", `{"join_rule":"public"}`),
		member("IMB", bob, bob, "join"),
		member("IMC", charlie, charlie, "join"),
		member("IMZ", zara, zara, "join"),
		message("START", zara),
		message("END", zara),
	}
}

// TestResolveV12Room resolves conflicts in a real room version 12 DAG: its
// events do not list the create event among their auth events, so v2.1's
// auth checks from an empty state work only if resolution supplies the
// create event from the room id; and creators outrank every power level.
func TestResolveV12Room(t *testing.T) {
	rv := roomVersion(t, "12")
	for _, tc := range []struct {
		name     string
		nodes    []node
		chains   [][]string
		expected []string
	}{
		{
			name: "ban vs power levels",
			nodes: []node{
				state("PA", alice, "m.room.power_levels", "", `{"users":{"`+bob+`":50}}`),
				member("MB", alice, bob, "ban"),
				state("PB", bob, "m.room.power_levels", "", `{"users":{"`+bob+`":50,"`+zara+`":10}}`),
			},
			chains:   [][]string{{"END", "MB", "PA", "START"}, {"END", "PB", "PA"}},
			expected: []string{"PA", "MB"},
		},
		{
			// Bob has 100, the most a power levels event can give, and bans
			// charlie while charlie kicks bob: charlie is an additional
			// creator, so his kick stands and bob's ban fails.
			name: "additional creator outranks 100",
			nodes: []node{
				state("PA", alice, "m.room.power_levels", "", `{"users":{"`+bob+`":100}}`),
				member("KB", charlie, bob, "leave"),
				member("BC", bob, charlie, "ban"),
			},
			chains:   [][]string{{"END", "KB", "PA", "START"}, {"END", "BC", "PA"}},
			expected: []string{"PA", "KB"},
		},
		{
			// A power levels event listing a creator is refused in v12.
			name: "power levels may not list a creator",
			nodes: []node{
				state("PX", alice, "m.room.power_levels", "", `{"users":{"`+alice+`":100}}`),
				state("T", alice, "m.room.topic", "", `{"topic":"t"}`),
			},
			chains:   [][]string{{"END", "PX", "START"}, {"END", "T", "START"}},
			expected: []string{"T"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := buildDAG(t, rv, append(v12Nodes(), tc.nodes...), append([][]string{initialEdges}, tc.chains...))
			create := d.ev["CREATE"]
			if !create.HasImpliedRoomID() || d.roomID != "!"+strings.TrimPrefix(create.EventID(), "$") {
				t.Fatalf("room id %s is not the create event %s's hash", d.roomID, create.EventID())
			}
			for n, ev := range d.ev {
				for _, a := range ev.AuthEventIDs() {
					if a == create.EventID() {
						t.Fatalf("%s lists the create event among its auth events", n)
					}
				}
			}
			d.checkEnd(tc.expected...)
		})
	}
}

// TestResolveV12UsesV21: room version 12 resolves with v2.1, so the case
// where v2 and v2.1 differ comes out v2.1's way in a real v12 room.
func TestResolveV12UsesV21(t *testing.T) {
	rv := roomVersion(t, "12")
	if rv.StateRes != events.StateResV21 {
		t.Fatalf("room version 12 uses state resolution %d", rv.StateRes)
	}
	d := buildDAG(t, rv, append(v12Nodes(),
		state("PA", alice, "m.room.power_levels", "", `{"users":{"`+bob+`":50}}`),
		member("BANB", alice, bob, "ban"),
		state("JRB", bob, "m.room.join_rules", "", `{"join_rule":"invite"}`),
	), [][]string{initialEdges, {"BANB", "PA", "START"}, {"JRB", "PA"}})
	got := d.resolveSets(d.stateOf("PA", "BANB"), d.stateOf("PA", "BANB", "JRB"))
	if n := d.node(got[d.key("IJR")]); n != "JRB" {
		t.Errorf("join rules %s, want JRB", n)
	}
}
