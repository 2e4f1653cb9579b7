package rooms

import (
	"context"
	"database/sql"
	"fmt"
	"sort"
	"strings"
)

// unsigned.membership (MSC4115, spec v1.11): every event served to a client
// carries the requester's membership at that event, counting the event's
// own change ("leave" when they had none yet). It is decided in memory from
// the requester's membership history in each room, loaded once per Format
// call for all its rooms (or from the state cache for sync, whose reads are
// bounded by what this process has seen): never a query per event.

// SyncFormatter is Formatter for readers bounded by this process's stream
// positions (sync): membership histories come from the store's state
// cache, which is current up to those positions.
func (s *Service) SyncFormatter(userID, deviceID string) *Formatter {
	f := s.Formatter(userID, deviceID)
	f.cachedMembership = true
	return f
}

// addMembership fills unsigned.membership of out (rendered from evs, index
// for index).
func (f *Formatter) addMembership(ctx context.Context, evs []*StoredEvent, out []ClientEvent) error {
	if f.userID == "" || len(evs) == 0 {
		return nil // an application service's transaction has no requester
	}
	var roomIDs []string
	seen := map[string]bool{}
	for _, se := range evs {
		if r := se.Event.RoomID(); !seen[r] {
			seen[r] = true
			roomIDs = append(roomIDs, r)
		}
	}
	hist, err := f.membershipHistories(ctx, roomIDs)
	if err != nil {
		return err
	}
	for i, se := range evs {
		out[i].Unsigned["membership"] = membershipAtPos(hist[se.Event.RoomID()], se.StreamOrdering)
	}
	return nil
}

// membershipAtPos is the membership after the last change at or before
// pos in h (oldest first), "leave" before the first.
func membershipAtPos(h []stateChange, pos int64) string {
	i := sort.Search(len(h), func(i int) bool { return h[i].pos > pos })
	if i == 0 || h[i-1].membership == "" {
		return "leave"
	}
	return h[i-1].membership
}

func (f *Formatter) membershipHistories(ctx context.Context, roomIDs []string) (map[string][]stateChange, error) {
	out := make(map[string][]stateChange, len(roomIDs))
	if f.cachedMembership && f.store.state != nil {
		for _, roomID := range roomIDs {
			h, err := throughCache(f.store.state, stateKey3(roomID, "m.room.member", f.userID), func() ([]stateChange, error) {
				return f.store.stateHistory(ctx, roomID, "m.room.member", f.userID)
			})
			if err != nil {
				return nil, err
			}
			out[roomID] = h
		}
		return out, nil
	}
	return f.store.membershipHistories(ctx, f.userID, roomIDs)
}

// membershipHistories loads userID's membership changes in each of
// roomIDs, oldest first, in one query.
func (s *Store) membershipHistories(ctx context.Context, userID string, roomIDs []string) (map[string][]stateChange, error) {
	out := make(map[string][]stateChange, len(roomIDs))
	args := []any{userID}
	ph := make([]string, len(roomIDs))
	for i, r := range roomIDs {
		args = append(args, r)
		ph[i] = fmt.Sprintf("$%d", i+2)
	}
	rows, err := s.db.Reader().QueryContext(ctx, `SELECT room_id, stream_ordering, event_id, membership FROM state_log
		WHERE type = 'm.room.member' AND state_key = $1 AND room_id IN (`+strings.Join(ph, ", ")+`)
		ORDER BY room_id, stream_ordering`, args...)
	if err != nil {
		return nil, fmt.Errorf("membership histories of %s: %w", userID, err)
	}
	defer rows.Close()
	for rows.Next() {
		var roomID string
		var c stateChange
		var m sql.NullString
		if err := rows.Scan(&roomID, &c.pos, &c.eventID, &m); err != nil {
			return nil, fmt.Errorf("membership histories of %s: %w", userID, err)
		}
		c.membership = m.String
		out[roomID] = append(out[roomID], c)
	}
	return out, rows.Err()
}
