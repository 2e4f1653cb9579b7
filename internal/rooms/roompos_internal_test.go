package rooms

import (
	"testing"

	"ganglion/internal/config"
	"ganglion/internal/streams"
)

// TestRoomPositionReadsTheRoomsPersister: a sync token given as /members'
// at or /messages' from is read at the room's persister's part of the
// events vector (not the minimum, which can be before the room existed);
// pagination tokens and plain sync tokens keep working; garbage is refused.
func TestRoomPositionReadsTheRoomsPersister(t *testing.T) {
	writers := []string{"persister1", "persister2"}
	reg, err := streams.NewRegistry("worker1", streams.AllDefs(), map[streams.Name][]string{streams.Events: writers}, streams.NewNotifier())
	if err != nil {
		t.Fatal(err)
	}
	reg.SetInstanceIDs(map[string]int{"persister1": 1, "persister2": 2})
	s := &Service{reg: reg}
	// One room on each persister.
	rooms := map[string]string{}
	for i := 0; len(rooms) < 2; i++ {
		id := "!r" + string(rune('a'+i)) + ":test"
		if p := config.ShardFor(writers, id); rooms[p] == "" {
			rooms[p] = id
		}
	}
	vector := "m10~1.15~2.20_3_0_0_0_0_0_0"
	for _, c := range []struct {
		room, tok string
		want      int64
	}{
		{rooms["persister1"], vector, 15},
		{rooms["persister2"], vector, 20},
		{rooms["persister1"], "m10~2.20_3_0", 10}, // persister1 at the minimum
		{rooms["persister2"], "s12_3_0_0_0_0_0_0", 12},
		{rooms["persister1"], "s7", 7},
		{rooms["persister1"], "t3-9", 9},
	} {
		got, err := s.roomPosition(c.room, c.tok)
		if err != nil || got != c.want {
			t.Errorf("roomPosition(%s on %s, %q) = %d, %v; want %d", c.room, config.ShardFor(writers, c.room), c.tok, got, err, c.want)
		}
	}
	for _, bad := range []string{"m10~9.15_0", "m10~x_0", "sx_1", "q5", "t5", ""} {
		if _, err := s.roomPosition(rooms["persister1"], bad); err == nil {
			t.Errorf("roomPosition(%q) accepted a bad token", bad)
		}
	}
}
