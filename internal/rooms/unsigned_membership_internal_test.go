package rooms

import "testing"

func TestMembershipAtPos(t *testing.T) {
	h := []stateChange{{pos: 10, membership: "invite"}, {pos: 20, membership: "join"}, {pos: 30, membership: "leave"}}
	for _, c := range []struct {
		pos  int64
		want string
	}{
		{5, "leave"},   // before any membership
		{10, "invite"}, // the invite itself counts its own change
		{15, "invite"},
		{20, "join"},
		{29, "join"},
		{30, "leave"},
		{99, "leave"},
	} {
		if got := membershipAtPos(h, c.pos); got != c.want {
			t.Errorf("membership at %d = %q, want %q", c.pos, got, c.want)
		}
	}
	if got := membershipAtPos(nil, 1); got != "leave" {
		t.Errorf("no history: %q, want leave", got)
	}
}
