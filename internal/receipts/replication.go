package receipts

import (
	"context"
	"encoding/json"
	"fmt"

	"ganglion/internal/storage"
	"ganglion/internal/streams"
)

// Source is the receipts stream's replication source. Rows are Synapse's
// [room_id, receipt_type, user_id, event_id, thread_id, data].
type Source struct{ db *storage.DB }

func NewSource(db *storage.DB) *Source { return &Source{db: db} }

var _ streams.Source = (*Source)(nil)

// Rows implements streams.Source.
func (s *Source) Rows(ctx context.Context, writer string, from, to int64, limit int) ([]streams.Row, error) {
	rows, err := s.db.Reader().QueryContext(ctx, `SELECT stream_id, room_id, receipt_type, user_id, event_id, thread_id, data
		FROM receipts WHERE instance_name = $1 AND stream_id > $2 AND stream_id <= $3 ORDER BY stream_id LIMIT $4`,
		writer, from, to, limit)
	if err != nil {
		return nil, fmt.Errorf("read receipts rows of %s: %w", writer, err)
	}
	defer rows.Close()
	var out []streams.Row
	for rows.Next() {
		var id int64
		var room, typ, user, event, thread, data string
		if err := rows.Scan(&id, &room, &typ, &user, &event, &thread, &data); err != nil {
			return nil, fmt.Errorf("read receipts rows: %w", err)
		}
		var th any
		if thread != "" {
			th = thread
		}
		b, err := json.Marshal([]any{room, typ, user, event, th, json.RawMessage(data)})
		if err != nil {
			return nil, err
		}
		out = append(out, streams.Row{Token: id, Data: b})
	}
	return out, rows.Err()
}

// Apply implements streams.Source: a receipt wakes its room.
func (s *Source) Apply(ctx context.Context, writer string, row streams.Row) []string {
	var f []json.RawMessage
	if json.Unmarshal(row.Data, &f) != nil || len(f) < 1 {
		return nil
	}
	var room string
	_ = json.Unmarshal(f[0], &room)
	return []string{streams.RoomKey(room)}
}
