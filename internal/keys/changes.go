package keys

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"ganglion/internal/streams"
)

// Changes lists, for userID, the users whose device lists changed between
// two sync tokens (changed) and those who no longer share a room with
// userID (left), as /sync's device_lists and /keys/changes report them:
//
//   - users with a device_lists row in (from, to] who share a room with
//     userID now, and userID itself (its other devices care);
//   - users who joined one of userID's rooms in the events window, and
//     every member of a room userID joined in it: their devices are new to
//     userID;
//   - users who left one of userID's rooms, or were in a room userID left,
//     in the window and share no room with userID any more: left.
//
// Membership is compared with the rooms as they are now, not at to: a
// client is told at worst once too often to re-query.
func (s *Service) Changes(ctx context.Context, userID string, from, to streams.Token) (changed, left []string, err error) {
	changedSet := map[string]bool{}
	leftCand := map[string]bool{}
	if from.DeviceLists < to.DeviceLists {
		rows, err := s.db.Reader().QueryContext(ctx, `SELECT DISTINCT user_id FROM device_lists_stream
			WHERE stream_id > $1 AND stream_id <= $2`, from.DeviceLists, to.DeviceLists)
		if err != nil {
			return nil, nil, fmt.Errorf("device list changes: %w", err)
		}
		users, err := scanStrings(rows)
		if err != nil {
			return nil, nil, fmt.Errorf("device list changes: %w", err)
		}
		for _, u := range users {
			changedSet[u] = true
		}
	}
	evFrom, evTo := from.Events, to.EventsMax()
	if evFrom < evTo {
		// The requester's own joins and leaves in the window.
		rows, err := s.db.Reader().QueryContext(ctx, `SELECT room_id, membership FROM state_log
			WHERE type = 'm.room.member' AND state_key = $1 AND stream_ordering > $2 AND stream_ordering <= $3
			ORDER BY stream_ordering`, userID, evFrom, evTo)
		if err != nil {
			return nil, nil, fmt.Errorf("membership changes of %s: %w", userID, err)
		}
		last := map[string]string{}
		for rows.Next() {
			var room string
			var m *string
			if err := rows.Scan(&room, &m); err != nil {
				rows.Close()
				return nil, nil, fmt.Errorf("membership changes of %s: %w", userID, err)
			}
			if m != nil {
				last[room] = *m
			}
		}
		rows.Close()
		for room, m := range last {
			members, err := s.roomMembers(ctx, room)
			if err != nil {
				return nil, nil, err
			}
			for _, u := range members {
				switch m {
				case "join":
					changedSet[u] = true
				case "leave", "ban":
					leftCand[u] = true
				}
			}
		}
		// Others' joins and leaves in the rooms the requester is in, or
		// was in during the window.
		rooms, err := joinedRooms(ctx, s.db.Reader(), userID)
		if err != nil {
			return nil, nil, err
		}
		for room := range last {
			if !slices.Contains(rooms, room) {
				rooms = append(rooms, room)
			}
		}
		if len(rooms) > 0 {
			args := []any{evFrom, evTo}
			ph := make([]string, len(rooms))
			for i, r := range rooms {
				args = append(args, r)
				ph[i] = fmt.Sprintf("$%d", i+3)
			}
			rows, err = s.db.Reader().QueryContext(ctx, `SELECT state_key, membership FROM state_log
				WHERE type = 'm.room.member' AND stream_ordering > $1 AND stream_ordering <= $2
				AND room_id IN (`+strings.Join(ph, ",")+`) ORDER BY stream_ordering`, args...)
			if err != nil {
				return nil, nil, fmt.Errorf("membership changes in the rooms of %s: %w", userID, err)
			}
			for rows.Next() {
				var u string
				var m *string
				if err := rows.Scan(&u, &m); err != nil {
					rows.Close()
					return nil, nil, fmt.Errorf("membership changes in the rooms of %s: %w", userID, err)
				}
				switch {
				case m == nil:
				case *m == "join":
					changedSet[u] = true
				case *m == "leave" || *m == "ban":
					leftCand[u] = true
				}
			}
			rows.Close()
		}
	}
	if len(changedSet) == 0 && len(leftCand) == 0 {
		return []string{}, []string{}, nil
	}
	shared, err := s.sharedUsers(ctx, userID)
	if err != nil {
		return nil, nil, err
	}
	changed, left = []string{}, []string{}
	for u := range changedSet {
		if u == userID || shared[u] {
			changed = append(changed, u)
		}
	}
	for u := range leftCand {
		if u != userID && !shared[u] {
			left = append(left, u)
		}
	}
	slices.Sort(changed)
	slices.Sort(left)
	return changed, left, nil
}

// roomMembers lists the room's joined members (members who left it during
// the window are found by the window's membership changes).
func (s *Service) roomMembers(ctx context.Context, roomID string) ([]string, error) {
	rows, err := s.db.Reader().QueryContext(ctx, `SELECT state_key FROM current_state
		WHERE room_id = $1 AND type = 'm.room.member' AND membership = 'join'`, roomID)
	if err != nil {
		return nil, fmt.Errorf("members of %s: %w", roomID, err)
	}
	return scanStrings(rows)
}

// sharedUsers is the set of users joined to a room userID is joined to.
func (s *Service) sharedUsers(ctx context.Context, userID string) (map[string]bool, error) {
	rows, err := s.db.Reader().QueryContext(ctx, `SELECT DISTINCT b.state_key FROM current_state a
		JOIN current_state b ON b.room_id = a.room_id AND b.type = 'm.room.member' AND b.membership = 'join'
		WHERE a.type = 'm.room.member' AND a.state_key = $1 AND a.membership = 'join'`, userID)
	if err != nil {
		return nil, fmt.Errorf("users sharing a room with %s: %w", userID, err)
	}
	users, err := scanStrings(rows)
	if err != nil {
		return nil, fmt.Errorf("users sharing a room with %s: %w", userID, err)
	}
	out := make(map[string]bool, len(users))
	for _, u := range users {
		out[u] = true
	}
	return out, nil
}
