package push

import (
	"context"
	"fmt"
	"strings"

	"ganglion/internal/storage"
)

// Count is a number of unread notifying events and how many of them
// highlight.
type Count struct {
	Notifications int
	Highlights    int
}

// notifying is SQL for the push actions that notify the user named by the
// SQL expression user: a UNION ALL of the user's own rows that notify and
// the room-wide rows of the rooms the user is joined to, after the user's
// current membership, not sent by the user and not overridden by a row of
// the user's own. In each branch the row is aliased epa, with room_id,
// event_id, stream_ordering, thread_id, highlight and actions; sel is the
// select list, from more tables (comma-separated, or "") and cond more
// conditions (or "").
func notifying(sel, from, user, cond string) string {
	own, room := notifyingBranches(sel, from, user, cond)
	return own + `
	UNION ALL
	` + room
}

// notifyingBranches returns notifying's two branches: the user's own rows
// and the room-wide ones.
func notifyingBranches(sel, from, user, cond string) (own, room string) {
	if from != "" {
		from += ", "
	}
	if cond != "" {
		cond = " AND " + cond
	}
	return `SELECT ` + sel + ` FROM ` + from + `event_push_actions epa WHERE epa.user_id = ` + user + ` AND epa.notify = 1` + cond,
		`SELECT ` + sel + ` FROM ` + from + `current_state m, event_push_actions_room epa
	WHERE m.type = 'm.room.member' AND m.state_key = ` + user + ` AND m.membership = 'join'
	AND epa.room_id = m.room_id AND epa.stream_ordering > m.stream_ordering AND epa.sender <> ` + user + `
	AND NOT EXISTS (SELECT 1 FROM event_push_actions x WHERE x.user_id = ` + user + ` AND x.event_id = epa.event_id)` + cond
}

// unreadCond says a push actions row (epa) of the user named by the SQL
// expression user is unread: it comes after the user's latest read
// receipt (m.read or m.read.private) that is unthreaded or of the row's
// own thread, and after the user's current membership event (as Synapse
// counts: what happened before one joined, the invite among it, is not
// unread in the room one joined).
func unreadCond(user string) string {
	return `epa.stream_ordering > (SELECT COALESCE(max(r.event_stream_ordering), 0) FROM receipts r
	WHERE r.room_id = epa.room_id AND r.user_id = ` + user + ` AND r.receipt_type IN ('m.read', 'm.read.private')
	AND (r.thread_id = '' OR r.thread_id = epa.thread_id))
	AND epa.stream_ordering > COALESCE((SELECT cs.stream_ordering FROM current_state cs
	WHERE cs.room_id = epa.room_id AND cs.type = 'm.room.member' AND cs.state_key = ` + user + `), 0)`
}

// countsSQL counts a user's ($1) unread push actions per room and
// thread in the joined rooms that inRooms(column) selects: the rows
// notifying selects, written out here because b already holds the
// user's membership (bound is past it), which spares the planner a join
// on every sync. Each room's rows are range-scanned from the later of the
// user's unthreaded receipt and membership, so read history costs nothing
// however long it grows; only rows past that bound are checked against
// their thread's receipt.
func countsSQL(inRooms func(column string) string) string {
	return `WITH b AS (
		SELECT cs.room_id AS room_id,
			CASE WHEN COALESCE(r.pos, 0) > cs.stream_ordering THEN r.pos ELSE cs.stream_ordering END AS bound
		FROM current_state cs LEFT JOIN (
			SELECT room_id, max(event_stream_ordering) AS pos FROM receipts
			WHERE ` + inRooms("room_id") + ` AND user_id = $1 AND receipt_type IN ('m.read', 'm.read.private') AND thread_id = ''
			GROUP BY room_id) r ON r.room_id = cs.room_id
		WHERE ` + inRooms("cs.room_id") + ` AND cs.type = 'm.room.member' AND cs.state_key = $1 AND cs.membership = 'join'),
	n AS (SELECT epa.room_id AS room_id, epa.thread_id AS thread_id, epa.stream_ordering AS stream_ordering, epa.highlight AS highlight
		FROM b, event_push_actions epa WHERE epa.user_id = $1 AND epa.notify = 1 AND epa.room_id = b.room_id AND epa.stream_ordering > b.bound
	UNION ALL
	SELECT epa.room_id, epa.thread_id, epa.stream_ordering, epa.highlight
		FROM b, event_push_actions_room epa WHERE epa.room_id = b.room_id AND epa.stream_ordering > b.bound AND epa.sender <> $1
		AND NOT EXISTS (SELECT 1 FROM event_push_actions x WHERE x.user_id = $1 AND x.event_id = epa.event_id))
	SELECT n.room_id, n.thread_id, count(*), COALESCE(sum(n.highlight), 0) FROM n
	WHERE n.stream_ordering > (SELECT COALESCE(max(t.event_stream_ordering), 0) FROM receipts t
		WHERE t.room_id = n.room_id AND t.user_id = $1 AND t.receipt_type IN ('m.read', 'm.read.private') AND t.thread_id = n.thread_id)
	GROUP BY n.room_id, n.thread_id`
}

// Counts returns the user's unread counts in each of rooms, per thread
// ("main" for events outside threads); rooms without any are absent. One
// query for all the rooms.
func (s *Service) Counts(ctx context.Context, userID string, rooms []string) (map[string]map[string]Count, error) {
	return countUnread(ctx, s.db.Reader(), userID, rooms)
}

// countUnread counts in rooms, or in every room the user is joined to
// when rooms is nil.
func countUnread(ctx context.Context, q storage.Querier, userID string, rooms []string) (map[string]map[string]Count, error) {
	out := map[string]map[string]Count{}
	run := func(query string, args []any) error {
		rows, err := q.QueryContext(ctx, query, args...)
		if err != nil {
			return fmt.Errorf("count notifications of %s: %w", userID, err)
		}
		defer rows.Close()
		for rows.Next() {
			var room, thread string
			var c Count
			if err := rows.Scan(&room, &thread, &c.Notifications, &c.Highlights); err != nil {
				return fmt.Errorf("count notifications of %s: %w", userID, err)
			}
			if out[room] == nil {
				out[room] = map[string]Count{}
			}
			out[room][thread] = c
		}
		if err := rows.Err(); err != nil {
			return fmt.Errorf("count notifications of %s: %w", userID, err)
		}
		return nil
	}
	if rooms == nil {
		joined := func(col string) string {
			return col + ` IN (SELECT j.room_id FROM current_state j WHERE j.type = 'm.room.member' AND j.state_key = $1 AND j.membership = 'join')`
		}
		return out, run(countsSQL(joined), []any{userID})
	}
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
		list := in.String()
		if err := run(countsSQL(func(col string) string { return col + ` IN (` + list + `)` }), args); err != nil {
			return nil, err
		}
	}
	return out, nil
}
