package accountdata

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"ganglion/internal/mxhttp"
	"ganglion/internal/storage"
	"ganglion/internal/streams"
)

// Event is one piece of account data as sync delivers it.
type Event struct {
	Type    string          `json:"type"`
	Content json.RawMessage `json:"content"`
}

// Service is the account data domain: validation, reads for the client API
// and sync, and the HTTP endpoints. It writes through a Writer.
type Service struct {
	db  *storage.DB
	reg *streams.Registry
	w   Writer
	log *slog.Logger
	// ignoredChanged, if set, hears of each committed change of a user's
	// m.ignored_user_list (push evaluation caches the lists).
	ignoredChanged func(ctx context.Context, userID string)
}

// OnIgnoredListChange sets f to hear of every change of a user's
// m.ignored_user_list made through this service, after it committed.
func (s *Service) OnIgnoredListChange(f func(ctx context.Context, userID string)) {
	s.ignoredChanged = f
}

// written tells the ignored-list hook of a committed write.
func (s *Service) written(ctx context.Context, userID, roomID, eventType string) {
	if s.ignoredChanged != nil && roomID == "" && eventType == TypeIgnoredList {
		s.ignoredChanged(ctx, userID)
	}
}

// NewService builds the service over w (local or remote).
func NewService(db *storage.DB, reg *streams.Registry, w Writer, log *slog.Logger) *Service {
	return &Service{db: db, reg: reg, w: w, log: log}
}

// Writer is the writer the service writes through.
func (s *Service) Writer() Writer { return s.w }

// Position is how far this process may read the account_data stream.
func (s *Service) Position() int64 { return s.reg.Current(streams.AccountData) }

// Get returns one piece of account data, or nil if it is absent or was
// deleted (stored as {}).
func (s *Service) Get(ctx context.Context, userID, roomID, eventType string) (json.RawMessage, error) {
	var raw string
	err := s.db.Reader().QueryRowContext(ctx, `SELECT content FROM account_data WHERE user_id = $1 AND room_id = $2 AND type = $3`,
		userID, roomID, eventType).Scan(&raw)
	if errors.Is(err, sql.ErrNoRows) || (err == nil && raw == "{}") {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("get account data %s of %s: %w", eventType, userID, err)
	}
	return json.RawMessage(raw), nil
}

// Since returns the user's account data written in (from, to], global and
// per room. from 0 means an initial sync: everything current, without
// deleted entries; an incremental sync does include deletions (content {})
// so that clients drop what they had.
func (s *Service) Since(ctx context.Context, userID string, from, to int64) (global []Event, rooms map[string][]Event, err error) {
	q := `SELECT room_id, type, content FROM account_data WHERE user_id = $1 AND stream_id > $2 AND stream_id <= $3`
	if from <= 0 {
		q += ` AND content <> '{}'`
	}
	rows, err := s.db.Reader().QueryContext(ctx, q+` ORDER BY stream_id`, userID, max(from, 0), to)
	if err != nil {
		return nil, nil, fmt.Errorf("account data of %s since %d: %w", userID, from, err)
	}
	defer rows.Close()
	rooms = map[string][]Event{}
	for rows.Next() {
		var roomID, typ, content string
		if err := rows.Scan(&roomID, &typ, &content); err != nil {
			return nil, nil, fmt.Errorf("account data of %s since %d: %w", userID, from, err)
		}
		ev := Event{Type: typ, Content: json.RawMessage(content)}
		if roomID == "" {
			global = append(global, ev)
		} else {
			rooms[roomID] = append(rooms[roomID], ev)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, nil, fmt.Errorf("account data of %s since %d: %w", userID, from, err)
	}
	return global, rooms, nil
}

// IgnoredUsers is the set of users userID ignores (m.ignored_user_list).
// Malformed stored content counts as nobody ignored.
func (s *Service) IgnoredUsers(ctx context.Context, userID string) (map[string]bool, error) {
	raw, err := s.Get(ctx, userID, "", TypeIgnoredList)
	if err != nil {
		return nil, err
	}
	out := map[string]bool{}
	var c struct {
		IgnoredUsers map[string]json.RawMessage `json:"ignored_users"`
	}
	if raw != nil && json.Unmarshal(raw, &c) == nil {
		for u := range c.IgnoredUsers {
			out[u] = true
		}
	}
	return out, nil
}

// Tags returns the user's tags on a room (never nil).
func (s *Service) Tags(ctx context.Context, userID, roomID string) (map[string]json.RawMessage, error) {
	raw, err := s.Get(ctx, userID, roomID, TypeTag)
	if err != nil {
		return nil, err
	}
	return parseTags(raw), nil
}

// SetFullyRead records the user's fully-read marker for a room (room
// account data m.fully_read), for the read markers endpoint.
func (s *Service) SetFullyRead(ctx context.Context, userID, roomID, eventID string) error {
	content, err := json.Marshal(map[string]string{"event_id": eventID})
	if err != nil {
		return fmt.Errorf("encode m.fully_read: %w", err)
	}
	if _, err := s.w.Put(ctx, userID, roomID, TypeFullyRead, content); err != nil {
		return fmt.Errorf("set fully read marker of %s in %s: %w", userID, roomID, err)
	}
	return nil
}

// Set validates and writes account data on behalf of a client: the types
// the server manages are refused with 405, as the spec requires (v1.10 added
// m.push_rules), and m.ignored_user_list must have its documented shape.
func (s *Service) Set(ctx context.Context, userID, roomID, eventType string, content json.RawMessage) (int64, error) {
	if eventType == "" || len(eventType) > 255 {
		return 0, mxhttp.InvalidParam("Invalid account data type")
	}
	if eventType == TypeFullyRead || eventType == TypePushRules {
		return 0, mxhttp.WithCode(405, "M_BAD_JSON", "Cannot set %s through this API.", eventType)
	}
	c, err := normaliseObject(content)
	if err != nil {
		return 0, mxhttp.NotJSON("Content must be a JSON object.")
	}
	if eventType == TypeIgnoredList && roomID == "" && string(c) != "{}" {
		if err := validateIgnoredUsers(c); err != nil {
			return 0, err
		}
	}
	pos, err := s.w.Put(ctx, userID, roomID, eventType, c)
	if err == nil {
		s.written(ctx, userID, roomID, eventType)
	}
	return pos, err
}

// Delete removes account data (MSC3391) by writing {}.
func (s *Service) Delete(ctx context.Context, userID, roomID, eventType string) (int64, error) {
	if eventType == TypeFullyRead || eventType == TypePushRules {
		return 0, mxhttp.WithCode(405, "M_BAD_JSON", "Cannot delete %s through this API.", eventType)
	}
	pos, err := s.w.Put(ctx, userID, roomID, eventType, json.RawMessage("{}"))
	if err == nil {
		s.written(ctx, userID, roomID, eventType)
	}
	return pos, err
}

func validateIgnoredUsers(content json.RawMessage) error {
	var c struct {
		IgnoredUsers *map[string]json.RawMessage `json:"ignored_users"`
	}
	if err := json.Unmarshal(content, &c); err != nil || c.IgnoredUsers == nil || *c.IgnoredUsers == nil {
		return mxhttp.BadJSON("m.ignored_user_list must have an ignored_users object")
	}
	for u, v := range *c.IgnoredUsers {
		if !validUserID(u) {
			return mxhttp.BadJSON("m.ignored_user_list: invalid user id %q", u)
		}
		var obj map[string]json.RawMessage
		if json.Unmarshal(v, &obj) != nil || obj == nil {
			return mxhttp.BadJSON("m.ignored_user_list: the value for %s must be an object", u)
		}
	}
	return nil
}

// validUserID is the shape check of a user id "@local:server".
func validUserID(id string) bool {
	i := strings.IndexByte(id, ':')
	return len(id) <= 255 && strings.HasPrefix(id, "@") && i > 1 && i < len(id)-1
}

// validRoomID accepts "!opaque:server" and room version 12's "!hash"
// (which has no server part).
func validRoomID(id string) bool {
	return len(id) >= 2 && len(id) <= 255 && id[0] == '!' && !strings.ContainsAny(id, " \t\r\n/")
}
