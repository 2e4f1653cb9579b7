package rooms

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"

	"ganglion/internal/storage"
	"ganglion/internal/streams"
)

// EventsSource is the events stream's replication source: rows are
// Synapse's ["ev", [event_id, room_id, type, state_key, redacts,
// relates_to, membership, rejected, outlier]], read from the events table
// by the persister that wrote them.
type EventsSource struct {
	db    *storage.DB
	store *Store // told of state changes (may be nil)
}

// NewEventsSource builds the source; store, if not nil, hears of every
// replicated state event (see Store.EnableStateCache).
func NewEventsSource(db *storage.DB, store *Store) *EventsSource {
	return &EventsSource{db: db, store: store}
}

var _ streams.Source = (*EventsSource)(nil)

// Rows implements streams.Source.
func (s *EventsSource) Rows(ctx context.Context, writer string, from, to int64, limit int) ([]streams.Row, error) {
	rows, err := s.db.Reader().QueryContext(ctx, `SELECT stream_ordering, event_id, room_id, type, state_key, redacts, membership
		FROM events WHERE instance_name = $1 AND stream_ordering > $2 AND stream_ordering <= $3
		ORDER BY stream_ordering LIMIT $4`, writer, from, to, limit)
	if err != nil {
		return nil, fmt.Errorf("read events rows of %s (%d, %d]: %w", writer, from, to, err)
	}
	defer rows.Close()
	var out []streams.Row
	for rows.Next() {
		var so int64
		var id, room, typ string
		var sk, redacts, membership sql.NullString
		if err := rows.Scan(&so, &id, &room, &typ, &sk, &redacts, &membership); err != nil {
			return nil, fmt.Errorf("read events rows: %w", err)
		}
		data, err := json.Marshal([]any{"ev", []any{id, room, typ, nullable(sk), nullable(redacts), nil, nullable(membership), false, false}})
		if err != nil {
			return nil, err
		}
		out = append(out, streams.Row{Token: so, Data: data})
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read events rows: %w", err)
	}
	rows.Close()
	if len(out) == 0 {
		return out, nil
	}
	return s.withStateRows(ctx, writer, out)
}

// withStateRows adds Synapse's ["state", [room_id, type, state_key,
// event_id]] rows after each event whose position changed more of the
// current state than the event itself: a remote event that resolved a
// fork, or a join through another server that brought the whole state.
// Other processes' state caches hear of those entries from these rows.
func (s *EventsSource) withStateRows(ctx context.Context, writer string, evRows []streams.Row) ([]streams.Row, error) {
	lo, hi := evRows[0].Token, evRows[len(evRows)-1].Token
	rows, err := s.db.Reader().QueryContext(ctx, `SELECT sl.stream_ordering, sl.room_id, sl.type, sl.state_key, sl.event_id
		FROM state_log sl JOIN events e ON e.stream_ordering = sl.stream_ordering
		WHERE e.instance_name = $1 AND sl.stream_ordering >= $2 AND sl.stream_ordering <= $3 AND sl.event_id <> e.event_id
		ORDER BY sl.stream_ordering`, writer, lo, hi)
	if err != nil {
		return nil, fmt.Errorf("read state rows of %s [%d, %d]: %w", writer, lo, hi, err)
	}
	defer rows.Close()
	extra := map[int64][]streams.Row{}
	for rows.Next() {
		var so int64
		var room, typ, sk, id string
		if err := rows.Scan(&so, &room, &typ, &sk, &id); err != nil {
			return nil, fmt.Errorf("read state rows: %w", err)
		}
		data, err := json.Marshal([]any{"state", []any{room, typ, sk, id}})
		if err != nil {
			return nil, err
		}
		extra[so] = append(extra[so], streams.Row{Token: so, Data: data})
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read state rows: %w", err)
	}
	if len(extra) == 0 {
		return evRows, nil
	}
	out := make([]streams.Row, 0, len(evRows)+len(extra))
	for _, r := range evRows {
		out = append(out, r)
		out = append(out, extra[r.Token]...)
	}
	return out, nil
}

func nullable(s sql.NullString) any {
	if !s.Valid {
		return nil
	}
	return s.String
}

// Apply implements streams.Source: an event wakes its room, and a
// membership change wakes its target user too. State events reach the
// store's state cache first (Apply runs before the position advances).
func (s *EventsSource) Apply(ctx context.Context, writer string, row streams.Row) []string {
	var outer []json.RawMessage
	if json.Unmarshal(row.Data, &outer) != nil || len(outer) != 2 {
		return nil
	}
	var kind string
	_ = json.Unmarshal(outer[0], &kind)
	if kind == "state" {
		var f []string
		if json.Unmarshal(outer[1], &f) != nil || len(f) != 4 {
			return nil
		}
		room, typ, sk := f[0], f[1], f[2]
		s.store.StateReset(room, row.Token)
		s.store.StateChanged(room, typ, sk, row.Token)
		keys := []string{streams.RoomKey(room)}
		if typ == "m.room.member" {
			keys = append(keys, streams.UserKey(sk))
		}
		return keys
	}
	if kind != "ev" {
		return nil
	}
	var f []any
	if json.Unmarshal(outer[1], &f) != nil || len(f) < 7 {
		return nil
	}
	room, _ := f[1].(string)
	typ, _ := f[2].(string)
	s.store.EventPersisted(room, row.Token)
	keys := []string{streams.RoomKey(room)}
	if sk, ok := f[3].(string); ok {
		s.store.StateChanged(room, typ, sk, row.Token)
		if typ == "m.room.member" {
			keys = append(keys, streams.UserKey(sk))
		}
	}
	return keys
}
