package eventauth_test

import (
	"errors"
	"strconv"
	"testing"

	"ganglion/internal/eventauth"
	"ganglion/internal/events"
)

// FuzzCheck feeds arbitrary PDUs to the auth rules against a fixed room
// (the base room plus a pending third-party invite) in every room version.
// The property is only that nothing panics and every rejection is a
// *NotAllowedError: the table tests own correctness.
func FuzzCheck(f *testing.F) {
	type fixture struct {
		rv    *events.RoomVersion
		state eventauth.StateMap
		list  []*events.Event
	}
	var rooms []fixture
	for _, v := range allVersions() {
		r := newRoom(f, v, roomSetup{state: []string{tpiByBob, restrictedRoom}})
		list := make([]*events.Event, 0, len(r.state))
		for _, ev := range r.state {
			list = append(list, ev)
		}
		rooms = append(rooms, fixture{rv: r.rv, state: r.state, list: list})
	}
	// Seed with every table case, as the full PDU its room version parses.
	for _, tc := range checkCases() {
		for _, v := range tc.versions {
			r := newRoom(f, v, tc.setup)
			n, _ := strconv.Atoi(v)
			f.Add(r.event(f, tc.event).JSON(), uint8(n-1))
		}
	}

	f.Fuzz(func(t *testing.T, data []byte, version uint8) {
		room := rooms[int(version)%len(rooms)]
		ev, err := events.Parse(data, room.rv)
		if err != nil {
			return
		}
		for _, auth := range []eventauth.AuthEvents{room.state, nil, eventauth.StateMap{}} {
			if err := eventauth.Check(ev, auth); err != nil {
				var na *eventauth.NotAllowedError
				if !errors.As(err, &na) {
					t.Fatalf("Check returned %T, want *NotAllowedError: %v", err, err)
				}
			}
		}
		_ = eventauth.CheckAuthEventsSelection(ev, room.list)
		_ = eventauth.AuthEventsNeeded(ev.Type(), ev.StateKey(), ev.Sender(), ev.Content(), room.rv)
		_, _ = eventauth.ParsePowerLevels(ev.Content(), room.rv)
	})
}
