package stateres_test

import (
	"testing"

	"ganglion/internal/events"
)

// goldenCase is a DAG hanging off the initial events and the state expected
// at END. These are the cases of Synapse's and Dendrite's state resolution
// suites (tests/state/test_v2.py and gomatrixserverlib's stateresolutionv2
// tests), rebuilt from their description.
type goldenCase struct {
	name     string
	nodes    []node
	chains   [][]string
	expected []string
}

func goldenCases() []goldenCase {
	pl := func(id, sender, users string) node {
		return state(id, sender, "m.room.power_levels", "", `{"users":{`+users+`}}`)
	}
	topic := func(id, sender string) node { return state(id, sender, "m.room.topic", "", `{}`) }
	return []goldenCase{
		{
			// Alice bans bob on one branch while bob, still a moderator on the
			// other, rewrites the power levels: the ban is applied before
			// bob's change, which then fails.
			name: "ban vs power levels",
			nodes: []node{
				pl("PA", alice, `"`+alice+`":100,"`+bob+`":50`),
				member("MA", alice, alice, "join"),
				member("MB", alice, bob, "ban"),
				pl("PB", bob, `"`+alice+`":100,"`+bob+`":50`),
			},
			chains:   [][]string{{"END", "MB", "MA", "PA", "START"}, {"END", "PB", "PA"}},
			expected: []string{"PA", "MA", "MB"},
		},
		{
			// Evelyn joins the public room on one branch while alice makes
			// it private on the other: the join rules change wins and the
			// join is refused.
			name: "join rule evasion",
			nodes: []node{
				// "join_rules" (not "join_rule") as in the original: the
				// room then has no join rule, which means invite-only.
				state("JR", alice, "m.room.join_rules", "", `{"join_rules":"private"}`),
				member("ME", evelyn, evelyn, "join"),
			},
			chains:   [][]string{{"END", "JR", "START"}, {"END", "ME", "START"}},
			expected: []string{"JR"},
		},
		{
			// Charlie, given 50 by bob, lowers himself; alice's branch never
			// saw bob's or charlie's change. The latest valid change wins.
			name: "offtopic power levels",
			nodes: []node{
				pl("PA", alice, `"`+alice+`":100,"`+bob+`":50`),
				pl("PB", bob, `"`+alice+`":100,"`+bob+`":50,"`+charlie+`":50`),
				pl("PC", charlie, `"`+alice+`":100,"`+bob+`":50,"`+charlie+`":0`),
			},
			chains:   [][]string{{"END", "PC", "PB", "PA", "START"}, {"END", "PA"}},
			expected: []string{"PC"},
		},
		{
			// Alice demotes bob (PA2) while bob, on his branch, rewrites the
			// power levels and sets a topic: alice's demotion and her topic
			// win; bob's topic loses its authority.
			name: "topic basic",
			nodes: []node{
				topic("T1", alice),
				pl("PA1", alice, `"`+alice+`":100,"`+bob+`":50`),
				topic("T2", alice),
				pl("PA2", alice, `"`+alice+`":100,"`+bob+`":0`),
				pl("PB", bob, `"`+alice+`":100,"`+bob+`":50`),
				topic("T3", bob),
			},
			chains:   [][]string{{"END", "PA2", "T2", "PA1", "T1", "START"}, {"END", "T3", "PB", "PA1"}},
			expected: []string{"PA2", "T2"},
		},
		{
			// Bob sets a topic and is then banned; the other branch is still
			// at alice's first topic. The ban takes bob's topic with it: the
			// topic is reset to T1.
			name: "topic reset",
			nodes: []node{
				topic("T1", alice),
				pl("PA", alice, `"`+alice+`":100,"`+bob+`":50`),
				topic("T2", bob),
				member("MB", alice, bob, "ban"),
			},
			chains:   [][]string{{"END", "MB", "T2", "PA", "T1", "START"}, {"END", "T1"}},
			expected: []string{"T1", "MB", "PA"},
		},
		{
			// topic basic, then a merge (MZ1) and a later topic from alice
			// that wins by being after the merge.
			name: "topic",
			nodes: []node{
				topic("T1", alice),
				pl("PA1", alice, `"`+alice+`":100,"`+bob+`":50`),
				topic("T2", alice),
				pl("PA2", alice, `"`+alice+`":100,"`+bob+`":0`),
				pl("PB", bob, `"`+alice+`":100,"`+bob+`":50`),
				topic("T3", bob),
				message("MZ1", zara),
				topic("T4", alice),
			},
			chains: [][]string{
				{"END", "T4", "MZ1", "PA2", "T2", "PA1", "T1", "START"},
				{"END", "MZ1", "T3", "PB", "PA1"},
			},
			expected: []string{"T4", "PA2"},
		},
		{
			// Mainline ordering: T3 is authorised by the resolved power
			// levels (PA2) and T4 only by an older one (PB's parent PA1
			// ... PB itself loses to PA2), so T3 sorts later and wins even
			// though T4 was sent after it.
			name: "mainline sort",
			nodes: []node{
				topic("T1", alice),
				pl("PA1", alice, `"`+alice+`":100,"`+bob+`":50`),
				topic("T2", alice),
				state("PA2", alice, "m.room.power_levels", "",
					`{"users":{"`+alice+`":100,"`+bob+`":50},"events":{"m.room.power_levels":100}}`),
				pl("PB", bob, `"`+alice+`":100,"`+bob+`":50`),
				topic("T3", bob),
				topic("T4", alice),
			},
			chains: [][]string{
				{"END", "T3", "PA2", "T2", "PA1", "T1", "START"},
				{"END", "T4", "PB", "PA1"},
			},
			expected: []string{"T3", "PA2"},
		},
	}
}

// TestResolveV2Golden runs the golden DAGs with state resolution v2 in room
// version 2 (readable event ids) and in room versions 10 and 11 (ids that
// are hashes, so only the DAG decides), and with v2.1 over room version 2's
// formats: none of these cases is one where v2.1 differs.
func TestResolveV2Golden(t *testing.T) {
	for _, tc := range goldenCases() {
		t.Run(tc.name, func(t *testing.T) {
			for _, rv := range []*events.RoomVersion{roomVersion(t, "2"), roomVersion(t, "10"), roomVersion(t, "11"), v21Format2(t)} {
				nodes := append(initialNodes(rv), tc.nodes...)
				chains := append([][]string{initialEdges}, tc.chains...)
				buildDAG(t, rv, nodes, chains).checkEnd(tc.expected...)
			}
		})
	}
}
