package inbound

import (
	"testing"

	"ganglion/internal/rooms"
)

// The answer of each persister outcome: stored events are accepted
// (soft-failed ones too, as in Synapse), everything else is an error,
// including an event the persister did not answer for.
func TestFederationSendOutcomeErrors(t *testing.T) {
	for _, tc := range []struct {
		r    rooms.RemoteResult
		want string
	}{
		{rooms.RemoteResult{Outcome: rooms.RemotePersisted}, ""},
		{rooms.RemoteResult{Outcome: rooms.RemoteDuplicate}, ""},
		{rooms.RemoteResult{Outcome: rooms.RemoteSoftFailed}, ""},
		{rooms.RemoteResult{Outcome: rooms.RemoteOutlier}, ""},
		{rooms.RemoteResult{Outcome: rooms.RemoteRejected, Error: "not allowed"}, "rejected: not allowed"},
		{rooms.RemoteResult{Outcome: rooms.RemoteRejected}, "rejected"},
		{rooms.RemoteResult{Outcome: rooms.RemoteMissingPrev}, "prev events missing"},
		{rooms.RemoteResult{}, "not stored"},
		{rooms.RemoteResult{Outcome: "something new", Error: "why"}, "why"},
	} {
		if got := outcomeError(tc.r); got != tc.want {
			t.Errorf("outcome %+v answered %q, want %q", tc.r, got, tc.want)
		}
	}
}
