// Package search owns full-text search over room events
// (POST /_matrix/client/v3/search): the index, kept by the persister, and
// the endpoint, which may run on any generic worker.
//
// The index is written inside the persister's transaction (Store is a
// rooms.BatchHook), as Synapse does, rather than by a follower of the
// events stream with its own position. Both would be durable; the
// in-transaction index is never behind the events a reader can see, so a
// message is searchable as soon as its send returns and no catch-up or
// election of a single follower is needed. The price is one more insert per
// message in the persister's transaction, and the persisters are where
// throughput matters most; a tsvector/FTS5 insert is cheap next to the
// event row itself (measured not at all yet: an async follower remains the
// way out if it shows).
package search

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"strings"
	"unicode"

	"ganglion/internal/events"
	"ganglion/internal/rooms"
	"ganglion/internal/storage"
)

// Keys are the searchable fields, by the event type that carries them.
var keyOfType = map[string]string{
	"m.room.message": "content.body",
	"m.room.name":    "content.name",
	"m.room.topic":   "content.topic",
}

// AllKeys is the default of the request's keys.
var AllKeys = []string{"content.body", "content.name", "content.topic"}

// Store reads and writes the search index.
type Store struct {
	db *storage.DB
}

func NewStore(db *storage.DB) *Store { return &Store{db: db} }

var _ rooms.BatchHook = (*Store)(nil)

// InBatch indexes a batch in the persister's transaction.
func (s *Store) InBatch(ctx context.Context, tx *sql.Tx, _ string, evs []*events.Event, ids []int64) (func(), error) {
	return nil, s.IndexEvents(ctx, tx, evs, ids)
}

// Forget is part of rooms.BatchHook; the index caches nothing.
func (s *Store) Forget(string) {}

// IndexEvents adds the searchable events of a batch (evs[i] at stream
// ordering ids[i]) to the index and drops the targets of redactions from
// it (a redacted body must not be found).
func (s *Store) IndexEvents(ctx context.Context, tx *sql.Tx, evs []*events.Event, ids []int64) error {
	for i, ev := range evs {
		if ev.Type() == "m.room.redaction" {
			if target := ev.Redacts(); target != "" {
				if err := s.unindex(ctx, tx, target); err != nil {
					return err
				}
			}
			continue
		}
		key, ok := keyOfType[ev.Type()]
		if !ok {
			continue
		}
		field := strings.TrimPrefix(key, "content.")
		var content map[string]json.RawMessage
		if json.Unmarshal(ev.Content(), &content) != nil {
			continue
		}
		var value string
		if json.Unmarshal(content[field], &value) != nil || value == "" {
			continue
		}
		if err := s.index(ctx, tx, ev.EventID(), ev.RoomID(), ev.Sender(), key, ids[i], ev.OriginServerTS(), value); err != nil {
			return fmt.Errorf("index event %s for search: %w", ev.EventID(), err)
		}
	}
	return nil
}

func (s *Store) index(ctx context.Context, tx *sql.Tx, eventID, roomID, sender, key string, so, ts int64, value string) error {
	if s.db.Engine() == storage.Postgres {
		// PostgreSQL refuses NUL in text; nothing searchable is lost.
		value = strings.ReplaceAll(value, "\x00", " ")
		_, err := tx.ExecContext(ctx, `INSERT INTO event_search (event_id, room_id, sender, key, stream_ordering, origin_server_ts, vector)
			VALUES ($1, $2, $3, $4, $5, $6, to_tsvector('english', $7)) ON CONFLICT (event_id) DO NOTHING`,
			eventID, roomID, sender, key, so, ts, value)
		return err
	}
	res, err := tx.ExecContext(ctx, `INSERT INTO event_search (stream_ordering, event_id, room_id, sender, key, origin_server_ts)
		VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING`, so, eventID, roomID, sender, key, ts)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return nil
	}
	_, err = tx.ExecContext(ctx, `INSERT INTO event_search_fts (rowid, value) VALUES ($1, $2)`, so, value)
	return err
}

func (s *Store) unindex(ctx context.Context, tx *sql.Tx, eventID string) error {
	if s.db.Engine() == storage.SQLite {
		if _, err := tx.ExecContext(ctx, `DELETE FROM event_search_fts WHERE rowid IN
			(SELECT stream_ordering FROM event_search WHERE event_id = $1)`, eventID); err != nil {
			return fmt.Errorf("unindex redacted event %s: %w", eventID, err)
		}
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM event_search WHERE event_id = $1`, eventID); err != nil {
		return fmt.Errorf("unindex redacted event %s: %w", eventID, err)
	}
	return nil
}

// Words splits text into lower-cased words (runs of letters and digits):
// the search terms, and the highlights of a result.
func Words(text string) []string {
	var out []string
	for _, w := range strings.FieldsFunc(text, func(r rune) bool { return !unicode.IsLetter(r) && !unicode.IsDigit(r) }) {
		out = append(out, strings.ToLower(w))
	}
	return out
}

// Query is one page's worth of index lookups.
type Query struct {
	Rooms []string // the rooms to search; empty finds nothing
	Terms []string // from Words; every one must prefix-match a word
	Keys  []string // subset of AllKeys
	// Recent orders by stream position, newest first, from Before
	// (exclusive; 0 means from the newest); otherwise by rank, skipping
	// Offset hits.
	Recent bool
	Before int64
	Offset int
	Limit  int
	// Unordered returns the first Limit hits the index yields, in no
	// particular order and unranked (Rank 0): for counting. Ranking and
	// ordering read every hit, and counting with a bound then stops early.
	Unordered bool
}

// Hit is one matching event.
type Hit struct {
	EventID        string
	RoomID         string
	Sender         string
	Type           string // from the key: the type that carries it
	StreamOrdering int64
	Rank           float64
}

var typeOfKey = map[string]string{"content.body": "m.room.message", "content.name": "m.room.name", "content.topic": "m.room.topic"}

func (q Query) empty() bool {
	return len(q.Rooms) == 0 || len(q.Terms) == 0 || len(q.Keys) == 0
}

// where builds the conditions shared by Search and Count; args continue
// after the engine's match argument ($1).
func (q Query) where(args []any, alias string) (string, []any) {
	var b strings.Builder
	b.WriteString(alias + ".room_id IN (")
	for i, r := range q.Rooms {
		if i > 0 {
			b.WriteString(", ")
		}
		args = append(args, r)
		fmt.Fprintf(&b, "$%d", len(args))
	}
	b.WriteString(") AND " + alias + ".key IN (")
	for i, k := range q.Keys {
		if i > 0 {
			b.WriteString(", ")
		}
		args = append(args, k)
		fmt.Fprintf(&b, "$%d", len(args))
	}
	b.WriteString(")")
	return b.String(), args
}

// match is the engine's query text: every term as a prefix. Terms are
// letters and digits only (Words), so nothing in them is query syntax.
func (s *Store) match(terms []string) string {
	parts := make([]string, len(terms))
	for i, t := range terms {
		if s.db.Engine() == storage.Postgres {
			parts[i] = t + ":*"
		} else {
			parts[i] = `"` + t + `"*`
		}
	}
	if s.db.Engine() == storage.Postgres {
		return strings.Join(parts, " & ")
	}
	return strings.Join(parts, " AND ")
}

// Search returns up to q.Limit hits in the requested order.
func (s *Store) Search(ctx context.Context, q Query) ([]Hit, error) {
	if q.empty() || q.Limit <= 0 {
		return nil, nil
	}
	args := []any{s.match(q.Terms)}
	var query string
	if s.db.Engine() == storage.Postgres {
		cond, a := q.where(args, "e")
		args = a
		rank := `ts_rank_cd(e.vector, to_tsquery('english', $1))`
		if q.Unordered {
			rank = `0`
		}
		query = `SELECT e.event_id, e.room_id, e.sender, e.key, e.stream_ordering, ` + rank + ` AS rank
			FROM event_search e WHERE e.vector @@ to_tsquery('english', $1) AND ` + cond
	} else {
		cond, a := q.where(args, "e")
		args = a
		// bm25 is lower for better matches; negated so higher is better
		// on both engines.
		rank := `-f.rank`
		if q.Unordered {
			rank = `0`
		}
		query = `SELECT e.event_id, e.room_id, e.sender, e.key, e.stream_ordering, ` + rank + ` AS rank
			FROM event_search_fts f JOIN event_search e ON e.stream_ordering = f.rowid
			WHERE event_search_fts MATCH $1 AND ` + cond
	}
	switch {
	case q.Unordered:
	case q.Recent:
		if q.Before > 0 {
			args = append(args, q.Before)
			query += fmt.Sprintf(" AND e.stream_ordering < $%d", len(args))
		}
		query += " ORDER BY e.stream_ordering DESC"
	default:
		query += " ORDER BY rank DESC, e.stream_ordering DESC"
	}
	args = append(args, q.Limit, q.Offset)
	query += fmt.Sprintf(" LIMIT $%d OFFSET $%d", len(args)-1, len(args))
	rows, err := s.db.Reader().QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("search events: %w", err)
	}
	defer rows.Close()
	var out []Hit
	for rows.Next() {
		var h Hit
		var key string
		if err := rows.Scan(&h.EventID, &h.RoomID, &h.Sender, &key, &h.StreamOrdering, &h.Rank); err != nil {
			return nil, fmt.Errorf("search events: %w", err)
		}
		h.Type = typeOfKey[key]
		out = append(out, h)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("search events: %w", err)
	}
	return out, nil
}

// Count is the number of hits in q's rooms, each room bounded by upTo
// (inclusive) when it has an entry there: the spec's approximate count,
// which must not count what a user who left a room could not see.
func (s *Store) Count(ctx context.Context, q Query, upTo map[string]int64) (int, error) {
	if q.empty() {
		return 0, nil
	}
	args := []any{s.match(q.Terms)}
	cond, args := q.where(args, "e")
	var bound strings.Builder
	for room, pos := range upTo {
		args = append(args, room, pos)
		fmt.Fprintf(&bound, " AND NOT (e.room_id = $%d AND e.stream_ordering > $%d)", len(args)-1, len(args))
	}
	var query string
	if s.db.Engine() == storage.Postgres {
		query = `SELECT count(*) FROM event_search e WHERE e.vector @@ to_tsquery('english', $1) AND ` + cond + bound.String()
	} else {
		query = `SELECT count(*) FROM event_search_fts f JOIN event_search e ON e.stream_ordering = f.rowid
			WHERE event_search_fts MATCH $1 AND ` + cond + bound.String()
	}
	var n int
	if err := s.db.Reader().QueryRowContext(ctx, query, args...).Scan(&n); err != nil {
		return 0, fmt.Errorf("count search results: %w", err)
	}
	return n, nil
}

// RoomsOfUser is every room the user is joined to or has been joined to,
// with, for rooms they are no longer joined to, the position of the event
// that ended their membership (nothing after it is theirs to see).
func (s *Store) RoomsOfUser(ctx context.Context, userID string) (rooms map[string]int64, err error) {
	rows, err := s.db.Reader().QueryContext(ctx, `SELECT l.room_id, c.membership, c.stream_ordering
		FROM (SELECT DISTINCT room_id FROM state_log WHERE type = 'm.room.member' AND state_key = $1 AND membership = 'join') l
		JOIN current_state c ON c.room_id = l.room_id AND c.type = 'm.room.member' AND c.state_key = $1`, userID)
	if err != nil {
		return nil, fmt.Errorf("rooms of %s: %w", userID, err)
	}
	defer rows.Close()
	out := map[string]int64{}
	for rows.Next() {
		var room string
		var membership sql.NullString
		var pos int64
		if err := rows.Scan(&room, &membership, &pos); err != nil {
			return nil, fmt.Errorf("rooms of %s: %w", userID, err)
		}
		if membership.String == "join" {
			pos = 0
		}
		out[room] = pos
	}
	return out, rows.Err()
}
