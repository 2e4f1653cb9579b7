package presence

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"ganglion/internal/storage"
	"ganglion/internal/streams"
)

// Writer changes presence. Sync holds one; so does the presence endpoint.
type Writer interface {
	// SetPresence sets the user's state; with setStatus it also sets the
	// status message ("" clears it; going offline always clears it).
	// Setting online counts as activity. Sync calls it with
	// setStatus=false for its set_presence parameter (unless "offline",
	// which leaves presence alone). It returns the presence stream
	// position of the row it wrote, or the current position if the change
	// was not worth a row.
	SetPresence(ctx context.Context, userID, state, statusMsg string, setStatus bool) (int64, error)
	// SyncPresence is SetPresence(ctx, userID, state, "", false) for a
	// sync's set_presence parameter. Unlike an explicit PUT /presence it
	// may be skipped when this process knows the writer already has that
	// state (every /sync carries it).
	SyncPresence(ctx context.Context, userID, state string) error
	// BumpActive records activity (sending an event, a receipt, typing):
	// last_active moves to now and an unavailable user comes back online.
	BumpActive(ctx context.Context, userID string) error
	// SyncStarted and SyncEnded bracket every /sync request (Synapse's
	// USER_SYNC). While any sync of a user is in progress they do not time
	// out to offline; SyncOnlineTimeout after the last one ends, they do.
	// They never block on I/O.
	SyncStarted(userID string)
	SyncEnded(userID string)
}

var (
	_ Writer = (*LocalWriter)(nil)
	_ Writer = NoopWriter{}
)

// NoopWriter is the writer when presence is disabled or "untracked": users'
// own activity changes nothing.
type NoopWriter struct{}

func (NoopWriter) SetPresence(context.Context, string, string, string, bool) (int64, error) {
	return 0, nil
}
func (NoopWriter) SyncPresence(context.Context, string, string) error { return nil }
func (NoopWriter) BumpActive(context.Context, string) error           { return nil }
func (NoopWriter) SyncStarted(string)                                 {}
func (NoopWriter) SyncEnded(string)                                   {}

// WriterOptions tune the local writer; zero values mean the defaults.
type WriterOptions struct {
	// Now is the clock (tests drive the timers with a fake one).
	Now func() time.Time
	// CheckInterval is how often Run looks for timed-out users.
	CheckInterval time.Duration
	// ServerName, when set, keeps other servers' users (whose presence
	// their servers report, SetRemotePresence) out of the local timers.
	ServerName string
}

// FlushInterval is how often refreshed last-active and last-sync times are
// written in place, as Synapse persists them: every sync refreshes them,
// and a write per sync would cost more than the minute of staleness that
// GET /presence on another process may see.
const FlushInterval = time.Minute

// LocalWriter runs the presence state machine on the presence stream's
// writer. State lives in memory for every user who is not offline (loaded
// at start-up, so timers survive a restart). Changes worth telling others
// about are written at once as stream rows; mere refreshes of last_active
// and last sync are flushed in place by Run every FlushInterval.
type LocalWriter struct {
	tw       *streams.TableWriter
	db       *storage.DB
	rooms    Rooms
	now      func() time.Time
	interval time.Duration
	log      *slog.Logger

	// writeMu serialises changes (and flushes), so each user's rows are
	// written in the order their in-memory state changed. Presence changes
	// worth a row are rare next to syncs, which never take it.
	writeMu sync.Mutex

	// mu guards the maps below; it is never held across I/O.
	mu    sync.Mutex
	users map[string]*status
	syncs map[string]*syncing
	dirty map[string]bool
}

// syncing tracks a user's /sync requests in progress on any process.
type syncing struct {
	count int
	last  int64 // when the last one started or ended (unix ms)
}

// NewLocalWriter resumes the presence stream and loads every user who is
// not offline, so their timers run from where they were: a user who was
// online when the writer stopped goes offline SyncOnlineTimeout after their
// last recorded sync unless they sync again.
func NewLocalWriter(ctx context.Context, db *storage.DB, reg *streams.Registry, rooms Rooms, opts WriterOptions, log *slog.Logger) (*LocalWriter, error) {
	tw, err := streams.NewTableWriter(ctx, db, reg, streams.Presence, "presence", "stream_id", "")
	if err != nil {
		return nil, err
	}
	w := &LocalWriter{tw: tw, db: db, rooms: rooms, now: opts.Now, interval: opts.CheckInterval, log: log,
		users: map[string]*status{}, syncs: map[string]*syncing{}, dirty: map[string]bool{}}
	if w.now == nil {
		w.now = time.Now
	}
	if w.interval <= 0 {
		w.interval = DefaultCheckInterval
	}
	rows, err := db.Reader().QueryContext(ctx, `SELECT user_id, state, status_msg, last_active_ts, last_user_sync_ts, currently_active
		FROM presence WHERE state <> 'offline'`)
	if err != nil {
		return nil, fmt.Errorf("load presence: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var userID string
		var s status
		var msg sql.NullString
		if err := rows.Scan(&userID, &s.state, &msg, &s.lastActive, &s.lastSync, &s.currentlyActive); err != nil {
			return nil, fmt.Errorf("load presence: %w", err)
		}
		if msg.Valid {
			s.statusMsg = &msg.String
		}
		if opts.ServerName != "" && !strings.HasSuffix(userID, ":"+opts.ServerName) {
			continue
		}
		w.users[userID] = &s
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("load presence: %w", err)
	}
	return w, nil
}

// Position is the writer's committed position.
func (w *LocalWriter) Position() int64 { return w.tw.Position() }

func (w *LocalWriter) nowMS() int64 { return w.now().UnixMilli() }

// SetPresence implements Writer.
func (w *LocalWriter) SetPresence(ctx context.Context, userID, state, statusMsg string, setStatus bool) (int64, error) {
	if !ValidState(state) {
		return 0, fmt.Errorf("set presence of %s to %q: %w", userID, state, ErrInvalidState)
	}
	return w.update(ctx, userID, func(s *status, now int64, _ bool) {
		s.state = state
		if setStatus || state == Offline {
			s.statusMsg = nil
			if statusMsg != "" && state != Offline {
				msg := statusMsg
				s.statusMsg = &msg
			}
		}
		if state == Online {
			s.lastActive = now
		}
	})
}

// SyncPresence implements Writer. The writer's state is authoritative, so
// there is nothing to skip: an unchanged state writes no row anyway.
func (w *LocalWriter) SyncPresence(ctx context.Context, userID, state string) error {
	_, err := w.SetPresence(ctx, userID, state, "", false)
	return err
}

// BumpActive implements Writer.
func (w *LocalWriter) BumpActive(ctx context.Context, userID string) error {
	_, err := w.update(ctx, userID, func(s *status, now int64, _ bool) {
		s.lastActive = now
		if s.state == Unavailable {
			s.state = Online
		}
	})
	return err
}

// SyncStarted implements Writer.
func (w *LocalWriter) SyncStarted(userID string) {
	now := w.nowMS()
	w.mu.Lock()
	defer w.mu.Unlock()
	sy := w.syncs[userID]
	if sy == nil {
		sy = &syncing{}
		w.syncs[userID] = sy
	}
	sy.count++
	sy.last = now
	if s := w.users[userID]; s != nil {
		s.lastSync = now
		w.dirty[userID] = true
	}
}

// SyncEnded implements Writer.
func (w *LocalWriter) SyncEnded(userID string) {
	now := w.nowMS()
	w.mu.Lock()
	defer w.mu.Unlock()
	sy := w.syncs[userID]
	if sy == nil {
		return // an end without a start (a writer restart in between)
	}
	sy.count = max(sy.count-1, 0)
	sy.last = now
	if s := w.users[userID]; s != nil {
		s.lastSync = now
		w.dirty[userID] = true
	}
}

// update applies change to the user's presence and writes a stream row if
// the change is worth telling others about.
func (w *LocalWriter) update(ctx context.Context, userID string, change func(s *status, now int64, syncing bool)) (int64, error) {
	w.writeMu.Lock()
	defer w.writeMu.Unlock()
	prev, err := w.current(ctx, userID)
	if err != nil {
		return 0, err
	}
	now := w.nowMS()
	next := prev
	w.mu.Lock()
	sy := w.syncs[userID]
	isSyncing := sy != nil && sy.count > 0
	if sy != nil {
		next.lastSync = max(next.lastSync, sy.last)
	}
	w.mu.Unlock()
	change(&next, now, isSyncing)
	settle(&next, now)

	id := w.tw.Position()
	if shouldNotify(prev, next) {
		wake, err := w.interestedKeys(ctx, userID)
		if err != nil {
			return 0, err
		}
		id, err = w.tw.Write(ctx, func(tx *sql.Tx, id int64) error {
			_, err := tx.ExecContext(ctx, `INSERT INTO presence
				(user_id, state, status_msg, last_active_ts, last_user_sync_ts, currently_active, stream_id)
				VALUES ($1, $2, $3, $4, $5, $6, $7)
				ON CONFLICT (user_id) DO UPDATE SET state = excluded.state, status_msg = excluded.status_msg,
				last_active_ts = excluded.last_active_ts, last_user_sync_ts = excluded.last_user_sync_ts,
				currently_active = excluded.currently_active, stream_id = excluded.stream_id`,
				userID, next.state, next.statusMsg, next.lastActive, next.lastSync, next.currentlyActive, id)
			return err
		}, wake...)
		if err != nil {
			return 0, fmt.Errorf("write presence of %s: %w", userID, err)
		}
		w.log.Debug("presence changed", "user_id", userID, "presence", next.state, "stream_id", id)
	}

	w.mu.Lock()
	defer w.mu.Unlock()
	if cur := w.users[userID]; cur != nil {
		// A sync may have started or ended while we wrote.
		next.lastSync = max(next.lastSync, cur.lastSync)
	}
	w.users[userID] = &next
	if !shouldNotify(prev, next) && (next.lastActive != prev.lastActive || next.lastSync != prev.lastSync) {
		w.dirty[userID] = true
	}
	return id, nil
}

// current is the user's presence: from memory, else the database (users
// who are offline are not kept in memory), else offline.
func (w *LocalWriter) current(ctx context.Context, userID string) (status, error) {
	w.mu.Lock()
	s := w.users[userID]
	w.mu.Unlock()
	if s != nil {
		return *s, nil
	}
	var st status
	var msg sql.NullString
	err := w.db.Reader().QueryRowContext(ctx, `SELECT state, status_msg, last_active_ts, last_user_sync_ts, currently_active
		FROM presence WHERE user_id = $1`, userID).Scan(&st.state, &msg, &st.lastActive, &st.lastSync, &st.currentlyActive)
	if errors.Is(err, sql.ErrNoRows) {
		return status{state: Offline}, nil
	}
	if err != nil {
		return status{}, fmt.Errorf("load presence of %s: %w", userID, err)
	}
	if msg.Valid {
		st.statusMsg = &msg.String
	}
	return st, nil
}

// interestedKeys are the notifier keys a change of userID's presence wakes:
// the user and the rooms they are joined to. Everyone who shares a room
// with them listens on that room, so waking the room reaches them without
// listing its members (a thousand-member room would mean a thousand keys
// and a member query per change).
func (w *LocalWriter) interestedKeys(ctx context.Context, userID string) ([]string, error) {
	return presenceWakeKeys(ctx, w.rooms, userID)
}

// presenceWakeKeys is interestedKeys for any process.
func presenceWakeKeys(ctx context.Context, rooms Rooms, userID string) ([]string, error) {
	roomIDs, err := rooms.RoomsForUser(ctx, userID, "join")
	if err != nil {
		return nil, fmt.Errorf("rooms of %s: %w", userID, err)
	}
	keys := make([]string, 0, len(roomIDs)+1)
	keys = append(keys, streams.UserKey(userID))
	for _, r := range roomIDs {
		keys = append(keys, streams.RoomKey(r))
	}
	slices.Sort(keys[1:])
	return keys, nil
}

// coMembers is the set of users sharing a joined room with userID
// (userID included when they are in any room).
func coMembers(ctx context.Context, rooms Rooms, userID string) (map[string]bool, error) {
	roomIDs, err := rooms.RoomsForUser(ctx, userID, "join")
	if err != nil {
		return nil, fmt.Errorf("rooms of %s: %w", userID, err)
	}
	out := map[string]bool{}
	for _, r := range roomIDs {
		members, err := rooms.JoinedMembers(ctx, r)
		if err != nil {
			return nil, fmt.Errorf("members of %s: %w", r, err)
		}
		for _, m := range members {
			out[m] = true
		}
	}
	return out, nil
}

// Run checks the timers every CheckInterval and flushes refreshed
// timestamps every FlushInterval, until ctx ends; then it flushes once more
// and saves the stream position. A single loop, rather than a timer per
// user: the timers are coarse, and one scan of the users who are not
// offline costs less than thousands of live timers.
func (w *LocalWriter) Run(ctx context.Context) error {
	t := time.NewTicker(w.interval)
	defer t.Stop()
	lastFlush := w.now()
	for {
		select {
		case <-ctx.Done():
			// The caller's context is over; give the final writes their
			// own short deadline so shutdown stays bounded.
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			return errors.Join(w.Flush(fctx), w.tw.SavePosition(fctx))
		case <-t.C:
			if err := w.CheckTimeouts(ctx); err != nil && ctx.Err() == nil {
				w.log.Warn("presence timeouts", "err", err)
			}
			if w.now().Sub(lastFlush) < FlushInterval {
				continue
			}
			lastFlush = w.now()
			if err := w.Flush(ctx); err != nil && ctx.Err() == nil {
				w.log.Warn("presence flush", "err", err)
			}
		}
	}
}

// CheckTimeouts applies the idle, sync and currently_active timers to every
// user who is not offline, writing a row for each transition. Run calls it;
// tests call it after moving their clock.
func (w *LocalWriter) CheckTimeouts(ctx context.Context) error {
	now := w.nowMS()
	var due []string
	w.mu.Lock()
	for userID, s := range w.users {
		sy := w.syncs[userID]
		isSyncing := sy != nil && sy.count > 0
		st := *s
		if sy != nil {
			st.lastSync = max(st.lastSync, sy.last)
		}
		if timedOut(st, isSyncing, now) {
			due = append(due, userID)
		} else if s.state == Offline && !isSyncing && !w.dirty[userID] {
			delete(w.users, userID) // offline users live in the database only
		}
	}
	for userID, sy := range w.syncs {
		if sy.count == 0 && now-sy.last > SyncOnlineTimeout.Milliseconds() {
			delete(w.syncs, userID)
		}
	}
	w.mu.Unlock()
	slices.Sort(due)
	var errs []error
	for _, userID := range due {
		// The timers are re-applied to the state as it is now, under
		// writeMu: the user may have become active since the scan.
		_, err := w.update(ctx, userID, func(s *status, now int64, syncing bool) { applyTimeouts(s, syncing, now) })
		if err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Flush writes refreshed last-active and last-sync times in place (no new
// stream id: nobody needs waking for them), so GET /presence on any process
// and a restarted writer see them.
func (w *LocalWriter) Flush(ctx context.Context) error {
	w.writeMu.Lock()
	defer w.writeMu.Unlock()
	type row struct {
		userID             string
		lastActive, synced int64
	}
	w.mu.Lock()
	rows := make([]row, 0, len(w.dirty))
	for userID := range w.dirty {
		if s := w.users[userID]; s != nil {
			rows = append(rows, row{userID, s.lastActive, s.lastSync})
		}
	}
	clear(w.dirty)
	w.mu.Unlock()
	if len(rows) == 0 {
		return nil
	}
	err := w.db.Tx(ctx, func(tx *sql.Tx) error {
		for _, r := range rows {
			if _, err := tx.ExecContext(ctx, `UPDATE presence SET last_active_ts = $2, last_user_sync_ts = $3 WHERE user_id = $1`,
				r.userID, r.lastActive, r.synced); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		// Put them back so the next flush retries.
		w.mu.Lock()
		for _, r := range rows {
			w.dirty[r.userID] = true
		}
		w.mu.Unlock()
		return fmt.Errorf("flush presence: %w", err)
	}
	return nil
}
