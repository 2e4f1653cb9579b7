package rooms

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"maps"
	"sync"
	"sync/atomic"

	"ganglion/internal/eventauth"
	"ganglion/internal/events"
	"ganglion/internal/stateres"
	"ganglion/internal/storage"
)

// StateIDs is a room state as event ids: (type, state_key) → event id.
type StateIDs = map[eventauth.StateKey]string

// stateRef is a state with where it is stored: a state group, or the
// room's state log at a position (the state after every timeline event
// that has no group of its own).
type stateRef struct {
	ids    StateIDs
	group  string // set for a group
	logPos int64  // set for the state log
}

// maxGroupChain bounds the deltas a state is rebuilt from: a longer chain
// is written as a snapshot instead.
const maxGroupChain = 16

// groupCache keeps a few rebuilt states (they are immutable: a group never
// changes and the state log only grows at new positions).
type groupCache struct {
	mu sync.Mutex
	m  map[string]StateIDs
}

const maxCachedStates = 64

func (c *groupCache) get(key string) (StateIDs, bool) {
	if c == nil {
		return nil, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	s, ok := c.m[key]
	return s, ok
}

func (c *groupCache) put(key string, s StateIDs) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= maxCachedStates {
		c.m = map[string]StateIDs{}
	}
	c.m[key] = s
}

// logStateIDs is the room's state after position pos, from the state log.
func logStateIDs(ctx context.Context, q storage.Querier, cache *groupCache, roomID string, pos int64) (StateIDs, error) {
	key := fmt.Sprintf("l%d:%s", pos, roomID)
	if s, ok := cache.get(key); ok {
		return s, nil
	}
	rows, err := q.QueryContext(ctx, `SELECT sl.type, sl.state_key, sl.event_id FROM state_log sl
		WHERE sl.room_id = $1 AND sl.stream_ordering = (SELECT max(s2.stream_ordering) FROM state_log s2
			WHERE s2.room_id = sl.room_id AND s2.type = sl.type AND s2.state_key = sl.state_key AND s2.stream_ordering <= $2)`,
		roomID, pos)
	if err != nil {
		return nil, fmt.Errorf("load state of %s at %d: %w", roomID, pos, err)
	}
	defer rows.Close()
	out := StateIDs{}
	for rows.Next() {
		var k eventauth.StateKey
		var id string
		if err := rows.Scan(&k.Type, &k.StateKey, &id); err != nil {
			return nil, fmt.Errorf("load state of %s at %d: %w", roomID, pos, err)
		}
		out[k] = id
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("load state of %s at %d: %w", roomID, pos, err)
	}
	cache.put(key, out)
	return out, nil
}

// groupStateIDs rebuilds a state group: its base, then the deltas of each
// group on the way back up.
func groupStateIDs(ctx context.Context, q storage.Querier, cache *groupCache, group string) (StateIDs, int, error) {
	type link struct {
		id    string
		chain int
	}
	var path []link
	var base StateIDs
	cur := group
	for {
		if s, ok := cache.get("g" + cur); ok {
			base = s
			break
		}
		var roomID string
		var prev sql.NullString
		var logPos sql.NullInt64
		var chain int
		err := q.QueryRowContext(ctx, `SELECT room_id, prev_group, log_pos, chain FROM state_groups WHERE group_id = $1`, cur).
			Scan(&roomID, &prev, &logPos, &chain)
		if err != nil {
			return nil, 0, fmt.Errorf("load state group %s: %w", cur, err)
		}
		path = append(path, link{cur, chain})
		if prev.Valid {
			if len(path) > maxGroupChain*4 {
				return nil, 0, fmt.Errorf("load state group %s: chain longer than %d", group, maxGroupChain*4)
			}
			cur = prev.String
			continue
		}
		if logPos.Valid {
			s, err := logStateIDs(ctx, q, cache, roomID, logPos.Int64)
			if err != nil {
				return nil, 0, err
			}
			base = s
		} else {
			base = StateIDs{}
		}
		break
	}
	state := maps.Clone(base)
	chain := 0
	for i := len(path) - 1; i >= 0; i-- {
		rows, err := q.QueryContext(ctx, `SELECT type, state_key, event_id FROM state_group_entries WHERE group_id = $1`, path[i].id)
		if err != nil {
			return nil, 0, fmt.Errorf("load state group %s: %w", path[i].id, err)
		}
		for rows.Next() {
			var k eventauth.StateKey
			var id string
			if err := rows.Scan(&k.Type, &k.StateKey, &id); err != nil {
				rows.Close()
				return nil, 0, fmt.Errorf("load state group %s: %w", path[i].id, err)
			}
			state[k] = id
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return nil, 0, fmt.Errorf("load state group %s: %w", path[i].id, err)
		}
		chain = path[i].chain
		cache.put("g"+path[i].id, state)
		if i > 0 {
			state = maps.Clone(state)
		}
	}
	if len(path) == 0 {
		var c int
		if err := q.QueryRowContext(ctx, `SELECT chain FROM state_groups WHERE group_id = $1`, group).Scan(&c); err != nil {
			return nil, 0, fmt.Errorf("load state group %s: %w", group, err)
		}
		chain = c
	}
	return state, chain, nil
}

// stateAfterEvent is the state after a stored event, and false when this
// server does not know it (an outlier, or an unknown event).
func stateAfterEvent(ctx context.Context, q storage.Querier, cache *groupCache, roomID, eventID string) (*stateRef, bool, error) {
	var group string
	err := q.QueryRowContext(ctx, `SELECT group_id FROM event_state WHERE event_id = $1`, eventID).Scan(&group)
	switch {
	case err == nil:
		ids, _, err := groupStateIDs(ctx, q, cache, group)
		if err != nil {
			return nil, false, err
		}
		return &stateRef{ids: ids, group: group}, true, nil
	case !errors.Is(err, sql.ErrNoRows):
		return nil, false, fmt.Errorf("load state of event %s: %w", eventID, err)
	}
	var pos int64
	err = q.QueryRowContext(ctx, `SELECT stream_ordering FROM events WHERE event_id = $1 AND room_id = $2`, eventID, roomID).Scan(&pos)
	if errors.Is(err, sql.ErrNoRows) || (err == nil && pos <= 0) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("load state of event %s: %w", eventID, err)
	}
	ids, err := logStateIDs(ctx, q, cache, roomID, pos)
	if err != nil {
		return nil, false, err
	}
	return &stateRef{ids: ids, logPos: pos}, true, nil
}

// storedEvent is an event as stored, wherever: the timeline, an outlier,
// or a rejection.
type storedEvent struct {
	ev         *events.Event
	pos        int64  // stream ordering; negative for outliers and backfilled history, 0 for rejections
	rejected   string // the reason, for rejected and soft-failed events
	softFailed bool
	outlier    bool
}

// loadEventsAny loads the events with the given ids from the timeline,
// the outliers and the rejections. Unknown ids are left out.
func loadEventsAny(ctx context.Context, q storage.Querier, rv *events.RoomVersion, ids []string) (map[string]*storedEvent, error) {
	out := make(map[string]*storedEvent, len(ids))
	const chunk = 200
	for i := 0; i < len(ids); i += chunk {
		part := ids[i:min(i+chunk, len(ids))]
		args, in := storage.AppendIn(nil, part)
		rows, err := q.QueryContext(ctx, `SELECT event_id, stream_ordering, json, '', FALSE, outlier FROM events WHERE event_id IN (`+in+`)
			UNION ALL SELECT event_id, 0, json, reason, soft_failed, FALSE FROM event_rejections WHERE event_id IN (`+in+`)`, args...)
		if err != nil {
			return nil, fmt.Errorf("load events: %w", err)
		}
		type raw struct {
			id, json, reason string
			pos              int64
			soft, outlier    bool
		}
		var raws []raw
		for rows.Next() {
			var r raw
			if err := rows.Scan(&r.id, &r.pos, &r.json, &r.reason, &r.soft, &r.outlier); err != nil {
				rows.Close()
				return nil, fmt.Errorf("load events: %w", err)
			}
			raws = append(raws, r)
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return nil, fmt.Errorf("load events: %w", err)
		}
		for _, r := range raws {
			if _, dup := out[r.id]; dup {
				continue
			}
			ev, err := events.Parse([]byte(r.json), rv)
			if err != nil {
				return nil, fmt.Errorf("parse stored event %s: %w", r.id, err)
			}
			out[r.id] = &storedEvent{ev: ev, pos: r.pos, rejected: r.reason, softFailed: r.soft, outlier: r.outlier}
		}
	}
	return out, nil
}

// dbFetcher is state resolution's view of stored events. Rejected events
// are invisible to it, as the spec asks; soft-failed ones are not
// rejected.
type dbFetcher struct {
	q     storage.Querier
	rv    *events.RoomVersion
	known map[string]*storedEvent // shared with the caller; filled as loaded
}

var _ stateres.EventFetcher = (*dbFetcher)(nil)

func (f *dbFetcher) load(ctx context.Context, ids []string) error {
	var need []string
	for _, id := range ids {
		if _, ok := f.known[id]; !ok {
			need = append(need, id)
		}
	}
	if len(need) == 0 {
		return nil
	}
	got, err := loadEventsAny(ctx, f.q, f.rv, need)
	if err != nil {
		return err
	}
	for id, se := range got {
		f.known[id] = se
	}
	return nil
}

func (f *dbFetcher) usable(id string) *events.Event {
	se := f.known[id]
	if se == nil || (se.rejected != "" && !se.softFailed) {
		return nil
	}
	return se.ev
}

// Events implements stateres.EventFetcher.
func (f *dbFetcher) Events(ctx context.Context, ids []string) (map[string]*events.Event, error) {
	if err := f.load(ctx, ids); err != nil {
		return nil, err
	}
	out := make(map[string]*events.Event, len(ids))
	for _, id := range ids {
		if ev := f.usable(id); ev != nil {
			out[id] = ev
		}
	}
	return out, nil
}

// AuthChain implements stateres.EventFetcher: a breadth-first walk of
// auth_events, one query per level.
func (f *dbFetcher) AuthChain(ctx context.Context, ids []string) ([]string, error) {
	seen := map[string]bool{}
	var out []string
	frontier := ids
	for len(frontier) > 0 {
		if err := f.load(ctx, frontier); err != nil {
			return nil, err
		}
		var next []string
		for _, id := range frontier {
			ev := f.usable(id)
			if ev == nil {
				continue
			}
			for _, a := range ev.AuthEventIDs() {
				if !seen[a] {
					seen[a] = true
					out = append(out, a)
					next = append(next, a)
				}
			}
		}
		frontier = next
	}
	return out, nil
}

// stateBeforeEvent computes the state before a stored event from its prev
// events: the state after the one prev event, or the resolution of the
// states after each. ok is false when a prev event's state is unknown.
func stateBeforeEvent(ctx context.Context, q storage.Querier, cache *groupCache, rv *events.RoomVersion, ev *events.Event,
	known map[string]*storedEvent) (StateIDs, bool, error) {
	prevs := ev.PrevEventIDs()
	if len(prevs) == 0 {
		return StateIDs{}, true, nil
	}
	var sets []StateIDs
	for _, p := range prevs {
		ref, ok, err := stateAfterEvent(ctx, q, cache, ev.RoomID(), p)
		if err != nil || !ok {
			return nil, false, err
		}
		sets = append(sets, ref.ids)
	}
	if len(sets) == 1 {
		return maps.Clone(sets[0]), true, nil
	}
	res, err := stateres.Resolve(ctx, rv, sets, &dbFetcher{q: q, rv: rv, known: known})
	if err != nil {
		return nil, false, fmt.Errorf("resolve state before %s: %w", ev.EventID(), err)
	}
	return res, true, nil
}

// StateBeforeEvent returns the room state before a stored event (what the
// federation /state and /state_ids answer and send_join sends), computed
// from its prev events, and nil when this server does not know it.
func (s *Store) StateBeforeEvent(ctx context.Context, eventID string) ([]*StoredEvent, error) {
	se, err := s.Event(ctx, eventID)
	if err != nil || se == nil {
		return nil, err
	}
	ev := se.Event
	var ids StateIDs
	var group string
	err = s.db.Reader().QueryRowContext(ctx, `SELECT group_id FROM event_state_before WHERE event_id = $1`, eventID).Scan(&group)
	switch {
	case err == nil:
		if ids, _, err = groupStateIDs(ctx, s.db.Reader(), nil, group); err != nil {
			return nil, err
		}
	case errors.Is(err, sql.ErrNoRows):
		return s.StateFromPrevEvents(ctx, ev)
	default:
		return nil, fmt.Errorf("load state before %s: %w", eventID, err)
	}
	return s.stateEvents(ctx, ids)
}

// StateFromPrevEvents is the state before an event (stored or not) as its
// prev events give it: the state after the one prev event, or the
// resolution of the states after each. It is nil when a prev event's
// state is not known here.
func (s *Store) StateFromPrevEvents(ctx context.Context, ev *events.Event) ([]*StoredEvent, error) {
	ids, ok, err := stateBeforeEvent(ctx, s.db.Reader(), nil, ev.Version(), ev, map[string]*storedEvent{})
	if err != nil || !ok {
		return nil, err
	}
	return s.stateEvents(ctx, ids)
}

// stateEvents loads a state's events.
func (s *Store) stateEvents(ctx context.Context, ids StateIDs) ([]*StoredEvent, error) {
	list := make([]string, 0, len(ids))
	for _, id := range ids {
		list = append(list, id)
	}
	byID, err := s.EventsByID(ctx, list)
	if err != nil {
		return nil, err
	}
	out := make([]*StoredEvent, 0, len(list))
	for _, id := range list {
		if e := byID[id]; e != nil {
			out = append(out, e)
		}
	}
	return out, nil
}

// LoadStateResets learns, at start-up, the rooms whose current state was
// ever reset (state_resets: one row per such position, few and small);
// StateReset keeps it up to date after.
func (s *Store) LoadStateResets(ctx context.Context) error {
	rows, err := s.db.Reader().QueryContext(ctx, `SELECT room_id, max(stream_ordering) FROM state_resets GROUP BY room_id`)
	if err != nil {
		return fmt.Errorf("load state resets: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var room string
		var pos int64
		if err := rows.Scan(&room, &pos); err != nil {
			return fmt.Errorf("load state resets: %w", err)
		}
		s.StateReset(room, pos)
	}
	return rows.Err()
}

// StateReset records that at events position pos the room's current state
// changed by more than the event there: a remote event resolved a fork or
// brought the state of a room joined through another server. The
// persister's and the events replication's hook.
func (s *Store) StateReset(roomID string, pos int64) {
	if s == nil {
		return
	}
	v, ok := s.resets.Load(roomID)
	if !ok {
		v, _ = s.resets.LoadOrStore(roomID, new(atomic.Int64))
	}
	last := v.(*atomic.Int64)
	for {
		cur := last.Load()
		if pos <= cur || last.CompareAndSwap(cur, pos) {
			return
		}
	}
}

// StateResetsIn returns the state entries that changed in [from, to]
// without being the event at their position (see StateReset), the latest
// per key: sync sends them with the state before a timeline covering
// those positions, since no timeline event carries them. Rooms that never
// had one (every room without remote events) cost no query: the store
// knows them all, from LoadStateResets and StateReset.
func (s *Store) StateResetsIn(ctx context.Context, roomID string, from, to int64) ([]*StoredEvent, error) {
	v, ok := s.resets.Load(roomID)
	if !ok || v.(*atomic.Int64).Load() < from {
		return nil, nil
	}
	rows, err := s.db.Reader().QueryContext(ctx, `SELECT sl.type, sl.state_key, sl.event_id, sl.stream_ordering FROM state_log sl
		JOIN state_resets r ON r.room_id = sl.room_id AND r.stream_ordering = sl.stream_ordering
		LEFT JOIN events e ON e.stream_ordering = sl.stream_ordering
		WHERE sl.room_id = $1 AND sl.stream_ordering >= $2 AND sl.stream_ordering <= $3
		AND (e.event_id IS NULL OR e.event_id <> sl.event_id)
		ORDER BY sl.stream_ordering`, roomID, from, to)
	if err != nil {
		return nil, fmt.Errorf("state resets of %s: %w", roomID, err)
	}
	latest := map[eventauth.StateKey]string{}
	for rows.Next() {
		var k eventauth.StateKey
		var id string
		var pos int64
		if err := rows.Scan(&k.Type, &k.StateKey, &id, &pos); err != nil {
			rows.Close()
			return nil, fmt.Errorf("state resets of %s: %w", roomID, err)
		}
		latest[k] = id
	}
	err = rows.Err()
	rows.Close()
	if err != nil || len(latest) == 0 {
		return nil, err
	}
	ids := make([]string, 0, len(latest))
	for _, id := range latest {
		ids = append(ids, id)
	}
	byID, err := s.EventsByID(ctx, ids)
	if err != nil {
		return nil, err
	}
	out := make([]*StoredEvent, 0, len(ids))
	for _, id := range ids {
		if se := byID[id]; se != nil {
			out = append(out, se)
		}
	}
	return out, nil
}

// KnownEvents tells which of the ids this server has stored in any form:
// in the timeline, as outliers, or as rejected or soft-failed events (so
// a federation handler does not fetch them again).
func (s *Store) KnownEvents(ctx context.Context, ids []string) (map[string]bool, error) {
	out := make(map[string]bool, len(ids))
	const chunk = 200
	for i := 0; i < len(ids); i += chunk {
		part := ids[i:min(i+chunk, len(ids))]
		args, in := storage.AppendIn(nil, part)
		rows, err := s.db.Reader().QueryContext(ctx, `SELECT event_id FROM events WHERE event_id IN (`+in+`)
			UNION SELECT event_id FROM event_rejections WHERE event_id IN (`+in+`)`, args...)
		if err != nil {
			return nil, fmt.Errorf("look events up: %w", err)
		}
		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				rows.Close()
				return nil, fmt.Errorf("look events up: %w", err)
			}
			out[id] = true
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return nil, fmt.Errorf("look events up: %w", err)
		}
	}
	return out, nil
}

// HostsJoined tells whether a user of serverName is joined to the room:
// another server's events are only taken for rooms we are in.
func (s *Store) HostsJoined(ctx context.Context, roomID, serverName string) (bool, error) {
	var one int
	err := s.db.Reader().QueryRowContext(ctx, `SELECT 1 FROM current_state WHERE room_id = $1 AND type = 'm.room.member'
		AND membership = 'join' AND state_key LIKE $2 LIMIT 1`, roomID, "%:"+serverName).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("is %s in %s: %w", serverName, roomID, err)
	}
	return true, nil
}
