// Package receipts owns the receipts stream: read receipts (m.read, the
// private m.read.private), threaded and unthreaded, kept in the receipts
// table (the latest receipt per room, type, user and thread).
//
// The stream may have several writers (DESIGN §2); callers hold a Writer,
// whose only implementation today is the local *Service. A process that
// does not write the stream will get one that forwards over HTTP
// replication. Reads (Store) work on every process: they come from the
// database.
package receipts

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"ganglion/internal/storage"
	"ganglion/internal/streams"
)

// Receipt types a client may send.
const (
	Read        = "m.read"
	ReadPrivate = "m.read.private"
	// FullyRead is not a receipt: it is the m.fully_read room account data
	// event, which the receipt endpoints accept as a convenience.
	FullyRead = "m.fully_read"
)

// MainThread is the thread id of a room's main timeline.
const MainThread = "main"

// Receipt is one user's receipt in a room.
type Receipt struct {
	RoomID  string `json:"room_id"`
	Type    string `json:"receipt_type"`
	UserID  string `json:"user_id"`
	EventID string `json:"event_id"`
	// ThreadID is "" for an unthreaded receipt, MainThread, or a thread
	// root's event id.
	ThreadID string `json:"thread_id,omitempty"`
	// Data is the receipt's body, a JSON object; nil means {"ts": now}
	// (the writer's clock). It must not carry thread_id: ThreadID does.
	Data json.RawMessage `json:"data,omitempty"`
}

// Writer records receipts. It returns the receipts stream position that
// covers the receipt: its own row's id, or the writer's current position
// when the receipt was ignored because it does not move forward.
type Writer interface {
	SetReceipt(ctx context.Context, r Receipt) (int64, error)
}

var _ Writer = (*Service)(nil)

// Row is one receipts stream row; on the wire it is Synapse's
// `[room_id, receipt_type, user_id, event_id, thread_id, data]` (thread_id
// null when unthreaded).
type Row struct {
	StreamID int64
	Receipt
}

// MarshalJSON writes the row as the replication array.
func (r Row) MarshalJSON() ([]byte, error) {
	var thread any
	if r.ThreadID != "" {
		thread = r.ThreadID
	}
	data := r.Data
	if data == nil {
		data = json.RawMessage("{}")
	}
	return json.Marshal([]any{r.RoomID, r.Type, r.UserID, r.EventID, thread, data})
}

// UnmarshalJSON reads the replication array (StreamID comes from the
// command carrying the row, not from the row).
func (r *Row) UnmarshalJSON(b []byte) error {
	var parts []json.RawMessage
	if err := json.Unmarshal(b, &parts); err != nil {
		return fmt.Errorf("receipts row: %w", err)
	}
	if len(parts) != 6 {
		return fmt.Errorf("receipts row: want 6 elements, got %d", len(parts))
	}
	var out Row
	var thread *string
	for i, dst := range []any{&out.RoomID, &out.Type, &out.UserID, &out.EventID, &thread} {
		if err := json.Unmarshal(parts[i], dst); err != nil {
			return fmt.Errorf("receipts row element %d: %w", i, err)
		}
	}
	if thread != nil {
		out.ThreadID = *thread
	}
	out.Data = parts[5]
	*r = out
	return nil
}

// Store reads receipts from the database; every process can use it.
type Store struct {
	db *storage.DB
}

// NewStore builds the read side.
func NewStore(db *storage.DB) *Store { return &Store{db: db} }

// roomChunk bounds the rooms per query: an account in thousands of rooms
// must not build one statement with thousands of parameters.
const roomChunk = 500

// ForRooms returns, per room with receipts in the window, the content of
// the room's m.receipt ephemeral event: {event_id: {receipt_type:
// {user_id: {ts, thread_id?}}}}, for receipts whose stream_id is in
// (from, to]. from = 0 gives every current receipt (initial sync). Private
// receipts are only included for their own user. A user's threaded and
// unthreaded receipts of one type on the same event share one slot in this
// format; the newer one is shown.
func (s *Store) ForRooms(ctx context.Context, userID string, roomIDs []string, from, to int64) (map[string]json.RawMessage, error) {
	out := map[string]json.RawMessage{}
	if to <= from || len(roomIDs) == 0 {
		return out, nil
	}
	// event → type → user → body, per room
	type content = map[string]map[string]map[string]json.RawMessage
	byRoom := map[string]content{}
	for i := 0; i < len(roomIDs); i += roomChunk {
		part := roomIDs[i:min(i+roomChunk, len(roomIDs))]
		args, in := storage.AppendIn([]any{from, to, ReadPrivate, userID}, part)
		rows, err := s.db.Reader().QueryContext(ctx, `SELECT room_id, receipt_type, user_id, thread_id, event_id, data
			FROM receipts WHERE stream_id > $1 AND stream_id <= $2 AND (receipt_type <> $3 OR user_id = $4)
			AND room_id IN (`+in+`) ORDER BY stream_id`, args...)
		if err != nil {
			return nil, fmt.Errorf("read receipts for %s: %w", userID, err)
		}
		for rows.Next() {
			var r Receipt
			var data string
			if err := rows.Scan(&r.RoomID, &r.Type, &r.UserID, &r.ThreadID, &r.EventID, &data); err != nil {
				rows.Close()
				return nil, fmt.Errorf("read receipts for %s: %w", userID, err)
			}
			body, err := withThread(json.RawMessage(data), r.ThreadID)
			if err != nil {
				rows.Close()
				return nil, fmt.Errorf("receipt of %s in %s: %w", r.UserID, r.RoomID, err)
			}
			c := byRoom[r.RoomID]
			if c == nil {
				c = content{}
				byRoom[r.RoomID] = c
			}
			if c[r.EventID] == nil {
				c[r.EventID] = map[string]map[string]json.RawMessage{}
			}
			if c[r.EventID][r.Type] == nil {
				c[r.EventID][r.Type] = map[string]json.RawMessage{}
			}
			c[r.EventID][r.Type][r.UserID] = body
		}
		if err := rows.Close(); err != nil {
			return nil, fmt.Errorf("read receipts for %s: %w", userID, err)
		}
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("read receipts for %s: %w", userID, err)
		}
	}
	for roomID, c := range byRoom {
		b, err := json.Marshal(c)
		if err != nil {
			return nil, fmt.Errorf("encode receipts of %s: %w", roomID, err)
		}
		out[roomID] = b
	}
	return out, nil
}

// withThread adds thread_id to a stored receipt body for clients; the
// table keeps it in its own column so it can be part of the key.
func withThread(data json.RawMessage, threadID string) (json.RawMessage, error) {
	if threadID == "" {
		return data, nil
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(data, &obj); err != nil {
		return nil, fmt.Errorf("stored receipt data is not an object: %w", err)
	}
	if obj == nil {
		obj = map[string]json.RawMessage{}
	}
	t, _ := json.Marshal(threadID)
	obj["thread_id"] = t
	return json.Marshal(obj)
}

// Rows returns the stream rows with id in (from, to], oldest first, at
// most limit of them: what a reader that saw a gap (or a replica catching
// up) fetches from the database. Superseded receipts are not returned;
// their successors are, further on.
func (s *Store) Rows(ctx context.Context, from, to int64, limit int) ([]Row, error) {
	rows, err := s.db.Reader().QueryContext(ctx, `SELECT stream_id, room_id, receipt_type, user_id, thread_id, event_id, data
		FROM receipts WHERE stream_id > $1 AND stream_id <= $2 ORDER BY stream_id LIMIT $3`, from, to, limit)
	if err != nil {
		return nil, fmt.Errorf("read receipts rows (%d, %d]: %w", from, to, err)
	}
	defer rows.Close()
	var out []Row
	for rows.Next() {
		var r Row
		var data string
		if err := rows.Scan(&r.StreamID, &r.RoomID, &r.Type, &r.UserID, &r.ThreadID, &r.EventID, &data); err != nil {
			return nil, fmt.Errorf("read receipts rows (%d, %d]: %w", from, to, err)
		}
		r.Data = json.RawMessage(data)
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read receipts rows (%d, %d]: %w", from, to, err)
	}
	return out, nil
}

// Service is a local writer of the receipts stream (and, through Store,
// a reader).
type Service struct {
	*Store
	db  *storage.DB
	reg *streams.Registry
	tw  *streams.TableWriter
	log *slog.Logger
	now func() time.Time
}

// NewService resumes this instance's receipts writer. It refuses to start
// on an instance not configured as a receipts writer: its ids would never
// be counted in the stream's position.
func NewService(ctx context.Context, db *storage.DB, reg *streams.Registry, log *slog.Logger) (*Service, error) {
	if !reg.IsWriter(streams.Receipts) {
		return nil, fmt.Errorf("receipts: instance %s is not a writer of the receipts stream (writers %v)",
			reg.Instance(), reg.Writers(streams.Receipts))
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	tw, err := streams.NewTableWriter(ctx, db, reg, streams.Receipts, "receipts", "stream_id", "instance_name")
	if err != nil {
		return nil, err
	}
	return &Service{Store: NewStore(db), db: db, reg: reg, tw: tw, log: log.With("stream", string(streams.Receipts)), now: time.Now}, nil
}

// SetClock replaces the clock that stamps receipts' ts (tests).
func (s *Service) SetClock(now func() time.Time) { s.now = now }

// Position is this writer's committed position.
func (s *Service) Position() int64 { return s.tw.Position() }

// SavePosition records the position in stream_positions; call it now and
// then and at shutdown.
func (s *Service) SavePosition(ctx context.Context) error { return s.tw.SavePosition(ctx) }

// errNotForward aborts a write whose receipt would move backwards.
var errNotForward = errors.New("receipt does not move forward")

// SetReceipt implements Writer.
//
// Receipts only move forward: a receipt for an event at or before the
// user's current one of the same type and thread (by the events' stream
// positions) is ignored, as Synapse does; clients re-send receipts freely
// and out of order. When either event is unknown locally the positions
// cannot be compared and the receipt is taken.
func (s *Service) SetReceipt(ctx context.Context, r Receipt) (int64, error) {
	if r.RoomID == "" || r.UserID == "" || r.EventID == "" || r.Type == "" {
		return 0, fmt.Errorf("set receipt: room, user, event and type are required (got %+v)", r)
	}
	data, err := s.body(r)
	if err != nil {
		return 0, err
	}
	// A cheap check before the write: the common no-op (a client re-sending
	// its current receipt) then costs no stream id.
	ordering, err := s.eventOrdering(ctx, r.RoomID, r.EventID)
	if err != nil {
		return 0, err
	}
	if ordering.Valid {
		var cur sql.NullInt64
		err := s.db.Reader().QueryRowContext(ctx, `SELECT event_stream_ordering FROM receipts
			WHERE room_id = $1 AND receipt_type = $2 AND user_id = $3 AND thread_id = $4`,
			r.RoomID, r.Type, r.UserID, r.ThreadID).Scan(&cur)
		if err != nil && !storage.IsNotFound(err) {
			return 0, fmt.Errorf("read current %s receipt of %s in %s: %w", r.Type, r.UserID, r.RoomID, err)
		}
		if cur.Valid && cur.Int64 >= ordering.Int64 {
			return s.tw.Position(), nil
		}
	}
	id, err := s.tw.Write(ctx, func(tx *sql.Tx, id int64) error {
		// The upsert's WHERE compares against the row as it is when the
		// row lock is held, so two concurrent receipts cannot move the
		// marker backwards whichever commits last.
		var got int64
		err := tx.QueryRowContext(ctx, `INSERT INTO receipts (room_id, receipt_type, user_id, thread_id, event_id,
				event_stream_ordering, data, stream_id, instance_name)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
			ON CONFLICT (room_id, receipt_type, user_id, thread_id) DO UPDATE SET
				event_id = excluded.event_id, event_stream_ordering = excluded.event_stream_ordering,
				data = excluded.data, stream_id = excluded.stream_id, instance_name = excluded.instance_name
			WHERE receipts.event_stream_ordering IS NULL OR excluded.event_stream_ordering IS NULL
				OR receipts.event_stream_ordering < excluded.event_stream_ordering
			RETURNING stream_id`,
			r.RoomID, r.Type, r.UserID, r.ThreadID, r.EventID, ordering, string(data), id, s.reg.Instance()).Scan(&got)
		if storage.IsNotFound(err) {
			return errNotForward
		}
		return err
	}, streams.RoomKey(r.RoomID))
	if errors.Is(err, errNotForward) {
		return s.tw.Position(), nil
	}
	if err != nil {
		return 0, fmt.Errorf("set %s receipt of %s in %s: %w", r.Type, r.UserID, r.RoomID, err)
	}
	s.log.Debug("receipt", "room_id", r.RoomID, "user_id", r.UserID, "event_id", r.EventID, "receipt_type", r.Type,
		"thread_id", r.ThreadID, "stream_id", id)
	return id, nil
}

// body validates the receipt's data or stamps {"ts": now}.
func (s *Service) body(r Receipt) (json.RawMessage, error) {
	if r.Data == nil {
		return json.Marshal(map[string]int64{"ts": s.now().UnixMilli()})
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(r.Data, &obj); err != nil || obj == nil {
		return nil, fmt.Errorf("set receipt: data must be a JSON object, got %s", r.Data)
	}
	if _, ok := obj["thread_id"]; ok {
		delete(obj, "thread_id")
		return json.Marshal(obj)
	}
	return r.Data, nil
}

// eventOrdering is the event's position in the events stream if it is a
// known event of the room.
func (s *Service) eventOrdering(ctx context.Context, roomID, eventID string) (sql.NullInt64, error) {
	var so sql.NullInt64
	err := s.db.Reader().QueryRowContext(ctx, `SELECT stream_ordering FROM events WHERE event_id = $1 AND room_id = $2`,
		eventID, roomID).Scan(&so)
	if err != nil && !storage.IsNotFound(err) {
		return so, fmt.Errorf("look up event %s: %w", eventID, err)
	}
	return so, nil
}
