package push

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"ganglion/internal/background"
	"ganglion/internal/storage"
)

// NotificationsMaxAge is how long push actions are kept for GET
// /notifications (Synapse keeps 30 days). Older rows are kept past it only
// while a count still needs them: while they are unread by a member they
// notify.
const NotificationsMaxAge = 30 * 24 * time.Hour

// pruneEvery is the pause between runs of the prune job.
const pruneEvery = time.Hour

// PruneJob is the background job that deletes old push actions (run on
// the background-tasks instance).
func PruneJob(db *storage.DB, serverName string, log *slog.Logger) background.Job {
	return background.Job{Name: "prune_push_actions", Every: pruneEvery, Run: func(ctx context.Context) error {
		n, err := Prune(ctx, db, serverName, time.Now().Add(-NotificationsMaxAge))
		if err != nil {
			return err
		}
		if n > 0 {
			log.Info("pruned old push actions", "rows", n)
		}
		return nil
	}}
}

// Prune deletes the push actions of events sent before `before` that no
// unread count needs any more, and returns how many rows went. A row is
// needed while a local member it applies to (joined since before the
// event) has not read past it with an unthreaded receipt; rows in threads
// read only by a threaded receipt are kept (conservatively) until an
// unthreaded receipt passes them too.
func Prune(ctx context.Context, db *storage.DB, serverName string, before time.Time) (int64, error) {
	cut, err := positionBefore(ctx, db.Reader(), before.UnixMilli())
	if err != nil || cut == 0 {
		return 0, err
	}
	var total int64
	// Room-wide rows, a room at a time: everything below the lowest read
	// position (receipt or join) of the room's local members goes.
	rows, err := db.Reader().QueryContext(ctx, `SELECT DISTINCT room_id FROM event_push_actions_room WHERE stream_ordering < $1`, cut)
	if err != nil {
		return 0, fmt.Errorf("list rooms with old push actions: %w", err)
	}
	var rooms []string
	for rows.Next() {
		var r string
		if err := rows.Scan(&r); err != nil {
			rows.Close()
			return 0, fmt.Errorf("list rooms with old push actions: %w", err)
		}
		rooms = append(rooms, r)
	}
	err = rows.Err()
	rows.Close()
	if err != nil {
		return 0, fmt.Errorf("list rooms with old push actions: %w", err)
	}
	for _, room := range rooms {
		if err := ctx.Err(); err != nil {
			return total, err
		}
		// The two lowest read positions (receipt or join) of the room's
		// local members: a row below the lowest is read by everyone it
		// applies to; a row sent by the member with the lowest is read by
		// everyone else below the second lowest (a room-wide row never
		// applies to its sender). No member: nobody needs any row.
		lows, err := lowestReads(ctx, db.Reader(), room, serverName)
		if err != nil {
			return total, err
		}
		upTo, sender, upToSender := cut, "", cut
		if len(lows) > 0 {
			upTo, sender, upToSender = min(cut, lows[0].pos+1), lows[0].user, cut
			if len(lows) > 1 {
				upToSender = min(cut, lows[1].pos+1)
			}
		}
		res, err := db.Exec(ctx, `DELETE FROM event_push_actions_room WHERE room_id = $1
			AND (stream_ordering < $2 OR (sender = $3 AND stream_ordering < $4))`, room, upTo, sender, upToSender)
		if err != nil {
			return total, fmt.Errorf("prune room push actions of %s: %w", room, err)
		}
		n, _ := res.RowsAffected()
		total += n
	}
	// A user's own rows go once the user has read past them or is no
	// longer joined since before them (then the room-wide row, if it is
	// still there, does not apply to them either, so dropping an
	// overriding row changes nothing).
	res, err := db.Exec(ctx, `DELETE FROM event_push_actions WHERE stream_ordering < $1
		AND NOT (EXISTS (SELECT 1 FROM current_state m WHERE m.room_id = event_push_actions.room_id AND m.type = 'm.room.member'
			AND m.state_key = event_push_actions.user_id AND m.membership = 'join' AND m.stream_ordering < event_push_actions.stream_ordering)
		AND event_push_actions.stream_ordering > (SELECT COALESCE(max(r.event_stream_ordering), 0) FROM receipts r
			WHERE r.room_id = event_push_actions.room_id AND r.user_id = event_push_actions.user_id
			AND r.receipt_type IN ('m.read', 'm.read.private') AND r.thread_id = ''))`, cut)
	if err != nil {
		return total, fmt.Errorf("prune push actions: %w", err)
	}
	n, _ := res.RowsAffected()
	return total + n, nil
}

type readPos struct {
	user string
	pos  int64
}

// lowestReads returns the two lowest read positions of the room's local
// joined members: the later of their unthreaded receipt and their join.
func lowestReads(ctx context.Context, q storage.Querier, room, serverName string) ([]readPos, error) {
	rows, err := q.QueryContext(ctx, `SELECT m.state_key, CASE WHEN COALESCE(r.pos, 0) > m.stream_ordering THEN r.pos ELSE m.stream_ordering END AS bound
		FROM current_state m LEFT JOIN (
			SELECT user_id, max(event_stream_ordering) AS pos FROM receipts
			WHERE room_id = $1 AND receipt_type IN ('m.read', 'm.read.private') AND thread_id = '' GROUP BY user_id) r
		ON r.user_id = m.state_key
		WHERE m.room_id = $1 AND m.type = 'm.room.member' AND m.membership = 'join' AND m.state_key LIKE $2
		ORDER BY bound LIMIT 2`, room, "%:"+serverName)
	if err != nil {
		return nil, fmt.Errorf("read the lowest read positions in %s: %w", room, err)
	}
	defer rows.Close()
	var out []readPos
	for rows.Next() {
		var p readPos
		if err := rows.Scan(&p.user, &p.pos); err != nil {
			return nil, fmt.Errorf("read the lowest read positions in %s: %w", room, err)
		}
		out = append(out, p)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read the lowest read positions in %s: %w", room, err)
	}
	return out, nil
}

// positionBefore finds the stream position below which events were sent
// before ts (ms), by a binary search over the events' positions (their
// origin_server_ts grows with their position but for clock skew between
// servers, which moves the cut by that skew at most). 0: none.
func positionBefore(ctx context.Context, q storage.Querier, ts int64) (int64, error) {
	var lo, hi int64
	if err := q.QueryRowContext(ctx, `SELECT COALESCE(min(stream_ordering), 0), COALESCE(max(stream_ordering), 0) FROM events WHERE stream_ordering > 0`).Scan(&lo, &hi); err != nil {
		return 0, fmt.Errorf("read the events' positions: %w", err)
	}
	if hi == 0 {
		return 0, nil
	}
	at := func(pos int64) (int64, error) {
		var t int64
		err := q.QueryRowContext(ctx, `SELECT origin_server_ts FROM events WHERE stream_ordering >= $1 ORDER BY stream_ordering LIMIT 1`, pos).Scan(&t)
		if err != nil {
			return 0, fmt.Errorf("read an event's timestamp at position %d: %w", pos, err)
		}
		return t, nil
	}
	// The first position whose event was sent at or after ts.
	hi++
	for lo < hi {
		mid := lo + (hi-lo)/2
		t, err := at(mid)
		if err != nil {
			return 0, err
		}
		if t >= ts {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	return lo, nil
}
