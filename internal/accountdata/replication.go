package accountdata

import (
	"context"
	"encoding/json"
	"fmt"

	"ganglion/internal/storage"
	"ganglion/internal/streams"
)

// Source is the account data stream's replication source. Rows are
// Synapse's [user_id, room_id|null, data_type] (tags included).
type Source struct{ db *storage.DB }

func NewSource(db *storage.DB) *Source { return &Source{db: db} }

var _ streams.Source = (*Source)(nil)

// Rows implements streams.Source (single writer: writer is not filtered).
func (s *Source) Rows(ctx context.Context, writer string, from, to int64, limit int) ([]streams.Row, error) {
	rows, err := s.db.Reader().QueryContext(ctx, `SELECT stream_id, user_id, room_id, type FROM account_data
		WHERE stream_id > $1 AND stream_id <= $2 ORDER BY stream_id LIMIT $3`, from, to, limit)
	if err != nil {
		return nil, fmt.Errorf("read account data rows: %w", err)
	}
	defer rows.Close()
	var out []streams.Row
	for rows.Next() {
		var id int64
		var user, room, typ string
		if err := rows.Scan(&id, &user, &room, &typ); err != nil {
			return nil, fmt.Errorf("read account data rows: %w", err)
		}
		var r any
		if room != "" {
			r = room
		}
		b, err := json.Marshal([]any{user, r, typ})
		if err != nil {
			return nil, err
		}
		out = append(out, streams.Row{Token: id, Data: b})
	}
	return out, rows.Err()
}

// Apply implements streams.Source: account data wakes its user.
func (s *Source) Apply(ctx context.Context, writer string, row streams.Row) []string {
	var f []any
	if json.Unmarshal(row.Data, &f) != nil || len(f) < 1 {
		return nil
	}
	user, _ := f[0].(string)
	return []string{streams.UserKey(user)}
}
