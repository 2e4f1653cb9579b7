package rooms

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"sync"
	"time"

	"ganglion/internal/eventauth"
	"ganglion/internal/events"
	"ganglion/internal/mxhttp"
	"ganglion/internal/storage"
	"ganglion/internal/streams"
)

// Draft is an event as a client asked for it: everything the persister
// fills in (prev_events, auth_events, depth, hashes, signatures, id) is
// missing. Event creators validate drafts; the room's persister finalises
// them, so concurrent senders never fork a room's DAG.
type Draft struct {
	Type     string          `json:"type"`
	StateKey *string         `json:"state_key,omitempty"`
	Sender   string          `json:"sender"`
	Content  json.RawMessage `json:"content"`
	Redacts  string          `json:"redacts,omitempty"`
	// TxnID and DeviceID make sends idempotent per device.
	TxnID    string `json:"txn_id,omitempty"`
	DeviceID string `json:"device_id,omitempty"`
	// RoomVersion is only read for m.room.create drafts.
	RoomVersion string `json:"room_version,omitempty"`
}

// Persisted is the outcome of one draft.
type Persisted struct {
	EventID   string `json:"event_id"`
	StreamPos int64  `json:"stream_ordering"`
	// Deduplicated is set when the draft's txn id had already been used and
	// the earlier event is returned instead.
	Deduplicated bool `json:"deduplicated,omitempty"`
}

// EventWriter is the seam between event creators and persisters: in the
// monolith it is the local Persister; in a fleet, a client that forwards
// drafts to the room's persister over HTTP replication.
type EventWriter interface {
	// SendEvents finalises and persists drafts for one room, in order, in one
	// transaction: all or nothing.
	SendEvents(ctx context.Context, roomID string, drafts []Draft) ([]Persisted, error)
}

var _ EventWriter = (*Persister)(nil)

// Persister finalises and stores the events of the rooms it owns.
type Persister struct {
	db         *storage.DB
	log        *slog.Logger
	reg        *streams.Registry
	tracker    *streams.Tracker
	serverName string
	instance   string
	key        events.SigningKey
	now        func() time.Time

	// One lock per shard of rooms: events of one room are finalised one
	// batch at a time; rooms in other shards proceed in parallel.
	locks [256]sync.Mutex

	cacheMu sync.Mutex
	cache   map[string]*roomCache
}

// roomCache is the persister's view of a room it owns. It is only changed
// after a commit, under the room's lock, so it always matches the database.
type roomCache struct {
	version     *events.RoomVersion
	extremities []string
	depth       int64
	state       map[eventauth.StateKey]*events.Event // loaded lazily
	missing     map[eventauth.StateKey]bool          // keys known to be absent
}

const maxCachedRooms = 10000

// NewPersister loads the writer's position and starts its tracker.
func NewPersister(ctx context.Context, db *storage.DB, reg *streams.Registry, serverName string, key events.SigningKey, log *slog.Logger) (*Persister, error) {
	p := &Persister{db: db, log: log, reg: reg, serverName: serverName, instance: reg.Instance(), key: key,
		now: time.Now, cache: map[string]*roomCache{}}
	pos, err := p.startPosition(ctx)
	if err != nil {
		return nil, err
	}
	p.tracker = reg.LocalTracker(streams.Events, pos)
	return p, nil
}

// startPosition is where this writer's position resumes after a restart:
// every id it allocated and committed is in the events table, and ids of
// transactions that died uncommitted are gone for good, so the maximum
// committed id is gap-free.
func (p *Persister) startPosition(ctx context.Context) (int64, error) {
	var pos sql.NullInt64
	err := p.db.Reader().QueryRowContext(ctx, `SELECT max(stream_ordering) FROM events WHERE instance_name = $1`, p.instance).Scan(&pos)
	if err != nil {
		return 0, fmt.Errorf("load events position of %s: %w", p.instance, err)
	}
	var saved sql.NullInt64
	err = p.db.Reader().QueryRowContext(ctx, `SELECT stream_id FROM stream_positions WHERE stream_name = 'events' AND instance_name = $1`, p.instance).Scan(&saved)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return 0, fmt.Errorf("load stream_positions: %w", err)
	}
	// As in streams.NewTableWriter: nothing of ours is in flight at start,
	// so the sequence's current value is safe for our own position.
	seq, err := p.db.CurrentStreamSeq(ctx, string(streams.Events))
	if err != nil {
		return 0, fmt.Errorf("load events sequence: %w", err)
	}
	return max(pos.Int64, saved.Int64, seq), nil
}

// Position is this persister's committed position on the events stream.
func (p *Persister) Position() int64 { return p.tracker.Position() }

// SavePosition records the tracker's position in stream_positions. It runs
// periodically and at shutdown rather than in every transaction.
func (p *Persister) SavePosition(ctx context.Context) error {
	pos := p.tracker.Position()
	_, err := p.db.Exec(ctx, `INSERT INTO stream_positions (stream_name, instance_name, stream_id) VALUES ('events', $1, $2)
		ON CONFLICT (stream_name, instance_name) DO UPDATE SET stream_id = excluded.stream_id
		WHERE stream_positions.stream_id < excluded.stream_id`, p.instance, pos)
	if err != nil {
		return fmt.Errorf("save events position: %w", err)
	}
	return nil
}

func (p *Persister) lockRoom(roomID string) func() {
	h := fnv.New32a()
	h.Write([]byte(roomID))
	m := &p.locks[h.Sum32()%uint32(len(p.locks))]
	m.Lock()
	return m.Unlock
}

// SendEvents implements EventWriter.
func (p *Persister) SendEvents(ctx context.Context, roomID string, drafts []Draft) ([]Persisted, error) {
	if len(drafts) == 0 {
		return nil, nil
	}
	unlock := p.lockRoom(roomID)
	defer unlock()

	rc, err := p.room(ctx, roomID, drafts[0])
	if err != nil {
		return nil, err
	}
	// work is the batch's overlay over the cached room; it becomes the cache
	// only after commit.
	work := &roomCache{version: rc.version, extremities: rc.extremities, depth: rc.depth,
		state: map[eventauth.StateKey]*events.Event{}, missing: map[eventauth.StateKey]bool{}}
	getState := func(ctx context.Context, q storage.Querier, k eventauth.StateKey) (*events.Event, error) {
		if ev, ok := work.state[k]; ok {
			return ev, nil
		}
		if work.missing[k] {
			return nil, nil
		}
		return p.cachedState(ctx, q, roomID, rc, k)
	}

	results := make([]Persisted, len(drafts))
	var built []*events.Event
	res := p.tracker.Reserve()
	defer res.Abort() // no-op after Done
	err = p.db.Tx(ctx, func(tx *sql.Tx) error {
		// A retried transaction starts from the committed room again.
		built = built[:0]
		clear(work.state)
		work.extremities, work.depth = rc.extremities, rc.depth
		for i, d := range drafts {
			if d.TxnID != "" && d.DeviceID != "" {
				var id string
				var so int64
				err := tx.QueryRowContext(ctx, `SELECT event_id, stream_ordering FROM events
					WHERE sender = $1 AND sender_device = $2 AND room_id = $3 AND txn_id = $4`,
					d.Sender, d.DeviceID, roomID, d.TxnID).Scan(&id, &so)
				if err == nil {
					results[i] = Persisted{EventID: id, StreamPos: so, Deduplicated: true}
					continue
				}
				if !errors.Is(err, sql.ErrNoRows) {
					return fmt.Errorf("check txn id: %w", err)
				}
			}
			ev, replaces, err := p.finalise(ctx, tx, roomID, work, d, getState)
			if err != nil {
				return err
			}
			id, err := p.db.NextStreamID(ctx, tx, string(streams.Events))
			if err != nil {
				return err
			}
			res.Add(id)
			if err := p.insert(ctx, tx, ev, id, d, replaces); err != nil {
				return err
			}
			results[i] = Persisted{EventID: ev.EventID(), StreamPos: id}
			built = append(built, ev)
			if ev.IsState() {
				k := eventauth.StateKey{Type: ev.Type(), StateKey: *ev.StateKey()}
				work.state[k] = ev
				delete(work.missing, k)
			}
			work.extremities, work.depth = []string{ev.EventID()}, ev.Depth()
		}
		if len(built) == 0 {
			return nil
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM forward_extremities WHERE room_id = $1`, roomID); err != nil {
			return fmt.Errorf("update extremities: %w", err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO forward_extremities (room_id, event_id) VALUES ($1, $2)`,
			roomID, work.extremities[0]); err != nil {
			return fmt.Errorf("update extremities: %w", err)
		}
		return nil
	})
	if err != nil {
		if rc.state == nil {
			p.forget(roomID)
		}
		return nil, err
	}
	// Committed: fold the overlay into the cache, then let readers see it.
	rc.extremities, rc.depth = work.extremities, work.depth
	for k, ev := range work.state {
		if rc.state == nil {
			rc.state = map[eventauth.StateKey]*events.Event{}
		}
		rc.state[k] = ev
		delete(rc.missing, k)
	}
	res.Done()
	if len(built) > 0 {
		p.reg.WakeAt(streams.Events, results[len(results)-1].StreamPos, WakeKeys(roomID, built)...)
	}
	return results, nil
}

// WakeKeys are the notifier keys new events wake: the room's listeners
// and, for membership changes, the target user (whose set of rooms
// changed).
func WakeKeys(roomID string, evs []*events.Event) []string {
	keys := []string{streams.RoomKey(roomID)}
	for _, ev := range evs {
		if ev.Type() == "m.room.member" && ev.StateKey() != nil {
			keys = append(keys, streams.UserKey(*ev.StateKey()))
		}
	}
	return keys
}

func (p *Persister) forget(roomID string) {
	p.cacheMu.Lock()
	delete(p.cache, roomID)
	p.cacheMu.Unlock()
}

// room returns the cached room, loading it (or, for a create draft,
// starting it) on first use.
func (p *Persister) room(ctx context.Context, roomID string, first Draft) (*roomCache, error) {
	p.cacheMu.Lock()
	rc := p.cache[roomID]
	p.cacheMu.Unlock()
	if rc != nil {
		return rc, nil
	}
	var version string
	err := p.db.Reader().QueryRowContext(ctx, `SELECT room_version FROM rooms WHERE room_id = $1`, roomID).Scan(&version)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		if first.Type != "m.room.create" {
			return nil, mxhttp.NotFound("Unknown room %s", roomID)
		}
		v, ok := events.LookupRoomVersion(first.RoomVersion)
		if !ok {
			return nil, mxhttp.WithCode(400, "M_UNSUPPORTED_ROOM_VERSION", "Unsupported room version %q", first.RoomVersion)
		}
		// Not cached until its creation commits.
		return &roomCache{version: v, missing: map[eventauth.StateKey]bool{}}, nil
	case err != nil:
		return nil, fmt.Errorf("load room %s: %w", roomID, err)
	}
	v, ok := events.LookupRoomVersion(version)
	if !ok {
		return nil, fmt.Errorf("room %s has unknown version %q", roomID, version)
	}
	rc = &roomCache{version: v, state: map[eventauth.StateKey]*events.Event{}, missing: map[eventauth.StateKey]bool{}}
	rows, err := p.db.Reader().QueryContext(ctx, `SELECT e.event_id, e.depth FROM forward_extremities f
		JOIN events e ON e.event_id = f.event_id WHERE f.room_id = $1`, roomID)
	if err != nil {
		return nil, fmt.Errorf("load extremities of %s: %w", roomID, err)
	}
	defer rows.Close()
	for rows.Next() {
		var id string
		var depth int64
		if err := rows.Scan(&id, &depth); err != nil {
			return nil, fmt.Errorf("load extremities of %s: %w", roomID, err)
		}
		rc.extremities = append(rc.extremities, id)
		rc.depth = max(rc.depth, depth)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("load extremities of %s: %w", roomID, err)
	}
	p.cacheMu.Lock()
	if len(p.cache) >= maxCachedRooms {
		for k := range p.cache { // evict an arbitrary room; reloading is cheap
			delete(p.cache, k)
			break
		}
	}
	p.cache[roomID] = rc
	p.cacheMu.Unlock()
	return rc, nil
}

func (p *Persister) cachedState(ctx context.Context, q storage.Querier, roomID string, rc *roomCache, k eventauth.StateKey) (*events.Event, error) {
	if rc.state != nil {
		if ev, ok := rc.state[k]; ok {
			return ev, nil
		}
	}
	if rc.missing[k] {
		return nil, nil
	}
	if rc.state == nil { // a room being created has no stored state
		return nil, nil
	}
	var raw string
	err := q.QueryRowContext(ctx, `SELECT e.json FROM current_state cs JOIN events e ON e.event_id = cs.event_id
		WHERE cs.room_id = $1 AND cs.type = $2 AND cs.state_key = $3`, roomID, k.Type, k.StateKey).Scan(&raw)
	if errors.Is(err, sql.ErrNoRows) {
		rc.missing[k] = true
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("load state %s/%s of %s: %w", k.Type, k.StateKey, roomID, err)
	}
	ev, err := events.Parse([]byte(raw), rc.version)
	if err != nil {
		return nil, fmt.Errorf("parse stored state event of %s: %w", roomID, err)
	}
	rc.state[k] = ev
	return ev, nil
}

type stateGetter func(ctx context.Context, q storage.Querier, k eventauth.StateKey) (*events.Event, error)

// finalise turns a draft into a signed event that passes the auth rules
// against the room's current state.
func (p *Persister) finalise(ctx context.Context, tx *sql.Tx, roomID string, work *roomCache, d Draft, get stateGetter) (*events.Event, string, error) {
	rv := work.version
	content := d.Content
	if len(content) == 0 {
		content = json.RawMessage("{}")
	}
	if d.Type == "m.room.create" && len(work.extremities) > 0 {
		return nil, "", mxhttp.WithCode(400, "M_ROOM_IN_USE", "Room %s already exists", roomID)
	}
	auth := eventauth.StateMap{}
	var authIDs []string
	if d.Type != "m.room.create" {
		for _, k := range eventauth.AuthEventsNeeded(d.Type, d.StateKey, d.Sender, content, rv) {
			ev, err := get(ctx, tx, k)
			if err != nil {
				return nil, "", err
			}
			if ev != nil {
				auth[k] = ev
				authIDs = append(authIDs, ev.EventID())
			}
		}
	}
	proto := events.ProtoEvent{
		RoomID:         roomID,
		Sender:         d.Sender,
		Type:           d.Type,
		StateKey:       d.StateKey,
		Content:        content,
		PrevEvents:     work.extremities,
		AuthEvents:     authIDs,
		Depth:          work.depth + 1,
		OriginServerTS: p.now().UnixMilli(),
		Redacts:        d.Redacts,
	}
	if proto.PrevEvents == nil {
		proto.PrevEvents = []string{}
	}
	if proto.AuthEvents == nil {
		proto.AuthEvents = []string{}
	}
	ev, err := events.Build(proto, rv, p.key, p.serverName)
	if err != nil {
		if errors.Is(err, events.ErrEventTooLarge) {
			return nil, "", mxhttp.TooLarge("Event too large")
		}
		return nil, "", mxhttp.BadJSON("Invalid event: %v", err)
	}
	if err := eventauth.Check(ev, auth); err != nil {
		var na *eventauth.NotAllowedError
		if errors.As(err, &na) {
			return nil, "", mxhttp.Forbidden("%s", na.Reason)
		}
		return nil, "", fmt.Errorf("auth check: %w", err)
	}
	var replaces string
	if ev.IsState() {
		prev, err := get(ctx, tx, eventauth.StateKey{Type: ev.Type(), StateKey: *ev.StateKey()})
		if err != nil {
			return nil, "", err
		}
		if prev != nil {
			replaces = prev.EventID()
		}
	}
	return ev, replaces, nil
}

func (p *Persister) insert(ctx context.Context, tx *sql.Tx, ev *events.Event, so int64, d Draft, replaces string) error {
	roomID := ev.RoomID()
	if ev.Type() == "m.room.create" {
		_, err := tx.ExecContext(ctx, `INSERT INTO rooms (room_id, room_version, creator, created_ts) VALUES ($1, $2, $3, $4)`,
			roomID, ev.Version().ID, ev.Sender(), ev.OriginServerTS())
		if err != nil {
			if storage.IsUniqueViolation(err) {
				return mxhttp.WithCode(400, "M_ROOM_IN_USE", "Room %s already exists", roomID)
			}
			return fmt.Errorf("insert room: %w", err)
		}
	}
	var stateKey, membership, redacts, txn, device, repl sql.NullString
	if ev.IsState() {
		stateKey = sql.NullString{String: *ev.StateKey(), Valid: true}
	}
	if m := ev.Membership(); m != "" {
		membership = sql.NullString{String: m, Valid: true}
	}
	if r := ev.Redacts(); r != "" && ev.Type() == "m.room.redaction" {
		redacts = sql.NullString{String: r, Valid: true}
	}
	if d.TxnID != "" && d.DeviceID != "" {
		txn = sql.NullString{String: d.TxnID, Valid: true}
		device = sql.NullString{String: d.DeviceID, Valid: true}
	} else if d.DeviceID != "" {
		device = sql.NullString{String: d.DeviceID, Valid: true}
	}
	if replaces != "" {
		repl = sql.NullString{String: replaces, Valid: true}
	}
	_, err := tx.ExecContext(ctx, `INSERT INTO events (stream_ordering, event_id, room_id, instance_name, type, state_key,
		sender, depth, origin_server_ts, membership, redacts, replaces_state, sender_device, txn_id, json)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)`,
		so, ev.EventID(), roomID, p.instance, ev.Type(), stateKey, ev.Sender(), ev.Depth(), ev.OriginServerTS(),
		membership, redacts, repl, device, txn, string(ev.JSON()))
	if err != nil {
		if storage.IsUniqueViolation(err) && txn.Valid {
			return errDuplicateTxn
		}
		return fmt.Errorf("insert event %s: %w", ev.EventID(), err)
	}
	if redacts.Valid {
		if _, err := tx.ExecContext(ctx, `INSERT INTO redactions (event_id, redacts) VALUES ($1, $2)`, ev.EventID(), redacts.String); err != nil {
			return fmt.Errorf("insert redaction: %w", err)
		}
	}
	if ev.Type() == "m.room.member" && ev.StateKey() != nil {
		// A new membership un-forgets the room (forgetting applies to the
		// membership the user had when they forgot it).
		if _, err := tx.ExecContext(ctx, `DELETE FROM forgotten_rooms WHERE user_id = $1 AND room_id = $2`, *ev.StateKey(), roomID); err != nil {
			return fmt.Errorf("clear forgotten room: %w", err)
		}
	}
	if ev.IsState() {
		_, err := tx.ExecContext(ctx, `INSERT INTO current_state (room_id, type, state_key, event_id, stream_ordering, membership)
			VALUES ($1, $2, $3, $4, $5, $6)
			ON CONFLICT (room_id, type, state_key) DO UPDATE SET event_id = excluded.event_id,
			stream_ordering = excluded.stream_ordering, membership = excluded.membership`,
			roomID, ev.Type(), *ev.StateKey(), ev.EventID(), so, membership)
		if err != nil {
			return fmt.Errorf("update current state: %w", err)
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO state_log (room_id, type, state_key, stream_ordering, event_id, membership)
			VALUES ($1, $2, $3, $4, $5, $6)`, roomID, ev.Type(), *ev.StateKey(), so, ev.EventID(), membership)
		if err != nil {
			return fmt.Errorf("append state log: %w", err)
		}
	}
	return nil
}

// errDuplicateTxn means a concurrent request with the same txn id won the
// race (only possible across persisters during a shard change); the caller
// retries and then finds the earlier event.
var errDuplicateTxn = errors.New("duplicate transaction id")
