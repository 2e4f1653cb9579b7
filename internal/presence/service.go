package presence

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"ganglion/internal/ratelimit"
	"log/slog"
	"time"

	"ganglion/internal/storage"
	"ganglion/internal/streams"
)

// EventType is the type of presence events in sync.
const EventType = "m.presence"

// Content is a user's presence as clients see it (the content of an
// m.presence event and the body of GET /presence/{userId}/status).
type Content struct {
	Presence      string  `json:"presence"`
	LastActiveAgo *int64  `json:"last_active_ago,omitempty"`
	StatusMsg     *string `json:"status_msg,omitempty"`
	// CurrentlyActive is only sent for online users, as Synapse does: the
	// spec defines it for the online state.
	CurrentlyActive *bool `json:"currently_active,omitempty"`
}

// Event is an m.presence event for sync.
type Event struct {
	Type    string  `json:"type"`
	Sender  string  `json:"sender"`
	Content Content `json:"content"`
}

// Options configure the read side.
type Options struct {
	// Enabled is presence.enabled. When false, sync gets no presence and
	// GET answers offline, as Synapse does.
	Enabled bool
	// IncludeOfflineOnInitialSync is presence.include_offline_users_on_sync:
	// Synapse leaves offline users out of initial syncs by default.
	IncludeOfflineOnInitialSync bool
	// ServerName decides which users are local.
	ServerName string
	// Now is the clock for last_active_ago.
	Now func() time.Time
}

// Service reads presence (for sync and GET /presence on any process),
// decides who may see whom, and serves the presence endpoints, writing
// through a Writer.
type Service struct {
	db    *storage.DB
	reg   *streams.Registry
	w     Writer
	rooms Rooms
	opts  Options
	log   *slog.Logger
	// perUser is rc_presence.per_user, applied to PUT presence.
	perUser *ratelimit.Limiter
}

// SetRateLimit installs rc_presence.per_user; nil (the default) limits
// nothing.
func (s *Service) SetRateLimit(l *ratelimit.Limiter) { s.perUser = l }

// NewService builds the read side over w (local, remote or NoopWriter).
func NewService(db *storage.DB, reg *streams.Registry, w Writer, rooms Rooms, opts Options, log *slog.Logger) *Service {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Service{db: db, reg: reg, w: w, rooms: rooms, opts: opts, log: log}
}

// Writer is the writer the service writes through (sync calls
// SyncStarted/SyncEnded/SetPresence on it).
func (s *Service) Writer() Writer { return s.w }

// Enabled reports presence.enabled.
func (s *Service) Enabled() bool { return s.opts.Enabled }

// Position is how far this process may read the presence stream.
func (s *Service) Position() int64 { return s.reg.Current(streams.Presence) }

// row is one stored presence row.
type row struct {
	userID string
	status
}

const rowColumns = `user_id, state, status_msg, last_active_ts, last_user_sync_ts, currently_active`

func scanRows(rows *sql.Rows) ([]row, error) {
	defer rows.Close()
	var out []row
	for rows.Next() {
		var r row
		var msg sql.NullString
		if err := rows.Scan(&r.userID, &r.state, &msg, &r.lastActive, &r.lastSync, &r.currentlyActive); err != nil {
			return nil, err
		}
		if msg.Valid {
			r.statusMsg = &msg.String
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

func (s *Service) content(st status) Content {
	c := Content{Presence: st.state, StatusMsg: st.statusMsg}
	if st.lastActive > 0 {
		ago := max(s.opts.Now().UnixMilli()-st.lastActive, 0)
		c.LastActiveAgo = &ago
	}
	if st.state == Online {
		active := st.currentlyActive
		c.CurrentlyActive = &active
	}
	return c
}

func (s *Service) event(r row) Event {
	return Event{Type: EventType, Sender: r.userID, Content: s.content(r.status)}
}

// Since returns the presence forUser may see that changed in (from, to]:
// their own and that of everyone sharing a joined room with them. from 0
// (initial sync) returns the current presence of all of them (without
// offline users unless IncludeOfflineOnInitialSync). Users who newly
// share a room with forUser are not here unless their presence changed;
// sync fetches those with ForUsers.
func (s *Service) Since(ctx context.Context, forUser string, from, to int64) ([]Event, error) {
	if !s.opts.Enabled {
		return nil, nil
	}
	if from <= 0 {
		users, err := coMembers(ctx, s.rooms, forUser)
		if err != nil {
			return nil, fmt.Errorf("presence for %s: %w", forUser, err)
		}
		users[forUser] = true
		ids := make([]string, 0, len(users))
		for u := range users {
			ids = append(ids, u)
		}
		rows, err := s.rowsFor(ctx, ids, to)
		if err != nil {
			return nil, fmt.Errorf("presence for %s: %w", forUser, err)
		}
		var out []Event
		for _, r := range rows {
			if r.state != Offline || s.opts.IncludeOfflineOnInitialSync {
				out = append(out, s.event(r))
			}
		}
		return out, nil
	}
	q, err := s.db.Reader().QueryContext(ctx, `SELECT `+rowColumns+` FROM presence
		WHERE stream_id > $1 AND stream_id <= $2 ORDER BY stream_id`, from, to)
	if err != nil {
		return nil, fmt.Errorf("presence changes in (%d, %d]: %w", from, to, err)
	}
	rows, err := scanRows(q)
	if err != nil {
		return nil, fmt.Errorf("presence changes in (%d, %d]: %w", from, to, err)
	}
	if len(rows) == 0 {
		return nil, nil
	}
	// One query for all changed users: after many users come online at
	// once (a crowd's first syncs), asking per user would cost a query
	// per changed user in every sync.
	others := make([]string, 0, len(rows))
	for _, r := range rows {
		if r.userID != forUser {
			others = append(others, r.userID)
		}
	}
	sharing := map[string]bool{}
	if len(others) > 0 {
		if sharing, err = s.rooms.UsersSharingJoinedRoom(ctx, forUser, others); err != nil {
			return nil, fmt.Errorf("presence for %s: %w", forUser, err)
		}
	}
	var out []Event
	for _, r := range rows {
		if r.userID == forUser || sharing[r.userID] {
			out = append(out, s.event(r))
		}
	}
	return out, nil
}

// ForUsers returns the current presence of users (those without a row are
// offline and left out), for sync to send when forUser newly shares a room
// with them. The caller has checked that they may be seen.
func (s *Service) ForUsers(ctx context.Context, userIDs []string) ([]Event, error) {
	if !s.opts.Enabled || len(userIDs) == 0 {
		return nil, nil
	}
	rows, err := s.rowsFor(ctx, userIDs, 1<<62)
	if err != nil {
		return nil, fmt.Errorf("presence of %d users: %w", len(userIDs), err)
	}
	out := make([]Event, 0, len(rows))
	for _, r := range rows {
		out = append(out, s.event(r))
	}
	return out, nil
}

// rowsFor loads the rows of users with stream_id <= to, in chunks that
// stay below either engine's bind-parameter limit.
func (s *Service) rowsFor(ctx context.Context, userIDs []string, to int64) ([]row, error) {
	const chunk = 500
	var out []row
	for i := 0; i < len(userIDs); i += chunk {
		part := userIDs[i:min(i+chunk, len(userIDs))]
		args, in := storage.AppendIn([]any{to}, part)
		q, err := s.db.Reader().QueryContext(ctx, `SELECT `+rowColumns+` FROM presence
			WHERE stream_id <= $1 AND user_id IN (`+in+`) ORDER BY user_id`, args...)
		if err != nil {
			return nil, err
		}
		rows, err := scanRows(q)
		if err != nil {
			return nil, err
		}
		out = append(out, rows...)
	}
	return out, nil
}

// CanSee reports whether observer may see target's presence: themselves,
// or someone sharing a joined room.
func (s *Service) CanSee(ctx context.Context, observer, target string) (bool, error) {
	if observer == target {
		return true, nil
	}
	sharing, err := s.rooms.UsersSharingJoinedRoom(ctx, observer, []string{target})
	if err != nil {
		return false, fmt.Errorf("presence visibility of %s to %s: %w", target, observer, err)
	}
	return sharing[target], nil
}

// Status is a user's current presence (offline if never set).
func (s *Service) Status(ctx context.Context, userID string) (Content, error) {
	if !s.opts.Enabled {
		return Content{Presence: Offline}, nil
	}
	var st status
	var msg sql.NullString
	err := s.db.Reader().QueryRowContext(ctx, `SELECT state, status_msg, last_active_ts, last_user_sync_ts, currently_active
		FROM presence WHERE user_id = $1`, userID).Scan(&st.state, &msg, &st.lastActive, &st.lastSync, &st.currentlyActive)
	if errors.Is(err, sql.ErrNoRows) {
		return Content{Presence: Offline}, nil
	}
	if err != nil {
		return Content{}, fmt.Errorf("presence of %s: %w", userID, err)
	}
	if msg.Valid {
		st.statusMsg = &msg.String
	}
	return s.content(st), nil
}

// Change is one user's presence as it stood at a stream position.
type Change struct {
	StreamID int64
	Event    Event
}

// Changes returns the presence rows changed in (from, to], oldest first,
// at most limit, for application services (MSC2409); nothing when presence
// is disabled. A user has one row, so a user who changed twice appears once,
// at the latest state.
func (s *Service) Changes(ctx context.Context, from, to int64, limit int) ([]Change, error) {
	if !s.opts.Enabled {
		return nil, nil
	}
	q, err := s.db.Reader().QueryContext(ctx, `SELECT stream_id, `+rowColumns+` FROM presence
		WHERE stream_id > $1 AND stream_id <= $2 ORDER BY stream_id LIMIT $3`, from, to, limit)
	if err != nil {
		return nil, fmt.Errorf("presence changes in (%d, %d]: %w", from, to, err)
	}
	defer q.Close()
	var out []Change
	for q.Next() {
		var c Change
		var r row
		var msg sql.NullString
		if err := q.Scan(&c.StreamID, &r.userID, &r.state, &msg, &r.lastActive, &r.lastSync, &r.currentlyActive); err != nil {
			return nil, fmt.Errorf("presence changes in (%d, %d]: %w", from, to, err)
		}
		if msg.Valid {
			r.statusMsg = &msg.String
		}
		c.Event = s.event(r)
		out = append(out, c)
	}
	if err := q.Err(); err != nil {
		return nil, fmt.Errorf("presence changes in (%d, %d]: %w", from, to, err)
	}
	return out, nil
}
