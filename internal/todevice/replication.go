package todevice

import (
	"context"
	"encoding/json"
	"fmt"

	"ganglion/internal/storage"
	"ganglion/internal/streams"
)

// Source is the to-device stream's replication source. Rows are Synapse's
// [entity]: the recipient user (one row per recipient of a send, all with
// the send's stream id).
type Source struct{ db *storage.DB }

func NewSource(db *storage.DB) *Source { return &Source{db: db} }

var _ streams.Source = (*Source)(nil)

// Rows implements streams.Source. Delivered messages are deleted; their
// recipients already have them, so nothing needs waking for them.
func (s *Source) Rows(ctx context.Context, writer string, from, to int64, limit int) ([]streams.Row, error) {
	rows, err := s.db.Reader().QueryContext(ctx, `SELECT DISTINCT stream_id, user_id FROM device_inbox
		WHERE stream_id > $1 AND stream_id <= $2 ORDER BY stream_id, user_id LIMIT $3`, from, to, limit)
	if err != nil {
		return nil, fmt.Errorf("read to-device rows: %w", err)
	}
	defer rows.Close()
	var out []streams.Row
	for rows.Next() {
		var id int64
		var user string
		if err := rows.Scan(&id, &user); err != nil {
			return nil, fmt.Errorf("read to-device rows: %w", err)
		}
		b, _ := json.Marshal([]string{user})
		out = append(out, streams.Row{Token: id, Data: b})
	}
	return out, rows.Err()
}

// Apply implements streams.Source: a message wakes its recipient.
func (s *Source) Apply(ctx context.Context, writer string, row streams.Row) []string {
	var f []string
	if json.Unmarshal(row.Data, &f) != nil || len(f) < 1 {
		return nil
	}
	return []string{streams.UserKey(f[0])}
}
