package todevice

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"log/slog"
	"time"

	"ganglion/internal/storage"
	"ganglion/internal/streams"
)

// DefaultLimit is how many messages one sync delivers at most, as the spec
// recommends.
const DefaultLimit = 100

// Message is a to-device event as sync delivers it.
type Message struct {
	Sender  string          `json:"sender"`
	Type    string          `json:"type"`
	Content json.RawMessage `json:"content"`
}

// Service delivers to-device messages to sync, acknowledges them, serves
// PUT /sendToDevice and sends through a Writer.
type Service struct {
	db  *storage.DB
	reg *streams.Registry
	w   Writer
	log *slog.Logger
}

// NewService builds the service over w (local or remote).
func NewService(db *storage.DB, reg *streams.Registry, w Writer, log *slog.Logger) *Service {
	return &Service{db: db, reg: reg, w: w, log: log}
}

// Writer is the writer the service sends through.
func (s *Service) Writer() Writer { return s.w }

// Position is how far this process may read the to_device stream.
func (s *Service) Position() int64 { return s.reg.Current(streams.ToDevice) }

// Messages returns the device's messages with stream ids in (from, to], in
// order of arrival, at most limit (DefaultLimit if limit <= 0). upTo is the
// to_device position for the next sync token: the last returned id when
// more messages remain, else to. Messages stay in the inbox until Ack.
func (s *Service) Messages(ctx context.Context, userID, deviceID string, from, to int64, limit int) (msgs []Message, upTo int64, err error) {
	if limit <= 0 {
		limit = DefaultLimit
	}
	rows, err := s.db.Reader().QueryContext(ctx, `SELECT stream_id, sender, type, content FROM device_inbox
		WHERE user_id = $1 AND device_id = $2 AND stream_id > $3 AND stream_id <= $4
		ORDER BY stream_id LIMIT $5`, userID, deviceID, from, to, limit+1)
	if err != nil {
		return nil, 0, fmt.Errorf("to-device messages of %s/%s: %w", userID, deviceID, err)
	}
	defer rows.Close()
	var last int64
	more := false
	for rows.Next() {
		var id int64
		var m Message
		var content string
		if err := rows.Scan(&id, &m.Sender, &m.Type, &content); err != nil {
			return nil, 0, fmt.Errorf("to-device messages of %s/%s: %w", userID, deviceID, err)
		}
		if len(msgs) == limit {
			more = true
			break
		}
		m.Content = json.RawMessage(content)
		msgs = append(msgs, m)
		last = id
	}
	if err := rows.Err(); err != nil {
		return nil, 0, fmt.Errorf("to-device messages of %s/%s: %w", userID, deviceID, err)
	}
	if more {
		// Stop at the last message returned, so the rest come with the
		// next sync.
		return msgs, last, nil
	}
	return msgs, to, nil
}

// Ack deletes the device's messages with stream ids up to upTo: the client
// has presented a sync token at upTo, so it received them. Sync calls it
// with its since token's to_device position before reading new messages.
func (s *Service) Ack(ctx context.Context, userID, deviceID string, upTo int64) error {
	if upTo <= 0 {
		return nil
	}
	_, err := s.db.Exec(ctx, `DELETE FROM device_inbox WHERE user_id = $1 AND device_id = $2 AND stream_id <= $3`,
		userID, deviceID, upTo)
	if err != nil {
		return fmt.Errorf("acknowledge to-device messages of %s/%s up to %d: %w", userID, deviceID, upTo, err)
	}
	return nil
}

// DeleteDeviceInbox drops every pending message of a deleted device.
func (s *Service) DeleteDeviceInbox(ctx context.Context, userID, deviceID string) error {
	_, err := s.db.Exec(ctx, `DELETE FROM device_inbox WHERE user_id = $1 AND device_id = $2`, userID, deviceID)
	if err != nil {
		return fmt.Errorf("delete inbox of %s/%s: %w", userID, deviceID, err)
	}
	return nil
}

// PruneTxns forgets send transaction ids older than maxAge; a client
// retrying a send after that long would deliver it twice. Run it
// periodically from the background tasks instance.
func (s *Service) PruneTxns(ctx context.Context, now time.Time, maxAge time.Duration) (int64, error) {
	res, err := s.db.Exec(ctx, `DELETE FROM to_device_txns WHERE created_ts < $1`, now.Add(-maxAge).UnixMilli())
	if err != nil {
		return 0, fmt.Errorf("prune to-device txn ids: %w", err)
	}
	n, _ := res.RowsAffected()
	return n, nil
}

// InboxRow is one stored to-device message with its recipient.
type InboxRow struct {
	StreamID int64
	UserID   string
	DeviceID string
	Message
}

// Rows returns the messages of every recipient with stream ids in
// (from, to], for application services (MSC2409). One send shares a stream
// id across its recipients, so a batch holds whole stream ids: at most
// limit of them. upTo is the last stream id read (to when none remain).
func (s *Service) Rows(ctx context.Context, from, to int64, limit int) (out []InboxRow, upTo int64, err error) {
	upTo = to
	var last sql.NullInt64
	if err := s.db.Reader().QueryRowContext(ctx, `SELECT MAX(stream_id) FROM (SELECT DISTINCT stream_id FROM device_inbox
		WHERE stream_id > $1 AND stream_id <= $2 ORDER BY stream_id LIMIT $3) AS ids`, from, to, limit).Scan(&last); err != nil {
		return nil, from, fmt.Errorf("to-device stream ids in (%d, %d]: %w", from, to, err)
	}
	if !last.Valid {
		return nil, to, nil
	}
	if last.Int64 < to {
		// Perhaps more remain past the batch: resume after it.
		upTo = last.Int64
	}
	rows, err := s.db.Reader().QueryContext(ctx, `SELECT stream_id, user_id, device_id, sender, type, content FROM device_inbox
		WHERE stream_id > $1 AND stream_id <= $2 ORDER BY stream_id, user_id, device_id`, from, upTo)
	if err != nil {
		return nil, from, fmt.Errorf("to-device messages in (%d, %d]: %w", from, upTo, err)
	}
	defer rows.Close()
	for rows.Next() {
		var r InboxRow
		var content string
		if err := rows.Scan(&r.StreamID, &r.UserID, &r.DeviceID, &r.Sender, &r.Type, &content); err != nil {
			return nil, from, fmt.Errorf("to-device messages in (%d, %d]: %w", from, upTo, err)
		}
		r.Content = json.RawMessage(content)
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, from, fmt.Errorf("to-device messages in (%d, %d]: %w", from, upTo, err)
	}
	return out, upTo, nil
}
