package push

import (
	"context"
	"fmt"
	"strings"
)

// Count is a number of unread notifying events and how many of them
// highlight.
type Count struct {
	Notifications int
	Highlights    int
}

// unreadCond says a push actions row (epa) is unread: it comes after the
// user's latest read receipt (m.read or m.read.private) that is unthreaded
// or of the row's own thread, and after the user's current membership
// event (as Synapse counts: what happened before one joined, the invite
// among it, is not unread in the room one joined).
const unreadCond = `epa.stream_ordering > (SELECT COALESCE(max(r.event_stream_ordering), 0) FROM receipts r
	WHERE r.room_id = epa.room_id AND r.user_id = epa.user_id AND r.receipt_type IN ('m.read', 'm.read.private')
	AND (r.thread_id = '' OR r.thread_id = epa.thread_id))
	AND epa.stream_ordering > COALESCE((SELECT cs.stream_ordering FROM current_state cs
	WHERE cs.room_id = epa.room_id AND cs.type = 'm.room.member' AND cs.state_key = epa.user_id), 0)`

// Counts returns the user's unread counts in each of rooms, per thread
// ("main" for events outside threads); rooms without any are absent. One
// query for all the rooms.
func (s *Service) Counts(ctx context.Context, userID string, rooms []string) (map[string]map[string]Count, error) {
	out := map[string]map[string]Count{}
	const chunk = 500
	for lo := 0; lo < len(rooms); lo += chunk {
		part := rooms[lo:min(lo+chunk, len(rooms))]
		var in strings.Builder
		args := []any{userID}
		for i, r := range part {
			if i > 0 {
				in.WriteString(", ")
			}
			fmt.Fprintf(&in, "$%d", len(args)+1)
			args = append(args, r)
		}
		rows, err := s.db.Reader().QueryContext(ctx, `SELECT epa.room_id, epa.thread_id, count(*), COALESCE(sum(epa.highlight), 0)
			FROM event_push_actions epa WHERE epa.user_id = $1 AND epa.room_id IN (`+in.String()+`)
			AND `+unreadCond+` GROUP BY epa.room_id, epa.thread_id`, args...)
		if err != nil {
			return nil, fmt.Errorf("count notifications of %s: %w", userID, err)
		}
		for rows.Next() {
			var room, thread string
			var c Count
			if err := rows.Scan(&room, &thread, &c.Notifications, &c.Highlights); err != nil {
				rows.Close()
				return nil, fmt.Errorf("count notifications of %s: %w", userID, err)
			}
			if out[room] == nil {
				out[room] = map[string]Count{}
			}
			out[room][thread] = c
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return nil, fmt.Errorf("count notifications of %s: %w", userID, err)
		}
	}
	return out, nil
}
