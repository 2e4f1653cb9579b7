package stateres_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"testing"

	"ganglion/internal/events"
	"ganglion/internal/stateres"
)

// randomNode makes a random state event (or message) among a few users:
// power levels, join rules, memberships of every kind and topics, most of
// which the auth rules will refuse somewhere in the DAG.
func randomNode(rng *rand.Rand, id string) node {
	users := []string{alice, bob, charlie, zara, evelyn}
	user := func() string { return users[rng.IntN(len(users))] }
	levels := []int{0, 10, 50, 100}
	switch rng.IntN(6) {
	case 0:
		content := `{"users":{`
		for i, u := range users {
			if rng.IntN(2) == 0 {
				continue
			}
			if content[len(content)-1] != '{' {
				content += ","
			}
			content += fmt.Sprintf(`"%s":%d`, u, levels[(i+rng.IntN(4))%4])
		}
		content += fmt.Sprintf(`},"state_default":%d,"ban":%d}`, levels[rng.IntN(4)], levels[rng.IntN(4)])
		return state(id, user(), "m.room.power_levels", "", content)
	case 1:
		rules := []string{"public", "invite", "knock"}
		return state(id, user(), "m.room.join_rules", "", `{"join_rule":"`+rules[rng.IntN(3)]+`"}`)
	case 2, 3:
		ms := []string{"join", "leave", "ban", "invite", "knock"}
		target := user()
		if rng.IntN(2) == 0 {
			return member(id, target, target, ms[rng.IntN(len(ms))])
		}
		return member(id, user(), target, ms[rng.IntN(len(ms))])
	case 4:
		return state(id, user(), "m.room.topic", "", `{"topic":"`+id+`"}`)
	default:
		return message(id, user())
	}
}

// FuzzResolve builds random DAGs (resolving the state at every merge) and
// resolves random sets of their states. Properties: no panic, no error, and
// the result does not depend on the order of the state sets.
func FuzzResolve(f *testing.F) {
	for i := uint64(0); i < 12; i++ {
		f.Add(i*7919+1, uint8(i), uint8(10+i))
	}
	f.Fuzz(func(t *testing.T, seed uint64, version, size uint8) {
		versions := []*events.RoomVersion{roomVersion(t, "1"), roomVersion(t, "2"), roomVersion(t, "11"), v21Format2(t), roomVersion(t, "12")}
		rv := versions[int(version)%len(versions)]
		rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))

		var nodes []node
		initial := initialNodes(rv)
		if rv.RoomIDFromCreate {
			initial = v12Nodes()
		}
		for _, n := range initial {
			if n.id != "END" {
				nodes = append(nodes, n)
			}
		}
		chains := [][]string{initialEdges}
		tips := []string{"START"}
		all := []string{"START"}
		for i := 0; i < 4+int(size)%28; i++ {
			id := fmt.Sprintf("R%02d", i)
			nodes = append(nodes, randomNode(rng, id))
			// One or two prev events, mostly the current tips so that
			// branches form and merge.
			for p := 0; p < 1+rng.IntN(2); p++ {
				var prev string
				if rng.IntN(3) == 0 {
					prev = all[rng.IntN(len(all))]
				} else {
					prev = tips[rng.IntN(len(tips))]
				}
				chains = append(chains, []string{id, prev})
			}
			all = append(all, id)
			if rng.IntN(3) == 0 {
				tips = append(tips, id)
			} else {
				tips[rng.IntN(len(tips))] = id
			}
		}
		d := buildDAG(t, rv, nodes, chains)

		k := 2 + rng.IntN(3)
		var sets []map[stateres.StateKey]string
		for i := 0; i < k; i++ {
			sets = append(sets, d.stateAt[all[rng.IntN(len(all))]])
		}
		var before []map[stateres.StateKey]string
		for _, s := range sets {
			before = append(before, maps.Clone(s))
		}
		want := d.resolveSets(sets...)
		for _, perm := range [][]map[stateres.StateKey]string{
			slices.Concat(sets[1:], sets[:1]),
			reversed(sets),
			append(slices.Clone(sets), sets[0]), // a repeated state changes nothing
		} {
			if got := d.resolveSets(perm...); !maps.Equal(got, want) {
				t.Fatalf("room version %s: resolution depends on the order of the state sets:\n%s\nvs\n%s", rv.ID, d.describe(got), d.describe(want))
			}
		}
		// Resolving does not modify its input.
		for i, s := range sets {
			if !maps.Equal(s, before[i]) {
				t.Fatalf("state set %d was modified", i)
			}
		}
		if _, err := stateres.Resolve(context.Background(), rv, sets, d.f); err != nil {
			t.Fatal(err)
		}
	})
}

func reversed[T any](s []T) []T {
	out := slices.Clone(s)
	slices.Reverse(out)
	return out
}

// FuzzResolveArbitraryGraph resolves state sets over events whose
// auth_events are arbitrary: cycles, self references, unknown ids, events
// of the wrong type. No valid room looks like this (event ids of room
// versions 1 and 2 are chosen by the sender, so cycles can be forged), but
// resolution must neither panic nor loop, must fail only with
// ErrMissingEvent, and must stay independent of the order of the sets.
func FuzzResolveArbitraryGraph(f *testing.F) {
	for i := uint64(0); i < 8; i++ {
		f.Add(i*104729+3, uint8(i))
	}
	f.Fuzz(func(t *testing.T, seed uint64, version uint8) {
		versions := []*events.RoomVersion{roomVersion(t, "1"), roomVersion(t, "2"), v21Format2(t)}
		rv := versions[int(version)%len(versions)]
		rng := rand.New(rand.NewPCG(seed, ^seed))
		d := &dag{tb: t, rv: rv, roomID: "!room:example.com", f: newMemFetcher(), ev: map[string]*events.Event{}}
		n := 3 + rng.IntN(20)
		ids := make([]string, n)
		for i := range ids {
			ids[i] = fmt.Sprintf("$E%02d:example.com", i)
		}
		for i := 0; i < n; i++ {
			var nd node
			if i == 0 {
				nd = state("E00", alice, "m.room.create", "", `{"creator":"`+alice+`"}`)
			} else {
				nd = randomNode(rng, fmt.Sprintf("E%02d", i))
			}
			var auth, prev []string
			for j := rng.IntN(5); j > 0; j-- {
				auth = append(auth, ids[rng.IntN(n)]) // may be itself, later, or repeated
			}
			if rng.IntN(4) == 0 {
				auth = append(auth, "$unknown:example.com")
			}
			ev := d.build(nd, prev, auth, int64(rng.IntN(5)), int64(rng.IntN(4)))
			d.ev[nd.id] = ev
			if rng.IntN(8) != 0 { // some events are unknown to the fetcher
				d.f.evs[ev.EventID()] = ev
			}
		}
		var sets []map[stateres.StateKey]string
		for s := 1 + rng.IntN(4); s > 0; s-- {
			m := map[stateres.StateKey]string{}
			for _, ev := range d.ev {
				if ev.IsState() && rng.IntN(2) == 0 {
					m[stateres.StateKey{Type: ev.Type(), StateKey: *ev.StateKey()}] = ev.EventID()
				}
			}
			sets = append(sets, m)
		}
		want, err := stateres.Resolve(context.Background(), rv, sets, d.f)
		if err != nil {
			if !errors.Is(err, stateres.ErrMissingEvent) {
				t.Fatalf("error %v, want nil or ErrMissingEvent", err)
			}
			return
		}
		got, err := stateres.Resolve(context.Background(), rv, reversed(sets), d.f)
		if err != nil || !maps.Equal(got, want) {
			t.Fatalf("room version %s: resolution depends on the order of the state sets (err %v)", rv.ID, err)
		}
	})
}
