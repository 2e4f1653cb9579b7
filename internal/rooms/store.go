package rooms

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"sync/atomic"

	"ganglion/internal/eventauth"
	"ganglion/internal/events"
	"ganglion/internal/storage"
)

// StoredEvent is an event as read back, with what clients need beside it.
type StoredEvent struct {
	Event          *events.Event
	StreamOrdering int64
	ReplacesState  string
	SenderDevice   string
	TxnID          string
	RedactedBy     string // the redaction event's id, when redacted
}

// Store reads rooms and events. Writes go only through the Persister.
type Store struct {
	db       *storage.DB
	versions sync.Map // room id → *events.RoomVersion
	// state, when set (EnableStateCache), caches state history views.
	state *stateCache
	// memberMax is the highest events position at which this process saw
	// an m.room.member change (StateChanged), and watchedFrom the
	// position from which it has seen them all (WatchMembershipFrom):
	// sync skips work that only membership changes call for.
	memberMax, watchedFrom atomic.Int64
	// lastEvent is room id → *atomic.Int64, the highest events position of
	// the room this process has seen persisted (EventPersisted), valid
	// from watchedFrom on like memberMax.
	lastEvent sync.Map
	// resets is room id → *atomic.Int64, the highest events position at
	// which the room's current state changed by more than the event there
	// (StateReset), valid from watchedFrom on.
	resets sync.Map
}

func NewStore(db *storage.DB) *Store {
	s := &Store{db: db}
	s.watchedFrom.Store(math.MaxInt64) // nothing known until WatchMembershipFrom
	return s
}

// WatchMembershipFrom starts MembershipChangedAfter's and
// JoinedRoomsWithEvents' knowledge: every event (and membership change)
// after the highest events position at this moment reaches EventPersisted
// and StateChanged (the persister's and the replication's hooks), so only
// earlier ones are unknown. It reads that position from the database.
func (s *Store) WatchMembershipFrom(ctx context.Context) error {
	var max sql.NullInt64
	if err := s.db.Reader().QueryRowContext(ctx, `SELECT max(stream_ordering) FROM events`).Scan(&max); err != nil {
		return fmt.Errorf("highest event position: %w", err)
	}
	s.watchedFrom.Store(max.Int64)
	return nil
}

// EventPersisted records that an event of roomID was persisted at events
// position pos (or a higher one of its batch): the persister's and the
// events replication's hook, like StateChanged for state events.
func (s *Store) EventPersisted(roomID string, pos int64) {
	if s == nil {
		return
	}
	v, ok := s.lastEvent.Load(roomID)
	if !ok {
		v, _ = s.lastEvent.LoadOrStore(roomID, new(atomic.Int64))
	}
	last := v.(*atomic.Int64)
	for {
		cur := last.Load()
		if pos <= cur || last.CompareAndSwap(cur, pos) {
			return
		}
	}
}

// JoinedRoomsWithEvents is RoomsWithEvents for the rooms given: which of
// them may have events in (from, to]. When this process has seen every
// event persisted since before from, it answers from memory (a room may
// be named whose new events are above to: callers read each room's window
// anyway); otherwise it asks the database.
func (s *Store) JoinedRoomsWithEvents(ctx context.Context, rooms []string, from, to int64) (map[string]int64, error) {
	if from < s.watchedFrom.Load() {
		return s.RoomsWithEvents(ctx, from, to)
	}
	out := map[string]int64{}
	for _, r := range rooms {
		if v, ok := s.lastEvent.Load(r); ok {
			if last := v.(*atomic.Int64).Load(); last > from {
				out[r] = last
			}
		}
	}
	return out, nil
}

// MembershipChangedAfter reports whether any room's membership may have
// changed at an events position above pos: false only when this process
// has seen every change since before pos and none of them is above it.
func (s *Store) MembershipChangedAfter(pos int64) bool {
	return pos < s.watchedFrom.Load() || s.memberMax.Load() > pos
}

// EnableStateCache caches state history views (history visibility, one
// user's memberships over time) between reads. Call it only when every
// persisted state event reaches StateChanged: the process's persister
// (Persister.NotifyStateChanges) and its events replication
// (NewEventsSource with this store).
func (s *Store) EnableStateCache() { s.state = newStateCache(100000) }

// StateChanged tells the cache that a state event for (roomID, typ,
// stateKey) was persisted at events position pos (or a higher one of its
// batch).
func (s *Store) StateChanged(roomID, typ, stateKey string, pos int64) {
	if s != nil && typ == "m.room.member" {
		for {
			cur := s.memberMax.Load()
			if pos <= cur || s.memberMax.CompareAndSwap(cur, pos) {
				break
			}
		}
	}
	if s != nil && s.state != nil {
		s.state.changed(stateKey3(roomID, typ, stateKey))
		if typ == "m.room.member" {
			s.state.changed(membershipsKey(stateKey))
		}
	}
}

func stateKey3(room, typ, sk string) stateKey { return stateKey{room: room, typ: typ, stateKey: sk} }

const eventColumns = `e.stream_ordering, e.json, e.replaces_state, e.sender_device, e.txn_id, e.room_id,
	(SELECT r.event_id FROM redactions r WHERE r.redacts = e.event_id LIMIT 1)`

func (s *Store) scanEvents(ctx context.Context, rows *sql.Rows) ([]*StoredEvent, error) {
	// Read every row and close the result before any further query: a
	// query issued while rows are open needs a second connection, and
	// enough concurrent requests doing that exhaust the pool and wait on
	// each other forever.
	type rawEvent struct {
		se     StoredEvent
		raw    string
		roomID string
	}
	var raws []rawEvent
	for rows.Next() {
		var re rawEvent
		var repl, dev, txn, red sql.NullString
		if err := rows.Scan(&re.se.StreamOrdering, &re.raw, &repl, &dev, &txn, &re.roomID, &red); err != nil {
			rows.Close()
			return nil, err
		}
		re.se.ReplacesState, re.se.SenderDevice, re.se.TxnID, re.se.RedactedBy = repl.String, dev.String, txn.String, red.String
		raws = append(raws, re)
	}
	err := rows.Err()
	rows.Close()
	if err != nil {
		return nil, err
	}
	out := make([]*StoredEvent, 0, len(raws))
	versions := map[string]*events.RoomVersion{}
	for i := range raws {
		re := &raws[i]
		rv := versions[re.roomID]
		if rv == nil {
			if rv, err = s.RoomVersion(ctx, re.roomID); err != nil {
				return nil, err
			}
			versions[re.roomID] = rv
		}
		ev, err := events.Parse([]byte(re.raw), rv)
		if err != nil {
			return nil, fmt.Errorf("parse stored event: %w", err)
		}
		re.se.Event = ev
		out = append(out, &re.se)
	}
	return out, nil
}

// RoomVersion returns the version of a known room. Versions never
// change, so they are cached for the life of the process.
func (s *Store) RoomVersion(ctx context.Context, roomID string) (*events.RoomVersion, error) {
	if rv, ok := s.versions.Load(roomID); ok {
		return rv.(*events.RoomVersion), nil
	}
	rv, err := s.loadRoomVersion(ctx, roomID)
	if err == nil {
		s.versions.Store(roomID, rv)
	}
	return rv, err
}

func (s *Store) loadRoomVersion(ctx context.Context, roomID string) (*events.RoomVersion, error) {
	var v string
	err := s.db.Reader().QueryRowContext(ctx, `SELECT room_version FROM rooms WHERE room_id = $1`, roomID).Scan(&v)
	if err != nil {
		return nil, fmt.Errorf("room version of %s: %w", roomID, err)
	}
	rv, ok := events.LookupRoomVersion(v)
	if !ok {
		return nil, fmt.Errorf("room %s: unknown version %q", roomID, v)
	}
	return rv, nil
}

// RoomExists reports whether the room is known locally. Rooms are never
// deleted, so a room once seen is answered from the version cache.
func (s *Store) RoomExists(ctx context.Context, roomID string) (bool, error) {
	if _, ok := s.versions.Load(roomID); ok {
		return true, nil
	}
	rv, err := s.loadRoomVersion(ctx, roomID)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("look up room %s: %w", roomID, err)
	}
	s.versions.Store(roomID, rv)
	return true, nil
}

// Event loads one event by id; nil if unknown.
func (s *Store) Event(ctx context.Context, eventID string) (*StoredEvent, error) {
	rows, err := s.db.Reader().QueryContext(ctx, `SELECT `+eventColumns+` FROM events e WHERE e.event_id = $1`, eventID)
	if err != nil {
		return nil, fmt.Errorf("load event %s: %w", eventID, err)
	}
	evs, err := s.scanEvents(ctx, rows)
	if err != nil {
		return nil, fmt.Errorf("load event %s: %w", eventID, err)
	}
	if len(evs) == 0 {
		return nil, nil
	}
	return evs[0], nil
}

// EventsByID loads several events (missing ones are skipped).
func (s *Store) EventsByID(ctx context.Context, ids []string) (map[string]*StoredEvent, error) {
	out := map[string]*StoredEvent{}
	const chunk = 200
	for i := 0; i < len(ids); i += chunk {
		part := ids[i:min(i+chunk, len(ids))]
		args, in := storage.AppendIn(nil, part)
		rows, err := s.db.Reader().QueryContext(ctx, `SELECT `+eventColumns+` FROM events e WHERE e.event_id IN (`+in+`)`, args...)
		if err != nil {
			return nil, fmt.Errorf("load events: %w", err)
		}
		evs, err := s.scanEvents(ctx, rows)
		if err != nil {
			return nil, fmt.Errorf("load events: %w", err)
		}
		for _, e := range evs {
			out[e.Event.EventID()] = e
		}
	}
	return out, nil
}

// RoomEvents pages through a room's timeline. Backwards returns events with
// stream_ordering <= from (newest first) and > to; forwards returns events
// with stream_ordering > from (oldest first) and <= to. to < 0 means no bound.
func (s *Store) RoomEvents(ctx context.Context, roomID string, from, to int64, backwards bool, limit int) ([]*StoredEvent, error) {
	var rows *sql.Rows
	var err error
	if backwards {
		// History fetched with /backfill sits at negative positions;
		// outliers there are not history.
		lower := to
		if lower < 0 {
			lower = math.MinInt64
		}
		rows, err = s.db.Reader().QueryContext(ctx, `SELECT `+eventColumns+` FROM events e
			WHERE e.room_id = $1 AND e.stream_ordering <= $2 AND e.stream_ordering > $3 AND NOT e.outlier
			ORDER BY e.stream_ordering DESC LIMIT $4`, roomID, from, lower, limit)
	} else {
		upper := to
		if upper < 0 {
			upper = 1<<62 - 1
		}
		rows, err = s.db.Reader().QueryContext(ctx, `SELECT `+eventColumns+` FROM events e
			WHERE e.room_id = $1 AND e.stream_ordering > $2 AND e.stream_ordering <= $3 AND NOT e.outlier
			ORDER BY e.stream_ordering ASC LIMIT $4`, roomID, from, upper, limit)
	}
	if err != nil {
		return nil, fmt.Errorf("page events of %s: %w", roomID, err)
	}
	evs, err := s.scanEvents(ctx, rows)
	if err != nil {
		return nil, fmt.Errorf("page events of %s: %w", roomID, err)
	}
	return evs, nil
}

// MaxStreamOrdering is the highest stream position of any event in the
// room (0 if none).
func (s *Store) MaxStreamOrdering(ctx context.Context, roomID string) (int64, error) {
	var so sql.NullInt64
	err := s.db.Reader().QueryRowContext(ctx, `SELECT max(stream_ordering) FROM events WHERE room_id = $1`, roomID).Scan(&so)
	if err != nil {
		return 0, fmt.Errorf("max stream ordering of %s: %w", roomID, err)
	}
	return so.Int64, nil
}

// CurrentStateEvent returns one current state event, or nil.
func (s *Store) CurrentStateEvent(ctx context.Context, roomID, typ, stateKey string) (*StoredEvent, error) {
	rows, err := s.db.Reader().QueryContext(ctx, `SELECT `+eventColumns+` FROM current_state cs
		JOIN events e ON e.event_id = cs.event_id WHERE cs.room_id = $1 AND cs.type = $2 AND cs.state_key = $3`,
		roomID, typ, stateKey)
	if err != nil {
		return nil, fmt.Errorf("load state %s of %s: %w", typ, roomID, err)
	}
	evs, err := s.scanEvents(ctx, rows)
	if err != nil || len(evs) == 0 {
		return nil, err
	}
	return evs[0], nil
}

// CurrentState returns the room's whole current state.
func (s *Store) CurrentState(ctx context.Context, roomID string) ([]*StoredEvent, error) {
	rows, err := s.db.Reader().QueryContext(ctx, `SELECT `+eventColumns+` FROM current_state cs
		JOIN events e ON e.event_id = cs.event_id WHERE cs.room_id = $1 ORDER BY cs.type, cs.state_key`, roomID)
	if err != nil {
		return nil, fmt.Errorf("load state of %s: %w", roomID, err)
	}
	return s.scanEvents(ctx, rows)
}

// StateAt returns the room's state as of stream position pos (after the
// event at pos). With types, only those (type, state_key) pairs (state_key
// "*" meaning any) are returned.
func (s *Store) StateAt(ctx context.Context, roomID string, pos int64, filter []eventauth.StateKey) ([]*StoredEvent, error) {
	q := `SELECT ` + eventColumns + ` FROM state_log sl JOIN events e ON e.event_id = sl.event_id
		WHERE sl.room_id = $1 AND sl.stream_ordering = (SELECT max(s2.stream_ordering) FROM state_log s2
			WHERE s2.room_id = sl.room_id AND s2.type = sl.type AND s2.state_key = sl.state_key AND s2.stream_ordering <= $2)`
	args := []any{roomID, pos}
	if len(filter) > 0 {
		var ors []string
		for _, k := range filter {
			args = append(args, k.Type)
			cond := fmt.Sprintf("(sl.type = $%d", len(args))
			if k.StateKey != "*" {
				args = append(args, k.StateKey)
				cond += fmt.Sprintf(" AND sl.state_key = $%d", len(args))
			}
			ors = append(ors, cond+")")
		}
		q += " AND (" + strings.Join(ors, " OR ") + ")"
	}
	rows, err := s.db.Reader().QueryContext(ctx, q+` ORDER BY sl.type, sl.state_key`, args...)
	if err != nil {
		return nil, fmt.Errorf("load state of %s at %d: %w", roomID, pos, err)
	}
	return s.scanEvents(ctx, rows)
}

// MembershipAt is a user's membership in a room at a stream position ("" if
// never a member).
func (s *Store) MembershipAt(ctx context.Context, roomID, userID string, pos int64) (string, int64, error) {
	var m sql.NullString
	var so int64
	err := s.db.Reader().QueryRowContext(ctx, `SELECT membership, stream_ordering FROM state_log
		WHERE room_id = $1 AND type = 'm.room.member' AND state_key = $2 AND stream_ordering <= $3
		ORDER BY stream_ordering DESC LIMIT 1`, roomID, userID, pos).Scan(&m, &so)
	if errors.Is(err, sql.ErrNoRows) {
		return "", 0, nil
	}
	if err != nil {
		return "", 0, fmt.Errorf("membership of %s in %s: %w", userID, roomID, err)
	}
	return m.String, so, nil
}

// Membership is the user's current membership and the stream position of
// that membership event ("" if none).
func (s *Store) Membership(ctx context.Context, roomID, userID string) (string, int64, error) {
	var m sql.NullString
	var so int64
	err := s.db.Reader().QueryRowContext(ctx, `SELECT membership, stream_ordering FROM current_state
		WHERE room_id = $1 AND type = 'm.room.member' AND state_key = $2`, roomID, userID).Scan(&m, &so)
	if errors.Is(err, sql.ErrNoRows) {
		return "", 0, nil
	}
	if err != nil {
		return "", 0, fmt.Errorf("membership of %s in %s: %w", userID, roomID, err)
	}
	return m.String, so, nil
}

// stateChange is one row of the state log for a single key.
type stateChange struct {
	pos        int64
	eventID    string
	membership string
}

// stateHistory returns every change of one state key, oldest first.
func (s *Store) stateHistory(ctx context.Context, roomID, typ, stateKey string) ([]stateChange, error) {
	rows, err := s.db.Reader().QueryContext(ctx, `SELECT stream_ordering, event_id, membership FROM state_log
		WHERE room_id = $1 AND type = $2 AND state_key = $3 ORDER BY stream_ordering`, roomID, typ, stateKey)
	if err != nil {
		return nil, fmt.Errorf("state history of %s: %w", roomID, err)
	}
	defer rows.Close()
	var out []stateChange
	for rows.Next() {
		var c stateChange
		var m sql.NullString
		if err := rows.Scan(&c.pos, &c.eventID, &m); err != nil {
			return nil, err
		}
		c.membership = m.String
		out = append(out, c)
	}
	return out, rows.Err()
}

// RoomsForUser lists rooms where the user's current membership is one of
// memberships.
func (s *Store) RoomsForUser(ctx context.Context, userID string, memberships ...string) ([]string, error) {
	args, in := storage.AppendIn([]any{userID}, memberships)
	rows, err := s.db.Reader().QueryContext(ctx, `SELECT room_id FROM current_state WHERE type = 'm.room.member'
		AND state_key = $1 AND membership IN (`+in+`) ORDER BY room_id`, args...)
	if err != nil {
		return nil, fmt.Errorf("rooms of %s: %w", userID, err)
	}
	return scanStrings(rows)
}

// UsersSharingJoinedRoom returns which of candidates are joined to a room
// that userID is also joined to. One query per 500 candidates, instead of a
// RoomsForUser per candidate: presence asks this for every user whose
// presence changed since a sync, which after a crowd comes online is
// everybody.
func (s *Store) UsersSharingJoinedRoom(ctx context.Context, userID string, candidates []string) (map[string]bool, error) {
	const chunk = 500
	out := map[string]bool{}
	for i := 0; i < len(candidates); i += chunk {
		part := candidates[i:min(i+chunk, len(candidates))]
		args, in := storage.AppendIn([]any{userID}, part)
		rows, err := s.db.Reader().QueryContext(ctx, `SELECT DISTINCT theirs.state_key FROM current_state mine
			JOIN current_state theirs ON theirs.room_id = mine.room_id
			WHERE mine.type = 'm.room.member' AND mine.state_key = $1 AND mine.membership = 'join'
			AND theirs.type = 'm.room.member' AND theirs.membership = 'join'
			AND theirs.state_key IN (`+in+`)`, args...)
		if err != nil {
			return nil, fmt.Errorf("users sharing a room with %s: %w", userID, err)
		}
		users, err := scanStrings(rows)
		if err != nil {
			return nil, fmt.Errorf("users sharing a room with %s: %w", userID, err)
		}
		for _, u := range users {
			out[u] = true
		}
	}
	return out, nil
}

// JoinedMembers lists the room's joined users.
func (s *Store) JoinedMembers(ctx context.Context, roomID string) ([]string, error) {
	rows, err := s.db.Reader().QueryContext(ctx, `SELECT state_key FROM current_state
		WHERE room_id = $1 AND type = 'm.room.member' AND membership = 'join' ORDER BY state_key`, roomID)
	if err != nil {
		return nil, fmt.Errorf("members of %s: %w", roomID, err)
	}
	return scanStrings(rows)
}

// StateContent decodes the content of a current state event into v; false
// when the state is absent.
func (s *Store) StateContent(ctx context.Context, roomID, typ, stateKey string, v any) (bool, error) {
	se, err := s.CurrentStateEvent(ctx, roomID, typ, stateKey)
	if err != nil || se == nil {
		return false, err
	}
	if err := json.Unmarshal(se.Event.Content(), v); err != nil {
		return false, nil // malformed content counts as absent for readers
	}
	return true, nil
}

// MembershipRecord is one change of a user's membership.
type MembershipRecord struct {
	RoomID     string
	Membership string
	Pos        int64
	EventID    string
}

// MembershipChanges lists a user's membership changes with stream position
// in (from, to], oldest first.
func (s *Store) MembershipChanges(ctx context.Context, userID string, from, to int64) ([]MembershipRecord, error) {
	rows, err := s.db.Reader().QueryContext(ctx, `SELECT room_id, membership, stream_ordering, event_id FROM state_log
		WHERE type = 'm.room.member' AND state_key = $1 AND stream_ordering > $2 AND stream_ordering <= $3
		ORDER BY stream_ordering`, userID, from, to)
	if err != nil {
		return nil, fmt.Errorf("membership changes of %s: %w", userID, err)
	}
	defer rows.Close()
	var out []MembershipRecord
	for rows.Next() {
		var c MembershipRecord
		var m sql.NullString
		if err := rows.Scan(&c.RoomID, &m, &c.Pos, &c.EventID); err != nil {
			return nil, err
		}
		c.Membership = m.String
		out = append(out, c)
	}
	return out, rows.Err()
}

// CurrentMemberships maps each room the user has a membership in to that
// membership and its position, as the database has it now.
func (s *Store) CurrentMemberships(ctx context.Context, userID string) (map[string]MembershipRecord, error) {
	return s.loadCurrentMemberships(ctx, userID)
}

// SyncMemberships is CurrentMemberships for readers bounded by this
// process's stream positions (sync): with the state cache enabled the map
// comes from the cache, dropped whenever one of the user's memberships
// changes before that change's position becomes visible here. A reader
// that reads past its positions (its own write committed through another
// process, not yet replicated here) must use CurrentMemberships. The map
// is shared: callers must not modify it.
func (s *Store) SyncMemberships(ctx context.Context, userID string) (map[string]MembershipRecord, error) {
	return throughCache(s.state, membershipsKey(userID), func() (map[string]MembershipRecord, error) {
		return s.loadCurrentMemberships(ctx, userID)
	})
}

// membershipsKey is the state cache's key for a user's memberships in all
// rooms; StateChanged drops it with any m.room.member change for the user.
func membershipsKey(userID string) stateKey {
	return stateKey{typ: "m.room.member", stateKey: userID}
}

func (s *Store) loadCurrentMemberships(ctx context.Context, userID string) (map[string]MembershipRecord, error) {
	rows, err := s.db.Reader().QueryContext(ctx, `SELECT room_id, membership, stream_ordering, event_id FROM current_state
		WHERE type = 'm.room.member' AND state_key = $1`, userID)
	if err != nil {
		return nil, fmt.Errorf("memberships of %s: %w", userID, err)
	}
	defer rows.Close()
	out := map[string]MembershipRecord{}
	for rows.Next() {
		var c MembershipRecord
		var m sql.NullString
		if err := rows.Scan(&c.RoomID, &m, &c.Pos, &c.EventID); err != nil {
			return nil, err
		}
		c.Membership = m.String
		out[c.RoomID] = c
	}
	return out, rows.Err()
}

// RoomsWithEvents returns, for rooms that got events with position in
// (from, to], the highest such position.
func (s *Store) RoomsWithEvents(ctx context.Context, from, to int64) (map[string]int64, error) {
	rows, err := s.db.Reader().QueryContext(ctx, `SELECT room_id, max(stream_ordering) FROM events
		WHERE stream_ordering > $1 AND stream_ordering <= $2 GROUP BY room_id`, from, to)
	if err != nil {
		return nil, fmt.Errorf("rooms with events: %w", err)
	}
	defer rows.Close()
	out := map[string]int64{}
	for rows.Next() {
		var id string
		var pos int64
		if err := rows.Scan(&id, &pos); err != nil {
			return nil, err
		}
		out[id] = pos
	}
	return out, rows.Err()
}

// StateKeysChanged lists the state keys of a room changed in (from, to].
func (s *Store) StateKeysChanged(ctx context.Context, roomID string, from, to int64) ([]eventauth.StateKey, error) {
	rows, err := s.db.Reader().QueryContext(ctx, `SELECT DISTINCT type, state_key FROM state_log
		WHERE room_id = $1 AND stream_ordering > $2 AND stream_ordering <= $3`, roomID, from, to)
	if err != nil {
		return nil, fmt.Errorf("changed state of %s: %w", roomID, err)
	}
	defer rows.Close()
	var out []eventauth.StateKey
	for rows.Next() {
		var k eventauth.StateKey
		if err := rows.Scan(&k.Type, &k.StateKey); err != nil {
			return nil, err
		}
		out = append(out, k)
	}
	return out, rows.Err()
}

// StateAtKeys is StateAt for an explicit (possibly long) key list.
func (s *Store) StateAtKeys(ctx context.Context, roomID string, pos int64, keys []eventauth.StateKey) ([]*StoredEvent, error) {
	var out []*StoredEvent
	const chunk = 100
	for i := 0; i < len(keys); i += chunk {
		evs, err := s.StateAt(ctx, roomID, pos, keys[i:min(i+chunk, len(keys))])
		if err != nil {
			return nil, err
		}
		out = append(out, evs...)
	}
	return out, nil
}

// MemberCounts counts joined and invited members.
func (s *Store) MemberCounts(ctx context.Context, roomID string) (joined, invited int, err error) {
	rows, err := s.db.Reader().QueryContext(ctx, `SELECT membership, count(*) FROM current_state
		WHERE room_id = $1 AND type = 'm.room.member' AND membership IN ('join', 'invite') GROUP BY membership`, roomID)
	if err != nil {
		return 0, 0, fmt.Errorf("member counts of %s: %w", roomID, err)
	}
	defer rows.Close()
	for rows.Next() {
		var m string
		var n int
		if err := rows.Scan(&m, &n); err != nil {
			return 0, 0, err
		}
		if m == "join" {
			joined = n
		} else {
			invited = n
		}
	}
	return joined, invited, rows.Err()
}

// Heroes picks up to n members other than userID for the room summary,
// joined and invited first, in a stable order.
func (s *Store) Heroes(ctx context.Context, roomID, userID string, n int) ([]string, error) {
	rows, err := s.db.Reader().QueryContext(ctx, `SELECT state_key FROM current_state
		WHERE room_id = $1 AND type = 'm.room.member' AND state_key <> $2 AND membership IN ('join', 'invite')
		ORDER BY stream_ordering LIMIT $3`, roomID, userID, n)
	if err != nil {
		return nil, fmt.Errorf("heroes of %s: %w", roomID, err)
	}
	return scanStrings(rows)
}

// ForgottenRooms lists the rooms the user forgot.
func (s *Store) ForgottenRooms(ctx context.Context, userID string) (map[string]bool, error) {
	rows, err := s.db.Reader().QueryContext(ctx, `SELECT room_id FROM forgotten_rooms WHERE user_id = $1`, userID)
	if err != nil {
		return nil, fmt.Errorf("forgotten rooms of %s: %w", userID, err)
	}
	defer rows.Close()
	out := map[string]bool{}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		out[id] = true
	}
	return out, rows.Err()
}

// scanStrings reads a one-column result of strings and closes it.
func scanStrings(rows *sql.Rows) ([]string, error) {
	defer rows.Close()
	out := []string{}
	for rows.Next() {
		var v string
		if err := rows.Scan(&v); err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}
