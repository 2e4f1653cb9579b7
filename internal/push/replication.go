package push

import (
	"context"
	"encoding/json"
	"fmt"

	"ganglion/internal/storage"
	"ganglion/internal/streams"
)

// Source is the push_rules stream's replication source. Rows are Synapse's
// [user_id]: the user whose rules changed.
type Source struct {
	db      *storage.DB
	changed func(userID string)
}

// NewSource builds the source; changed hears of every user whose rules
// another process changed, before the position advances.
func NewSource(db *storage.DB, changed func(userID string)) *Source {
	return &Source{db: db, changed: changed}
}

var _ streams.Source = (*Source)(nil)

// Rows implements streams.Source (single writer: writer is not filtered).
func (s *Source) Rows(ctx context.Context, writer string, from, to int64, limit int) ([]streams.Row, error) {
	rows, err := s.db.Reader().QueryContext(ctx, `SELECT stream_id, user_id FROM push_rules_users
		WHERE stream_id > $1 AND stream_id <= $2 ORDER BY stream_id LIMIT $3`, from, to, limit)
	if err != nil {
		return nil, fmt.Errorf("read push rules rows: %w", err)
	}
	defer rows.Close()
	var out []streams.Row
	for rows.Next() {
		var id int64
		var user string
		if err := rows.Scan(&id, &user); err != nil {
			return nil, fmt.Errorf("read push rules rows: %w", err)
		}
		b, err := json.Marshal([]string{user})
		if err != nil {
			return nil, err
		}
		out = append(out, streams.Row{Token: id, Data: b})
	}
	return out, rows.Err()
}

// Apply implements streams.Source: the user's cached rules go, and the
// user's syncs wake (m.push_rules changed).
func (s *Source) Apply(ctx context.Context, writer string, row streams.Row) []string {
	var f []string
	if json.Unmarshal(row.Data, &f) != nil || len(f) < 1 {
		return nil
	}
	if s.changed != nil {
		s.changed(f[0])
	}
	return []string{streams.UserKey(f[0])}
}
