package userdir

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"ganglion/internal/storage"
	"ganglion/internal/streams"
)

// Updater applies the events stream to the directory tables. Exactly one
// instance runs it (config.UpdatesUserDirectory). It reads events up to
// the stream's current position, the minimum over the persisters, below
// which every event is committed, so it never skips one that commits late;
// and it saves its position in the transaction that applies the events, so
// after a kill it resumes where its last commit left off.
type Updater struct {
	store *Store
	db    *storage.DB
	reg   *streams.Registry
	log   *slog.Logger
}

func NewUpdater(store *Store, reg *streams.Registry, log *slog.Logger) *Updater {
	return &Updater{store: store, db: store.db, reg: reg, log: log.With("module", "user_directory")}
}

// updaterBatch bounds the events read per transaction.
const updaterBatch = 500

const (
	retryMin = 500 * time.Millisecond
	retryMax = 30 * time.Second
)

// rebuildPoll is how often a following updater checks whether an admin has
// asked for a rebuild (RequestRebuild) while no events arrive; with events
// arriving, every batch notices at once.
const rebuildPoll = 5 * time.Second

// errRebuildRequested: the position row is gone, so the directory is to be
// rebuilt (RequestRebuild).
var errRebuildRequested = errors.New("user directory rebuild requested")

// Run builds the directory if it has never been built, or whenever its
// position has been removed (RequestRebuild: the admin's full rebuild),
// and otherwise follows the events stream, until ctx ends. Database errors
// are logged and retried: a directory that lags is better than a process
// that exits.
func (u *Updater) Run(ctx context.Context) error {
	b := &backoff{log: u.log, wait: retryMin}
	poll := time.NewTicker(rebuildPoll)
	defer poll.Stop()
	for {
		var pos int64
		for {
			p, built, err := u.store.Position(ctx, u.db.Reader())
			if err == nil && !built {
				p, err = u.Rebuild(ctx)
			}
			if err == nil {
				pos = p
				break
			}
			if ctx.Err() != nil || !b.retry(ctx, "rebuild", err) {
				return nil
			}
		}
		b.wait = retryMin
		if err := u.follow(ctx, pos, poll.C, b); err == nil {
			return nil
		}
		// errRebuildRequested: back to the top, which rebuilds.
	}
}

// backoff spaces out retries after database errors.
type backoff struct {
	log  *slog.Logger
	wait time.Duration
}

// retry logs err, waits, doubles the next wait, and reports false if ctx
// ended first.
func (b *backoff) retry(ctx context.Context, what string, err error) bool {
	b.log.Warn("user directory: "+what+" failed; retrying", "err", err, "in", b.wait)
	t := time.NewTimer(b.wait)
	defer t.Stop()
	b.wait = min(b.wait*2, retryMax)
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// follow applies the events stream from pos until ctx ends (nil) or a
// rebuild is requested (errRebuildRequested). poll ticks the check for a
// request made while no events arrive.
func (u *Updater) follow(ctx context.Context, pos int64, poll <-chan time.Time, b *backoff) error {
	for {
		// Take the channel before reading the position, so an advance in
		// between still wakes us.
		changed := u.reg.Changed(streams.Events)
		cur := u.reg.Current(streams.Events)
		if pos < cur {
			next, err := u.step(ctx, pos, cur)
			if errors.Is(err, errRebuildRequested) {
				u.log.Info("user directory rebuild requested")
				return err
			}
			if err != nil {
				if ctx.Err() != nil || !b.retry(ctx, "update", err) {
					return nil
				}
				continue
			}
			pos, b.wait = next, retryMin
			continue
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-poll:
			_, built, err := u.store.Position(ctx, u.db.Reader())
			if err == nil && !built {
				u.log.Info("user directory rebuild requested")
				return errRebuildRequested
			}
		}
	}
}

type memberKey struct{ room, user string }

// step applies the directory-relevant events in (from, to] — at most one
// batch — and returns the new position.
func (u *Updater) step(ctx context.Context, from, to int64) (int64, error) {
	rows, err := u.db.Reader().QueryContext(ctx, `SELECT stream_ordering, room_id, type, state_key FROM events
		WHERE stream_ordering > $1 AND stream_ordering <= $2 AND state_key IS NOT NULL
		AND type IN ('m.room.member', 'm.room.join_rules', 'm.room.history_visibility')
		ORDER BY stream_ordering LIMIT $3`, from, to, updaterBatch)
	if err != nil {
		return from, fmt.Errorf("read events (%d, %d]: %w", from, to, err)
	}
	roomsTouched := map[string]bool{}
	var members []memberKey
	seen := map[memberKey]bool{}
	n, last := 0, from
	for rows.Next() {
		var so int64
		var room, typ, sk string
		if err := rows.Scan(&so, &room, &typ, &sk); err != nil {
			rows.Close()
			return from, fmt.Errorf("read events (%d, %d]: %w", from, to, err)
		}
		n, last = n+1, so
		if _, ok := roomsTouched[room]; !ok {
			roomsTouched[room] = false
		}
		if typ == "m.room.member" {
			k := memberKey{room, sk}
			if !seen[k] {
				seen[k] = true
				members = append(members, k)
			}
		} else {
			roomsTouched[room] = true
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return from, fmt.Errorf("read events (%d, %d]: %w", from, to, err)
	}
	next := to
	if n == updaterBatch {
		next = last // more may follow in (last, to]
	}
	err = u.db.Tx(ctx, func(tx *sql.Tx) error {
		for room, rules := range roomsTouched {
			// A room first seen through a membership needs its row too.
			if !rules {
				var exists int
				err := tx.QueryRowContext(ctx, `SELECT 1 FROM user_directory_rooms WHERE room_id = $1`, room).Scan(&exists)
				if err == nil {
					continue
				}
				if !storage.IsNotFound(err) {
					return fmt.Errorf("read user directory room %s: %w", room, err)
				}
			}
			if err := u.store.refreshRoom(ctx, tx, room); err != nil {
				return err
			}
		}
		for _, k := range members {
			if err := u.store.refreshMember(ctx, tx, k.room, k.user); err != nil {
				return err
			}
		}
		return u.store.advancePosition(ctx, tx, next)
	})
	if err != nil {
		return from, err
	}
	if n > 0 {
		u.log.Debug("user directory updated", "from", from, "to", next, "events", n)
	}
	return next, nil
}

// rebuildChunk is the rooms (or users) written per transaction.
const rebuildChunk = 200

// Rebuild fills the directory from current state and the profiles, then
// saves the events position it started from: events after it are applied
// by Run, and applying one whose effect the rebuild already saw is
// harmless (rows are derived from current state). Until the position is
// saved, a restart rebuilds from scratch.
func (u *Updater) Rebuild(ctx context.Context) (int64, error) {
	start := u.reg.Current(streams.Events)
	u.log.Info("building the user directory", "events_position", start)
	err := u.db.Tx(ctx, func(tx *sql.Tx) error {
		for _, q := range []string{`DELETE FROM user_directory_stream_pos`, `DELETE FROM user_directory_members`,
			`DELETE FROM user_directory_rooms`} {
			if _, err := tx.ExecContext(ctx, q); err != nil {
				return fmt.Errorf("clear user directory: %w", err)
			}
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	if err := u.rebuildProfiles(ctx); err != nil {
		return 0, err
	}
	rooms := 0
	after := ""
	for {
		var ids []string
		rows, err := u.db.Reader().QueryContext(ctx, `SELECT room_id FROM rooms WHERE room_id > $1 ORDER BY room_id LIMIT $2`, after, rebuildChunk)
		if err != nil {
			return 0, fmt.Errorf("list rooms: %w", err)
		}
		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				rows.Close()
				return 0, fmt.Errorf("list rooms: %w", err)
			}
			ids = append(ids, id)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return 0, fmt.Errorf("list rooms: %w", err)
		}
		if len(ids) == 0 {
			break
		}
		err = u.db.Tx(ctx, func(tx *sql.Tx) error {
			for _, id := range ids {
				if err := u.rebuildRoom(ctx, tx, id); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return 0, err
		}
		rooms += len(ids)
		after = ids[len(ids)-1]
	}
	err = u.db.Tx(ctx, func(tx *sql.Tx) error { return u.store.setPosition(ctx, tx, start) })
	if err != nil {
		return 0, err
	}
	u.log.Info("built the user directory", "rooms", rooms, "events_position", start)
	return start, nil
}

func (u *Updater) rebuildRoom(ctx context.Context, tx *sql.Tx, roomID string) error {
	if err := u.store.refreshRoom(ctx, tx, roomID); err != nil {
		return err
	}
	rows, err := tx.QueryContext(ctx, `SELECT cs.state_key, e.json FROM current_state cs JOIN events e ON e.event_id = cs.event_id
		WHERE cs.room_id = $1 AND cs.type = 'm.room.member' AND cs.membership = 'join'`, roomID)
	if err != nil {
		return fmt.Errorf("read members of %s: %w", roomID, err)
	}
	type member struct{ user, js string }
	var ms []member
	for rows.Next() {
		var m member
		if err := rows.Scan(&m.user, &m.js); err != nil {
			rows.Close()
			return fmt.Errorf("read members of %s: %w", roomID, err)
		}
		ms = append(ms, m)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read members of %s: %w", roomID, err)
	}
	for _, m := range ms {
		if err := u.store.putMember(ctx, tx, roomID, m.user, contentOf(m.js)); err != nil {
			return err
		}
	}
	return nil
}

// rebuildProfiles copies the local users' profiles that the directory does
// not have yet (a database from before the directory existed). Rows it
// has are kept: the profile writes keep them current, and overwriting one
// here could put back a profile older than a change made meanwhile.
func (u *Updater) rebuildProfiles(ctx context.Context) error {
	after := ""
	for {
		type prof struct {
			user         string
			name, avatar sql.NullString
		}
		var ps []prof
		rows, err := u.db.Reader().QueryContext(ctx, `SELECT u.user_id, p.displayname, p.avatar_url FROM users u
			LEFT JOIN profiles p ON p.user_id = u.user_id
			WHERE u.user_id > $1 AND NOT EXISTS (SELECT 1 FROM user_directory d WHERE d.user_id = u.user_id)
			ORDER BY u.user_id LIMIT $2`, after, rebuildChunk)
		if err != nil {
			return fmt.Errorf("list profiles: %w", err)
		}
		for rows.Next() {
			var p prof
			if err := rows.Scan(&p.user, &p.name, &p.avatar); err != nil {
				rows.Close()
				return fmt.Errorf("list profiles: %w", err)
			}
			ps = append(ps, p)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return fmt.Errorf("list profiles: %w", err)
		}
		if len(ps) == 0 {
			return nil
		}
		err = u.db.Tx(ctx, func(tx *sql.Tx) error {
			for _, p := range ps {
				var name, avatar *string
				if p.name.Valid {
					name = &p.name.String
				}
				if p.avatar.Valid {
					avatar = &p.avatar.String
				}
				_, err := tx.ExecContext(ctx, `INSERT INTO user_directory (user_id, display_name, avatar_url, words)
					VALUES ($1, $2, $3, $4) ON CONFLICT (user_id) DO NOTHING`,
					p.user, nullable(name), nullable(avatar), wordsOf(name, p.user))
				if err != nil {
					return fmt.Errorf("copy profile of %s: %w", p.user, err)
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		after = ps[len(ps)-1].user
	}
}
