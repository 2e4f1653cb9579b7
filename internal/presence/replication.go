package presence

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"log/slog"

	"ganglion/internal/storage"
	"ganglion/internal/streams"
)

// Source is the presence stream's replication source. Rows are Synapse's
// [user_id, state, last_active_ts, last_federation_update_ts,
// last_user_sync_ts, status_msg, currently_active].
type Source struct {
	db    *storage.DB
	rooms Rooms
	log   *slog.Logger
	// onRow, if set, hears the user of every applied row (RemoteWriter.Forget).
	onRow func(userID string)
}

// OnRow registers f to hear the user of every presence row applied here.
func (s *Source) OnRow(f func(userID string)) { s.onRow = f }

func NewSource(db *storage.DB, rooms Rooms, log *slog.Logger) *Source {
	return &Source{db: db, rooms: rooms, log: log}
}

var _ streams.Source = (*Source)(nil)

// Rows implements streams.Source.
func (s *Source) Rows(ctx context.Context, writer string, from, to int64, limit int) ([]streams.Row, error) {
	rows, err := s.db.Reader().QueryContext(ctx, `SELECT stream_id, user_id, state, last_active_ts, last_user_sync_ts, status_msg, currently_active
		FROM presence WHERE stream_id > $1 AND stream_id <= $2 ORDER BY stream_id LIMIT $3`, from, to, limit)
	if err != nil {
		return nil, fmt.Errorf("read presence rows: %w", err)
	}
	defer rows.Close()
	var out []streams.Row
	for rows.Next() {
		var id, active, synced int64
		var user, state string
		var msg sql.NullString
		var current bool
		if err := rows.Scan(&id, &user, &state, &active, &synced, &msg, &current); err != nil {
			return nil, fmt.Errorf("read presence rows: %w", err)
		}
		var m any
		if msg.Valid {
			m = msg.String
		}
		b, _ := json.Marshal([]any{user, state, active, 0, synced, m, current})
		out = append(out, streams.Row{Token: id, Data: b})
	}
	return out, rows.Err()
}

// Apply implements streams.Source: a presence change wakes everyone who
// shares a room with the user, as on the writer.
func (s *Source) Apply(ctx context.Context, writer string, row streams.Row) []string {
	var f []any
	if json.Unmarshal(row.Data, &f) != nil || len(f) < 1 {
		return nil
	}
	user, _ := f[0].(string)
	if s.onRow != nil {
		s.onRow(user)
	}
	keys, err := presenceWakeKeys(ctx, s.rooms, user)
	if err != nil {
		s.log.Warn("presence: could not find who to wake", "user_id", user, "err", err)
		return []string{streams.UserKey(user)}
	}
	return keys
}
