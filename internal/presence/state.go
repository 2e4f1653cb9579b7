// Package presence owns users' presence: the state machine that turns
// syncs, activity and explicit settings into online / unavailable /
// offline, the presence stream those changes are written to, the reads
// sync and GET /presence do, and who may see whom.
//
// Only the presence stream's writer (stream_writers.presence) runs the
// state machine (LocalWriter); other processes reach it through the Writer
// interface (later over HTTP replication and USER_SYNC) and read presence
// from the database (Service).
package presence

import (
	"context"
	"errors"
	"time"
)

// Presence states of the spec.
const (
	Online      = "online"
	Unavailable = "unavailable"
	Offline     = "offline"
)

// Synapse's timers; clients are used to them.
const (
	// IdleTimeout moves an online user who has done nothing for this long
	// to unavailable.
	IdleTimeout = 5 * time.Minute
	// SyncOnlineTimeout moves a user to offline once this long has passed
	// since their last sync ended (or their last activity), with no sync
	// in progress.
	SyncOnlineTimeout = 30 * time.Second
	// LastActiveGranularity: a user active within it is currently_active;
	// while currently_active, last_active_ago bumps are not worth a row.
	LastActiveGranularity = time.Minute
	// DefaultCheckInterval is how often the writer looks for timed-out
	// users. Timers need not be exact (Synapse uses a coarse wheel), and a
	// scan of the users who are not offline every few seconds is cheap
	// next to the per-change row writes.
	DefaultCheckInterval = 5 * time.Second
)

// ErrInvalidState is returned for a presence state outside the spec's enum.
var ErrInvalidState = errors.New("invalid presence state")

// ValidState reports whether s is one of the spec's presence states.
func ValidState(s string) bool { return s == Online || s == Unavailable || s == Offline }

// Rooms is what presence needs from rooms: who shares a room with whom.
// rooms.Store satisfies it.
type Rooms interface {
	RoomsForUser(ctx context.Context, userID string, memberships ...string) ([]string, error)
	JoinedMembers(ctx context.Context, roomID string) ([]string, error)
	// UsersSharingJoinedRoom returns which of candidates share a joined
	// room with userID, in one round trip for many candidates.
	UsersSharingJoinedRoom(ctx context.Context, userID string, candidates []string) (map[string]bool, error)
}

// status is one user's presence as the writer tracks it. Times are unix
// milliseconds.
type status struct {
	state           string
	statusMsg       *string
	lastActive      int64
	lastSync        int64
	currentlyActive bool
}

func sameMsg(a, b *string) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

// shouldNotify decides whether a change is worth a stream row (and so a
// wake-up of everyone who shares a room): a new state or status message,
// currently_active flipping, or a last-active bump that clients cannot
// infer (Synapse's should_notify).
func shouldNotify(prev, next status) bool {
	if prev.state != next.state || !sameMsg(prev.statusMsg, next.statusMsg) {
		return true
	}
	bumped := next.lastActive-prev.lastActive > LastActiveGranularity.Milliseconds()
	if prev.state == Online {
		if prev.currentlyActive != next.currentlyActive {
			return true
		}
		return bumped && !next.currentlyActive
	}
	return bumped
}

// applyTimeouts moves s along the timers at time now. syncing says whether
// a sync of the user is in progress.
func applyTimeouts(s *status, syncing bool, now int64) {
	if s.state == Offline {
		return
	}
	if s.state == Online && now-s.lastActive > IdleTimeout.Milliseconds() {
		s.state = Unavailable
	}
	if !syncing && now-max(s.lastSync, s.lastActive) > SyncOnlineTimeout.Milliseconds() {
		s.state = Offline
	}
}

// timedOut reports whether applyTimeouts (or the currently_active
// recomputation) would change s at now.
func timedOut(s status, syncing bool, now int64) bool {
	if s.state == Offline {
		return false
	}
	if s.currentlyActive && now-s.lastActive >= LastActiveGranularity.Milliseconds() {
		return true
	}
	next := s
	applyTimeouts(&next, syncing, now)
	return next.state != s.state
}

// settle fixes the derived field: currently_active means online and active
// within the last LastActiveGranularity.
func settle(s *status, now int64) {
	s.currentlyActive = s.state == Online && now-s.lastActive < LastActiveGranularity.Milliseconds()
}
