package stateres_test

import (
	"context"
	"fmt"
	"testing"

	"ganglion/internal/events"
	"ganglion/internal/stateres"
)

// BenchmarkResolveLargeRoom resolves a power levels, join rules and topic
// conflict in a room with 2,000 members: the shape of a partition heal in a
// big room. It reports allocations, the cost that grows with the room.
func BenchmarkResolveLargeRoom(b *testing.B) {
	for _, rv := range []*events.RoomVersion{roomVersion(b, "11"), roomVersion(b, "12")} {
		b.Run("v"+rv.ID, func(b *testing.B) {
			base := initialNodes(rv)
			if rv.RoomIDFromCreate {
				base = v12Nodes()
			}
			admin := `"` + alice + `":100,`
			if rv.PrivilegedCreators {
				admin = ""
			}
			var extra []node
			chain := []string{"PA"}
			for i := 1999; i >= 0; i-- {
				id := fmt.Sprintf("M%04d", i)
				u := fmt.Sprintf("@u%04d:example.com", i)
				extra = append(extra, member(id, u, u, "join"))
				chain = append(chain, id)
			}
			chain = append(chain, "START")
			extra = append(extra,
				state("PA", alice, "m.room.power_levels", "", `{"users":{`+admin+`"`+bob+`":50}}`),
				state("PB", bob, "m.room.power_levels", "", `{"users":{`+admin+`"`+bob+`":50,"`+charlie+`":20}}`),
				state("JB", bob, "m.room.join_rules", "", `{"join_rule":"invite"}`),
				state("T1", bob, "m.room.topic", "", `{"topic":"1"}`),
				state("T2", alice, "m.room.topic", "", `{"topic":"2"}`),
				member("KB", alice, "@u0001:example.com", "leave"),
			)
			d := buildDAG(b, rv, append(base, extra...), [][]string{initialEdges, chain, {"T1", "JB", "PB", "PA"}, {"T2", "KB", "PA"}})
			sets := []map[stateres.StateKey]string{d.stateAt["T1"], d.stateAt["T2"]}
			ctx := context.Background()
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := stateres.Resolve(ctx, rv, sets, d.f); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
