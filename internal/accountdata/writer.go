// Package accountdata owns users' account data (global and per room, room
// tags included) and the account_data stream it is written to.
//
// Writes go through a Writer: the LocalWriter when this process is the
// stream's writer (stream_writers.account_data), later an HTTP-replication
// client forwarding to that process. Reads (GET endpoints, sync) come
// straight from the database on any process.
package accountdata

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"ganglion/internal/storage"
	"ganglion/internal/streams"
)

// Account data types with server-side meaning.
const (
	TypeTag         = "m.tag"
	TypeFullyRead   = "m.fully_read"
	TypePushRules   = "m.push_rules"
	TypeIgnoredList = "m.ignored_user_list"
)

// Writer writes account data. Every method returns the account_data stream
// position of its write, so a caller on another process can wait for its
// own write before reading (read-your-writes).
//
// Tags have their own methods rather than a read-modify-write of m.tag by
// the caller: two devices tagging a room at once on different workers
// would otherwise lose one of the tags. The writer is the stream's only
// writer, so it can serialise the read-modify-write itself.
type Writer interface {
	// Put replaces the content of one type of account data; roomID "" is
	// global. Content {} deletes it (readers treat {} as absent).
	Put(ctx context.Context, userID, roomID, eventType string, content json.RawMessage) (int64, error)
	// PutTag adds or replaces one tag of a room (content is the tag's
	// object, e.g. {"order":0.5}).
	PutTag(ctx context.Context, userID, roomID, tag string, content json.RawMessage) (int64, error)
	// RemoveTag removes one tag of a room; removing an absent tag writes
	// nothing and returns the current position.
	RemoveTag(ctx context.Context, userID, roomID, tag string) (int64, error)
}

var _ Writer = (*LocalWriter)(nil)

// LocalWriter writes account data on the account_data stream's writer.
type LocalWriter struct {
	tw  *streams.TableWriter
	db  *storage.DB
	log *slog.Logger
	// tagMu serialises the read-modify-write of m.tag content. A Go mutex
	// is enough because account_data has exactly one writer process.
	tagMu sync.Mutex
}

// NewLocalWriter resumes the account_data stream at the position this
// process last wrote.
func NewLocalWriter(ctx context.Context, db *storage.DB, reg *streams.Registry, log *slog.Logger) (*LocalWriter, error) {
	tw, err := streams.NewTableWriter(ctx, db, reg, streams.AccountData, "account_data", "stream_id", "")
	if err != nil {
		return nil, err
	}
	return &LocalWriter{tw: tw, db: db, log: log}, nil
}

// Position is the writer's committed position.
func (w *LocalWriter) Position() int64 { return w.tw.Position() }

// SavePosition records the position in stream_positions (at shutdown).
func (w *LocalWriter) SavePosition(ctx context.Context) error { return w.tw.SavePosition(ctx) }

const upsertSQL = `INSERT INTO account_data (user_id, room_id, type, content, stream_id) VALUES ($1, $2, $3, $4, $5)
	ON CONFLICT (user_id, room_id, type) DO UPDATE SET content = excluded.content, stream_id = excluded.stream_id`

// Put implements Writer.
func (w *LocalWriter) Put(ctx context.Context, userID, roomID, eventType string, content json.RawMessage) (int64, error) {
	c, err := normaliseObject(content)
	if err != nil {
		return 0, fmt.Errorf("put account data %s of %s: %w", eventType, userID, err)
	}
	if eventType == TypeTag {
		// Keep a whole-content write of m.tag from interleaving with a
		// tag read-modify-write.
		w.tagMu.Lock()
		defer w.tagMu.Unlock()
	}
	id, err := w.tw.Write(ctx, func(tx *sql.Tx, id int64) error {
		_, err := tx.ExecContext(ctx, upsertSQL, userID, roomID, eventType, string(c), id)
		return err
	}, streams.UserKey(userID))
	if err != nil {
		return 0, fmt.Errorf("put account data %s of %s: %w", eventType, userID, err)
	}
	return id, nil
}

// PutTag implements Writer.
func (w *LocalWriter) PutTag(ctx context.Context, userID, roomID, tag string, content json.RawMessage) (int64, error) {
	c, err := normaliseObject(content)
	if err != nil {
		return 0, fmt.Errorf("tag %s of %s: %w", roomID, userID, err)
	}
	return w.editTags(ctx, userID, roomID, func(tags map[string]json.RawMessage) bool {
		tags[tag] = c
		return true
	})
}

// RemoveTag implements Writer.
func (w *LocalWriter) RemoveTag(ctx context.Context, userID, roomID, tag string) (int64, error) {
	return w.editTags(ctx, userID, roomID, func(tags map[string]json.RawMessage) bool {
		if _, ok := tags[tag]; !ok {
			return false
		}
		delete(tags, tag)
		return true
	})
}

// editTags applies edit to the room's tags and writes them back, unless
// edit reports no change. The read happens under tagMu before the write
// transaction (no other tag write can intervene), so a no-op never
// allocates a stream id: on SQLite a rolled-back id is handed out again,
// and the stream position must not run ahead of it.
func (w *LocalWriter) editTags(ctx context.Context, userID, roomID string, edit func(map[string]json.RawMessage) bool) (int64, error) {
	w.tagMu.Lock()
	defer w.tagMu.Unlock()
	var raw string
	err := w.db.Reader().QueryRowContext(ctx, `SELECT content FROM account_data WHERE user_id = $1 AND room_id = $2 AND type = $3`,
		userID, roomID, TypeTag).Scan(&raw)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return 0, fmt.Errorf("read tags of %s in %s: %w", userID, roomID, err)
	}
	tags := parseTags(json.RawMessage(raw))
	if !edit(tags) {
		return w.tw.Position(), nil
	}
	content, err := json.Marshal(map[string]any{"tags": tags})
	if err != nil {
		return 0, fmt.Errorf("encode tags: %w", err)
	}
	id, err := w.tw.Write(ctx, func(tx *sql.Tx, id int64) error {
		_, err := tx.ExecContext(ctx, upsertSQL, userID, roomID, TypeTag, string(content), id)
		return err
	}, streams.UserKey(userID))
	if err != nil {
		return 0, fmt.Errorf("write tags of %s in %s: %w", userID, roomID, err)
	}
	return id, nil
}

// parseTags reads the tags of m.tag content; malformed or absent content
// counts as no tags, so one bad write cannot wedge the room's tags.
func parseTags(content json.RawMessage) map[string]json.RawMessage {
	var c struct {
		Tags map[string]json.RawMessage `json:"tags"`
	}
	if len(content) == 0 || json.Unmarshal(content, &c) != nil || c.Tags == nil {
		return map[string]json.RawMessage{}
	}
	return c.Tags
}

// normaliseObject checks that content is a JSON object and compacts it, so
// that an empty object is stored exactly as "{}" (the deletion marker).
func normaliseObject(content json.RawMessage) (json.RawMessage, error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(content, &obj); err != nil || obj == nil {
		return nil, errors.New("content must be a JSON object")
	}
	if len(obj) == 0 {
		return json.RawMessage("{}"), nil
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, content); err != nil {
		return nil, fmt.Errorf("compact content: %w", err)
	}
	return buf.Bytes(), nil
}
