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
		// NULL (no local member): nobody needs any of the room's rows.
		var low *int64
		if err := db.Reader().QueryRowContext(ctx, `SELECT min(CASE WHEN COALESCE(r.pos, 0) > m.stream_ordering THEN r.pos ELSE m.stream_ordering END)
			FROM current_state m LEFT JOIN (
				SELECT user_id, max(event_stream_ordering) AS pos FROM receipts
				WHERE room_id = $1 AND receipt_type IN ('m.read', 'm.read.private') AND thread_id = '' GROUP BY user_id) r
			ON r.user_id = m.state_key
			WHERE m.room_id = $1 AND m.type = 'm.room.member' AND m.membership = 'join' AND m.state_key LIKE $2`,
			room, "%:"+serverName).Scan(&low); err != nil {
			return total, fmt.Errorf("read the lowest read position in %s: %w", room, err)
		}
		upTo := cut
		if low != nil && *low+1 < upTo {
			upTo = *low + 1
		}
		res, err := db.Exec(ctx, `DELETE FROM event_push_actions_room WHERE room_id = $1 AND stream_ordering < $2`, room, upTo)
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
