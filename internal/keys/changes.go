package keys

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	"ganglion/internal/config"
	"ganglion/internal/streams"
)

// Changes lists, for userID, the users whose device lists changed between
// two sync tokens (changed) and those who stopped sharing a room with
// userID (left), as /sync's device_lists and /keys/changes report them.
// Sharing is judged by membership as of each end of the range (a room's
// membership at the token's position for the room's events writer), not
// as of now, so a membership change after to does not leak into the
// answer for (from, to]:
//
//   - changed: users sharing a room with userID at to who changed a
//     device in the range, who did not share one at from, or who joined
//     one of userID's rooms in the range; and userID itself when one of
//     its own devices changed (its other devices care);
//   - left: users sharing a room with userID at from and none at to.
func (s *Service) Changes(ctx context.Context, userID string, from, to streams.Token) (changed, left []string, err error) {
	writers := s.reg.Writers(streams.Events)
	posFrom := func(room string) int64 { return from.EventsFor(config.ShardFor(writers, room)) }
	posTo := func(room string) int64 { return to.EventsFor(config.ShardFor(writers, room)) }

	devChanged := map[string]bool{}
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
			devChanged[u] = true
		}
	}

	// userID's rooms at both ends.
	mine, err := s.joinedAt(ctx, []string{userID}, nil, posFrom, posTo)
	if err != nil {
		return nil, nil, err
	}
	roomsFrom, roomsTo := mine[userID].from, mine[userID].to
	var rooms []string
	for r := range roomsFrom {
		rooms = append(rooms, r)
	}
	for r := range roomsTo {
		if !roomsFrom[r] {
			rooms = append(rooms, r)
		}
	}
	slices.Sort(rooms)

	// Candidates: users whose device lists changed, members of the rooms
	// userID joined or left in the range, and users whose membership
	// changed in the range in userID's rooms.
	cand := map[string]bool{}
	for u := range devChanged {
		cand[u] = true
	}
	for _, r := range rooms {
		if roomsFrom[r] && roomsTo[r] {
			continue
		}
		pos := posTo(r)
		if roomsFrom[r] {
			pos = posFrom(r)
		}
		members, err := s.roomMembersAt(ctx, r, pos)
		if err != nil {
			return nil, nil, err
		}
		for _, u := range members {
			cand[u] = true
		}
	}
	joinedIn, leftIn, err := s.joinsInRange(ctx, rooms, posFrom, posTo, cand)
	if err != nil {
		return nil, nil, err
	}
	delete(cand, userID)
	changed, left = []string{}, []string{}
	if devChanged[userID] {
		changed = append(changed, userID)
	}
	if len(cand) == 0 {
		return changed, left, nil
	}
	users := make([]string, 0, len(cand))
	for u := range cand {
		users = append(users, u)
	}
	theirs, err := s.joinedAt(ctx, users, rooms, posFrom, posTo)
	if err != nil {
		return nil, nil, err
	}
	for _, u := range users {
		sharedFrom, sharedTo, newIn := false, false, false
		for r := range theirs[u].from {
			sharedFrom = sharedFrom || roomsFrom[r]
		}
		for r := range theirs[u].to {
			if roomsTo[r] {
				sharedTo = true
				// A join in the range to a room the user was not in at
				// from or left in the range (a rename is a join too,
				// but not a new one).
				newIn = newIn || (joinedIn[u][r] && (!theirs[u].from[r] || leftIn[u][r]))
			}
		}
		switch {
		case sharedTo && (devChanged[u] || !sharedFrom || newIn):
			changed = append(changed, u)
		case sharedFrom && !sharedTo:
			left = append(left, u)
		}
	}
	slices.Sort(changed)
	slices.Sort(left)
	return changed, left, nil
}

// roomsAtEnds are a user's joined rooms at both ends of a range.
type roomsAtEnds struct{ from, to map[string]bool }

// joinedAt finds, for each user, the rooms (of rooms; nil: any) it was
// joined to at posFrom(room) and at posTo(room). current_state answers
// for memberships unchanged since the position; the others are looked up
// in state_log, where the membership at P is the latest row at or before P.
func (s *Service) joinedAt(ctx context.Context, users, rooms []string, posFrom, posTo func(string) int64) (map[string]roomsAtEnds, error) {
	ul, _ := json.Marshal(users)
	q := `SELECT room_id, state_key, membership, stream_ordering FROM current_state
		WHERE type = 'm.room.member' AND state_key IN (` + s.stringList(1) + `)`
	args := []any{string(ul)}
	if rooms != nil {
		if len(rooms) == 0 {
			return map[string]roomsAtEnds{}, nil
		}
		rl, _ := json.Marshal(rooms)
		q += ` AND room_id IN (` + s.stringList(2) + `)`
		args = append(args, string(rl))
	}
	rows, err := s.db.Reader().QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("memberships of %d users: %w", len(users), err)
	}
	type row struct {
		room, user, membership string
		pos                    int64
	}
	var cur []row
	for rows.Next() {
		var r row
		var m sql.NullString
		if err := rows.Scan(&r.room, &r.user, &m, &r.pos); err != nil {
			rows.Close()
			return nil, fmt.Errorf("memberships of %d users: %w", len(users), err)
		}
		r.membership = m.String
		cur = append(cur, r)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("memberships of %d users: %w", len(users), err)
	}
	out := make(map[string]roomsAtEnds, len(users))
	for _, u := range users {
		out[u] = roomsAtEnds{from: map[string]bool{}, to: map[string]bool{}}
	}
	for _, r := range cur {
		for _, end := range []struct {
			pos  int64
			into map[string]bool
		}{{posFrom(r.room), out[r.user].from}, {posTo(r.room), out[r.user].to}} {
			m := r.membership
			if r.pos > end.pos {
				if m, err = s.membershipAt(ctx, r.room, r.user, end.pos); err != nil {
					return nil, err
				}
			}
			if m == "join" {
				end.into[r.room] = true
			}
		}
	}
	return out, nil
}

// membershipAt is a user's membership in a room at pos ("" if none).
func (s *Service) membershipAt(ctx context.Context, roomID, userID string, pos int64) (string, error) {
	var m sql.NullString
	err := s.db.Reader().QueryRowContext(ctx, `SELECT membership FROM state_log
		WHERE room_id = $1 AND type = 'm.room.member' AND state_key = $2 AND stream_ordering <= $3
		ORDER BY stream_ordering DESC LIMIT 1`, roomID, userID, pos).Scan(&m)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("membership of %s in %s at %d: %w", userID, roomID, pos, err)
	}
	return m.String, nil
}

// roomMembersAt lists the room's joined members at pos: the current ones,
// corrected for the members whose membership changed after pos.
func (s *Service) roomMembersAt(ctx context.Context, roomID string, pos int64) ([]string, error) {
	rows, err := s.db.Reader().QueryContext(ctx, `SELECT state_key FROM current_state
		WHERE room_id = $1 AND type = 'm.room.member' AND membership = 'join' AND stream_ordering <= $2`, roomID, pos)
	if err != nil {
		return nil, fmt.Errorf("members of %s: %w", roomID, err)
	}
	members, err := scanStrings(rows)
	if err != nil {
		return nil, fmt.Errorf("members of %s: %w", roomID, err)
	}
	rows, err = s.db.Reader().QueryContext(ctx, `SELECT state_key FROM current_state
		WHERE room_id = $1 AND type = 'm.room.member' AND stream_ordering > $2`, roomID, pos)
	if err != nil {
		return nil, fmt.Errorf("members of %s: %w", roomID, err)
	}
	later, err := scanStrings(rows)
	if err != nil {
		return nil, fmt.Errorf("members of %s: %w", roomID, err)
	}
	for _, u := range later {
		m, err := s.membershipAt(ctx, roomID, u, pos)
		if err != nil {
			return nil, err
		}
		if m == "join" {
			members = append(members, u)
		}
	}
	return members, nil
}

// joinsInRange finds the membership changes in the range in rooms (room
// by room within (posFrom, posTo]) and adds every user concerned to cand.
// It returns the joins and the other changes (leaves, bans, invites, …)
// by user and room.
func (s *Service) joinsInRange(ctx context.Context, rooms []string, posFrom, posTo func(string) int64, cand map[string]bool) (joins, others map[string]map[string]bool, err error) {
	joins, others = map[string]map[string]bool{}, map[string]map[string]bool{}
	mark := func(m map[string]map[string]bool, u, room string) {
		if m[u] == nil {
			m[u] = map[string]bool{}
		}
		m[u][room] = true
	}
	// One query per range: rooms of one events writer share their bounds.
	byRange := map[[2]int64][]string{}
	for _, r := range rooms {
		if lo, hi := posFrom(r), posTo(r); lo < hi {
			byRange[[2]int64{lo, hi}] = append(byRange[[2]int64{lo, hi}], r)
		}
	}
	for rng, rs := range byRange {
		rl, _ := json.Marshal(rs)
		rows, err := s.db.Reader().QueryContext(ctx, `SELECT room_id, state_key, membership FROM state_log
			WHERE type = 'm.room.member' AND stream_ordering > $1 AND stream_ordering <= $2
			AND room_id IN (`+s.stringList(3)+`)`, rng[0], rng[1], string(rl))
		if err != nil {
			return nil, nil, fmt.Errorf("membership changes in %d rooms: %w", len(rs), err)
		}
		for rows.Next() {
			var room, u string
			var m sql.NullString
			if err := rows.Scan(&room, &u, &m); err != nil {
				rows.Close()
				return nil, nil, fmt.Errorf("membership changes in %d rooms: %w", len(rs), err)
			}
			cand[u] = true
			if m.String == "join" {
				mark(joins, u, room)
			} else {
				mark(others, u, room)
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, nil, fmt.Errorf("membership changes in %d rooms: %w", len(rs), err)
		}
	}
	return joins, others, nil
}
