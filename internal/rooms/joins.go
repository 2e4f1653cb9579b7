package rooms

import (
	"context"
	"fmt"
)

// JoinsBetween lists the users with a join membership event in the room in
// (from, to] (joins and profile changes alike; the caller tells them apart
// by the membership before from).
func (s *Store) JoinsBetween(ctx context.Context, roomID string, from, to int64) ([]string, error) {
	rows, err := s.db.Reader().QueryContext(ctx, `SELECT DISTINCT state_key FROM state_log
		WHERE room_id = $1 AND stream_ordering > $2 AND stream_ordering <= $3
		AND type = 'm.room.member' AND membership = 'join'`, roomID, from, to)
	if err != nil {
		return nil, fmt.Errorf("joins in %s in (%d, %d]: %w", roomID, from, to, err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var u string
		if err := rows.Scan(&u); err != nil {
			return nil, fmt.Errorf("joins in %s: %w", roomID, err)
		}
		out = append(out, u)
	}
	return out, rows.Err()
}
