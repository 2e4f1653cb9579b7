package presence

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"

	"ganglion/internal/mxhttp"
	"ganglion/internal/replication"
	"ganglion/internal/streams"
)

// Remote is the presence of another server's user as their server
// reported it (an m.presence EDU).
type Remote struct {
	State           string  `json:"presence"`
	StatusMsg       *string `json:"status_msg,omitempty"`
	LastActiveAgo   int64   `json:"last_active_ago"`
	CurrentlyActive bool    `json:"currently_active"`
}

// FederationWriter records remote users' presence on the presence
// stream's writer: the local writer, or the remote one forwarding to it.
type FederationWriter interface {
	SetRemotePresence(ctx context.Context, userID string, p Remote) error
}

var (
	_ FederationWriter = (*LocalWriter)(nil)
	_ FederationWriter = (*RemoteWriter)(nil)
)

// SetRemotePresence implements FederationWriter. Remote users are not
// put in the state machine: their server runs the timers and tells us
// the outcome. A row is written (waking local users sharing a room) when
// the change is worth telling, by the same rule as local changes.
func (w *LocalWriter) SetRemotePresence(ctx context.Context, userID string, p Remote) error {
	if !ValidState(p.State) {
		return fmt.Errorf("presence of %s: %w %q", userID, ErrInvalidState, p.State)
	}
	w.writeMu.Lock()
	defer w.writeMu.Unlock()
	var prev status
	var msg sql.NullString
	err := w.db.Reader().QueryRowContext(ctx, `SELECT state, status_msg, last_active_ts, last_user_sync_ts, currently_active
		FROM presence WHERE user_id = $1`, userID).Scan(&prev.state, &msg, &prev.lastActive, &prev.lastSync, &prev.currentlyActive)
	switch {
	case err == sql.ErrNoRows:
		prev = status{state: Offline}
	case err != nil:
		return fmt.Errorf("load presence of %s: %w", userID, err)
	case msg.Valid:
		prev.statusMsg = &msg.String
	}
	now := w.nowMS()
	next := status{state: p.State, statusMsg: p.StatusMsg, lastActive: now - max(p.LastActiveAgo, 0),
		lastSync: prev.lastSync, currentlyActive: p.CurrentlyActive && p.State == Online}
	if p.State == Offline {
		next.statusMsg = nil
	}
	if !shouldNotify(prev, next) && prev.currentlyActive == next.currentlyActive {
		return nil
	}
	wake, err := w.interestedKeys(ctx, userID)
	if err != nil {
		return err
	}
	_, err = w.tw.Write(ctx, func(tx *sql.Tx, id int64) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO presence
			(user_id, state, status_msg, last_active_ts, last_user_sync_ts, currently_active, stream_id)
			VALUES ($1, $2, $3, $4, $5, $6, $7)
			ON CONFLICT (user_id) DO UPDATE SET state = excluded.state, status_msg = excluded.status_msg,
			last_active_ts = excluded.last_active_ts, currently_active = excluded.currently_active, stream_id = excluded.stream_id`,
			userID, next.state, next.statusMsg, next.lastActive, next.lastSync, next.currentlyActive, id)
		return err
	}, wake...)
	if err != nil {
		return fmt.Errorf("write presence of %s: %w", userID, err)
	}
	return nil
}

// SetRemoteEndpoint forwards a remote user's presence to the presence
// writer (setting the same presence twice writes one row).
var SetRemoteEndpoint = replication.Endpoint{Name: "presence_set_remote", PathArgs: []string{"user_id"}, Idempotent: true}

// ServeFederation registers the writer's endpoint for remote presence.
func ServeFederation(srv *replication.Server, w *LocalWriter) {
	e := SetRemoteEndpoint
	e.Handle = func(ctx context.Context, req *replication.Request) (any, error) {
		var p Remote
		if err := json.Unmarshal(req.Body, &p); err != nil {
			return nil, mxhttp.BadJSON("presence_set_remote: %v", err)
		}
		if err := w.SetRemotePresence(ctx, req.Args["user_id"], p); err != nil {
			return nil, err
		}
		return replication.WithPositions(struct{}{}, replication.StreamPositions{streams.Presence: w.Position()}), nil
	}
	srv.Register(e)
}

// SetRemotePresence implements FederationWriter.
func (w *RemoteWriter) SetRemotePresence(ctx context.Context, userID string, p Remote) error {
	return w.client.Call(ctx, w.writer, SetRemoteEndpoint, map[string]string{"user_id": userID}, p, nil)
}
