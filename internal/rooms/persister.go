package rooms

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/prometheus/client_golang/prometheus"
	"hash/fnv"
	"log/slog"
	"strings"
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
	// TxnID, TxnScope and DeviceID make sends idempotent: a transaction
	// id is scoped to the device and to the endpoint it was used on
	// (TxnScope: "send/<type>" or "redact/<event id>"; the room is part
	// of the key anyway), so one id on two endpoints is two requests.
	TxnID    string `json:"txn_id,omitempty"`
	TxnScope string `json:"txn_scope,omitempty"`
	DeviceID string `json:"device_id,omitempty"`
	// RoomVersion is only read for m.room.create drafts.
	RoomVersion string `json:"room_version,omitempty"`
	// OriginServerTS is only read for m.room.create drafts of room versions
	// whose room id is the create event's hash (v12+): the creator computed
	// the room id from an event with this timestamp, so the persister must
	// build exactly that event.
	OriginServerTS int64 `json:"origin_server_ts,omitempty"`
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

	// stateChanged, if set, hears of every state event after its commit
	// and before its position becomes visible.
	stateChanged func(roomID, typ, stateKey string, pos int64)
	persisted    func(roomID string, pos int64)
	stateReset   func(roomID string, pos int64)

	// hooks see every batch in its transaction (push rules, search).
	hooks []BatchHook

	// queues holds, per room, the requests waiting to be persisted.
	queueMu sync.Mutex
	queues  map[string][]*sendRequest

	// batchSizes, if set, observes each batch's request count.
	batchSizes prometheus.Observer

	// states caches rebuilt room states for remote events.
	states groupCache
}

// roomCache is the persister's view of a room it owns. It is only changed
// after a commit, under the room's lock, so it always matches the database.
type roomCache struct {
	version     *events.RoomVersion
	extremities []string
	depth       int64
	state       map[eventauth.StateKey]*events.Event // loaded lazily
	missing     map[eventauth.StateKey]bool          // keys known to be absent
	// curIDs is the whole current state as event ids, loaded by the first
	// remote event and kept up to date after.
	curIDs StateIDs
}

const maxCachedRooms = 10000

// NewPersister loads the writer's position and starts its tracker.
func NewPersister(ctx context.Context, db *storage.DB, reg *streams.Registry, serverName string, key events.SigningKey, log *slog.Logger) (*Persister, error) {
	p := &Persister{db: db, log: log, reg: reg, serverName: serverName, instance: reg.Instance(), key: key,
		now: time.Now, cache: map[string]*roomCache{}, queues: map[string][]*sendRequest{}}
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

// NotifyStateChanges makes the persister report each committed state event
// to f before readers can see it (Store.StateChanged). Call before the
// first send.
func (p *Persister) NotifyStateChanges(f func(roomID, typ, stateKey string, pos int64)) {
	p.stateChanged = f
}

// NotifyPersisted has f told of every committed batch of a room (its
// highest position) before readers can see it (Store.EventPersisted). Call
// before the persister serves.
func (p *Persister) NotifyPersisted(f func(roomID string, pos int64)) { p.persisted = f }

// NotifyStateResets has f told of each position at which a remote event
// changed the current state by more than itself (Store.StateReset),
// before readers can see it.
func (p *Persister) NotifyStateResets(f func(roomID string, pos int64)) { p.stateReset = f }

// BatchHook sees each batch of events in the batch's transaction: push
// rule evaluation writes its per-user rows there, and the search index its
// entries, so an event and the rows derived from it commit, or not,
// together: a reader that can see an event can see what it implies. An
// error rolls the batch back.
type BatchHook interface {
	// InBatch runs after the batch's events are inserted (evs[i] at stream
	// ordering ids[i]) and may write with tx. The function it returns (if
	// any) runs once the transaction has committed, before readers can
	// see the events. InBatch may run again if the transaction is retried.
	InBatch(ctx context.Context, tx *sql.Tx, roomID string, evs []*events.Event, ids []int64) (func(), error)
	// Forget drops anything cached about the room: a batch's outcome is
	// unknown.
	Forget(roomID string)
}

// AddBatchHook installs a batch hook; hooks run in the order added. Call
// before the first send.
func (p *Persister) AddBatchHook(h BatchHook) { p.hooks = append(p.hooks, h) }

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

// sendRequest is one caller's drafts waiting in its room's queue.
// results, err and done are written by whichever caller persists the
// batch holding it, under the room's lock, and read by the owner under the
// same lock.
type sendRequest struct {
	drafts  []Draft
	results []Persisted
	err     error
	done    bool
}

// maxBatchDrafts bounds one transaction's drafts.
const maxBatchDrafts = 64

// SendEvents implements EventWriter. Concurrent calls for one room are
// persisted together: a caller queues its drafts, takes the room's lock
// and, unless an earlier lock holder already persisted them, persists
// everything queued for the room in one transaction (group commit: one
// commit and one extremities update for the batch instead of one per
// request). Each request still succeeds or fails on its own: a draft the
// auth rules refuse fails its request only.
func (p *Persister) SendEvents(ctx context.Context, roomID string, drafts []Draft) ([]Persisted, error) {
	if len(drafts) == 0 {
		return nil, nil
	}
	req := &sendRequest{drafts: drafts}
	p.queueMu.Lock()
	p.queues[roomID] = append(p.queues[roomID], req)
	p.queueMu.Unlock()

	unlock := p.lockRoom(roomID)
	defer unlock()
	for !req.done {
		// The batch starts at the queue's head, which is ours or older.
		batch := p.takeBatch(roomID)
		if len(batch) == 0 {
			// Our request was taken by a holder that never finished it
			// (it panicked): nothing of it can be known to be stored.
			return nil, fmt.Errorf("send events to %s: the batch holding this request was abandoned", roomID)
		}
		p.persistBatch(ctx, roomID, batch)
	}
	return req.results, req.err
}

// takeBatch dequeues the room's oldest requests, up to maxBatchDrafts
// drafts (at least one request). The caller holds the room's lock.
func (p *Persister) takeBatch(roomID string) []*sendRequest {
	p.queueMu.Lock()
	defer p.queueMu.Unlock()
	q := p.queues[roomID]
	n, drafts := 0, 0
	for n < len(q) && (n == 0 || drafts+len(q[n].drafts) <= maxBatchDrafts) {
		drafts += len(q[n].drafts)
		n++
	}
	batch := q[:n:n]
	if n == len(q) {
		delete(p.queues, roomID)
	} else {
		p.queues[roomID] = q[n:]
	}
	return batch
}

// persistBatch persists a batch and marks each request done. When the
// transaction fails as a whole (a database error, not a refused draft), no
// request of the batch can be blamed for it, so each is tried again alone.
func (p *Persister) persistBatch(ctx context.Context, roomID string, batch []*sendRequest) {
	// The batch holds other callers' requests: the lock holder's client
	// going away must not fail them.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if p.batchSizes != nil {
		p.batchSizes.Observe(float64(len(batch)))
	}
	err := p.persistTogether(ctx, roomID, batch)
	if storage.CommitUnknown(err) {
		// The commit may have taken effect: persisting the requests again
		// could store drafts without txn ids twice. Fail them all; the
		// room is reloaded from the database on its next send.
		p.forget(roomID)
		for _, r := range batch {
			r.err, r.results, r.done = err, nil, true
		}
		return
	}
	if err != nil {
		for _, r := range batch {
			alone := []*sendRequest{r}
			err := err
			if len(batch) > 1 {
				err = p.persistTogether(ctx, roomID, alone)
			}
			if errors.Is(err, errDuplicateTxn) {
				// A concurrent send with the same txn id committed first;
				// now the txn check finds its event.
				err = p.persistTogether(ctx, roomID, alone)
			}
			if err != nil {
				r.err, r.results = err, nil
			}
		}
	}
	for _, r := range batch {
		r.done = true
	}
}

// persistTogether persists the requests in one transaction. A request
// whose drafts are refused (auth rules, bad content) gets its error in
// r.err and leaves no trace; the returned error is the transaction's.
func (p *Persister) persistTogether(ctx context.Context, roomID string, batch []*sendRequest) error {
	rc, err := p.room(ctx, roomID, batch[0].drafts[0])
	if err != nil {
		return err
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

	var built []*events.Event
	var last int64
	var afterCommit []func()
	res := p.tracker.Reserve()
	defer res.Abort() // no-op after Done
	err = p.db.Tx(ctx, func(tx *sql.Tx) error {
		// A retried transaction starts from the committed room again.
		built, last, afterCommit = built[:0], 0, nil
		clear(work.state)
		work.extremities, work.depth = rc.extremities, rc.depth
		b := &batchState{inBatch: map[txnKey]*staged{}}
		var err error
		if b.existing, err = p.existingTxns(ctx, tx, roomID, batch); err != nil {
			return err
		}
		for _, r := range batch {
			r.results, r.err = make([]Persisted, len(r.drafts)), nil
			err := p.stageRequest(ctx, tx, roomID, work, r, getState, b)
			var refused *mxhttp.Error
			if errors.As(err, &refused) {
				r.err, r.results = err, nil
				continue
			}
			if err != nil {
				return err
			}
		}
		if len(b.stage) == 0 {
			return nil
		}
		ids, err := p.db.NextStreamIDs(ctx, tx, string(streams.Events), len(b.stage))
		if err != nil {
			return err
		}
		for _, id := range ids {
			res.Add(id)
		}
		if err := p.insert(ctx, tx, b.stage, ids); err != nil {
			return err
		}
		for j, st := range b.stage {
			st.id = ids[j]
			st.r.results[st.i] = Persisted{EventID: st.ev.EventID(), StreamPos: st.id}
			built = append(built, st.ev)
		}
		for _, d := range b.dups {
			d.r.results[d.i] = Persisted{EventID: d.of.ev.EventID(), StreamPos: d.of.id, Deduplicated: true}
		}
		last = ids[len(ids)-1]
		for _, h := range p.hooks {
			after, err := h.InBatch(ctx, tx, roomID, built, ids)
			if err != nil {
				return err
			}
			if after != nil {
				afterCommit = append(afterCommit, after)
			}
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
		return err
	}
	// Committed: fold the overlay into the cache, then let readers see it.
	rc.extremities, rc.depth = work.extremities, work.depth
	for k, ev := range work.state {
		if rc.state == nil {
			rc.state = map[eventauth.StateKey]*events.Event{}
		}
		rc.state[k] = ev
		delete(rc.missing, k)
		if rc.curIDs != nil {
			rc.curIDs[k] = ev.EventID()
		}
	}
	if p.persisted != nil && len(built) > 0 {
		p.persisted(roomID, last)
	}
	if p.stateChanged != nil {
		for _, ev := range built {
			if ev.IsState() {
				p.stateChanged(roomID, ev.Type(), *ev.StateKey(), last)
			}
		}
	}
	for _, f := range afterCommit {
		f()
	}
	res.Done()
	if len(built) > 0 {
		p.reg.WakeAtWriter(streams.Events, p.instance, last, WakeKeys(roomID, built)...)
	}
	return nil
}

// staged is a finalised event waiting for the batch's insert.
type staged struct {
	r        *sendRequest
	i        int // index of its draft in r.drafts
	ev       *events.Event
	replaces string
	id       int64 // stream ordering, once allocated
}

// txnKey identifies a send's transaction id within one room.
type txnKey struct{ sender, device, scope, txn string }

// batchState is what a batch has staged so far.
type batchState struct {
	existing map[txnKey]Persisted // txn ids already stored
	inBatch  map[txnKey]*staged   // txn ids staged by this batch
	stage    []*staged
	dups     []dupOf // drafts repeating a txn id staged earlier in the batch
}

type dupOf struct {
	r  *sendRequest
	i  int
	of *staged
}

// existingTxns looks up, in one query, which of the batch's txn ids are
// already stored.
func (p *Persister) existingTxns(ctx context.Context, tx *sql.Tx, roomID string, batch []*sendRequest) (map[txnKey]Persisted, error) {
	var cond strings.Builder
	args := []any{roomID}
	for _, r := range batch {
		for _, d := range r.drafts {
			if d.TxnID == "" || d.DeviceID == "" {
				continue
			}
			if len(args) > 1 {
				cond.WriteString(" OR ")
			}
			n := len(args)
			fmt.Fprintf(&cond, "(sender = $%d AND sender_device = $%d AND txn_scope = $%d AND txn_id = $%d)", n+1, n+2, n+3, n+4)
			args = append(args, d.Sender, d.DeviceID, d.TxnScope, d.TxnID)
		}
	}
	found := map[txnKey]Persisted{}
	if len(args) == 1 {
		return found, nil
	}
	rows, err := tx.QueryContext(ctx, `SELECT sender, sender_device, txn_scope, txn_id, event_id, stream_ordering FROM events
		WHERE room_id = $1 AND txn_id IS NOT NULL AND (`+cond.String()+`)`, args...)
	if err != nil {
		return nil, fmt.Errorf("check txn ids: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var k txnKey
		var pr Persisted
		if err := rows.Scan(&k.sender, &k.device, &k.scope, &k.txn, &pr.EventID, &pr.StreamPos); err != nil {
			return nil, fmt.Errorf("check txn ids: %w", err)
		}
		pr.Deduplicated = true
		found[k] = pr
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("check txn ids: %w", err)
	}
	return found, nil
}

// stageRequest finalises all of one request's drafts against work and
// stages them. If a draft is refused (an *mxhttp.Error), work and the
// batch are put back as they were, so nothing of the request is stored;
// any other error is the transaction's.
func (p *Persister) stageRequest(ctx context.Context, tx *sql.Tx, roomID string, work *roomCache, r *sendRequest,
	getState stateGetter, b *batchState) error {
	savedExt, savedDepth := work.extremities, work.depth
	nStage, nDups := len(b.stage), len(b.dups)
	type overlay struct {
		ev  *events.Event
		had bool
	}
	saved := map[eventauth.StateKey]overlay{}
	var keys []txnKey
	for i, d := range r.drafts {
		k := txnKey{d.Sender, d.DeviceID, d.TxnScope, d.TxnID}
		if d.TxnID != "" && d.DeviceID != "" {
			if pr, ok := b.existing[k]; ok {
				r.results[i] = pr
				continue
			}
			if st, ok := b.inBatch[k]; ok {
				b.dups = append(b.dups, dupOf{r: r, i: i, of: st})
				continue
			}
		}
		ev, replaces, err := p.finalise(ctx, tx, roomID, work, d, getState)
		if err != nil {
			work.extremities, work.depth = savedExt, savedDepth
			for k, o := range saved {
				if o.had {
					work.state[k] = o.ev
				} else {
					delete(work.state, k)
				}
			}
			b.stage, b.dups = b.stage[:nStage], b.dups[:nDups]
			for _, k := range keys {
				delete(b.inBatch, k)
			}
			return err
		}
		st := &staged{r: r, i: i, ev: ev, replaces: replaces}
		b.stage = append(b.stage, st)
		if d.TxnID != "" && d.DeviceID != "" {
			b.inBatch[k] = st
			keys = append(keys, k)
		}
		if ev.IsState() {
			sk := eventauth.StateKey{Type: ev.Type(), StateKey: *ev.StateKey()}
			if _, ok := saved[sk]; !ok {
				prev, had := work.state[sk]
				saved[sk] = overlay{ev: prev, had: had}
			}
			work.state[sk] = ev
		}
		work.extremities, work.depth = []string{ev.EventID()}, ev.Depth()
	}
	return nil
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
	for _, h := range p.hooks {
		h.Forget(roomID)
	}
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
	if d.Type != "m.room.create" && rv.RoomIDFromCreate {
		// v12+: the create event is implied by the room id, never listed in
		// auth_events, but the auth rules still consult it.
		k := eventauth.StateKey{Type: "m.room.create"}
		create, err := get(ctx, tx, k)
		if err != nil {
			return nil, "", err
		}
		if create != nil {
			auth[k] = create
		}
	}
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
		Depth:          min(work.depth+1, maxDepth),
		OriginServerTS: p.now().UnixMilli(),
		Redacts:        d.Redacts,
	}
	if d.Type == "m.room.create" && rv.RoomIDFromCreate {
		proto.RoomID = ""
		if d.OriginServerTS != 0 {
			proto.OriginServerTS = d.OriginServerTS
		}
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
	if ev.RoomID() != roomID {
		// Only a v12+ create event whose draft differs from the one its
		// room id was computed from gets here.
		return nil, "", fmt.Errorf("create event %s does not hash to room id %s", ev.EventID(), roomID)
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

// maxDepth caps the depth of the events we build: another server's event
// may claim any depth, and one past canonical JSON's integer range would
// make every later event of ours unbuildable.
const maxDepth = 1<<53 - 1

// insertColumns is the number of columns insert writes per event.
const insertColumns = 16

// insert stores the staged events (ids[j] is stage[j]'s stream ordering)
// with one multi-row INSERT, then what each needs besides its row.
func (p *Persister) insert(ctx context.Context, tx *sql.Tx, stage []*staged, ids []int64) error {
	for _, st := range stage {
		ev := st.ev
		if ev.Type() != "m.room.create" {
			continue
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO rooms (room_id, room_version, creator, created_ts) VALUES ($1, $2, $3, $4)`,
			ev.RoomID(), ev.Version().ID, ev.Sender(), ev.OriginServerTS())
		if err != nil {
			if storage.IsUniqueViolation(err) {
				return mxhttp.WithCode(400, "M_ROOM_IN_USE", "Room %s already exists", ev.RoomID())
			}
			return fmt.Errorf("insert room: %w", err)
		}
	}
	for lo := 0; lo < len(stage); lo += insertChunk {
		hi := min(lo+insertChunk, len(stage))
		if err := p.insertRows(ctx, tx, stage[lo:hi], ids[lo:hi]); err != nil {
			return err
		}
	}
	for j, st := range stage {
		if err := p.afterInsert(ctx, tx, st.ev, ids[j]); err != nil {
			return err
		}
	}
	return nil
}

// insertChunk bounds the rows of one INSERT: 500 rows of 16 parameters stay
// well inside SQLite's 32,766 and PostgreSQL's 65,535 bind parameters
// (one request, a room created with thousands of invites, may exceed them).
const insertChunk = 500

// insertRows writes the events rows of stage with one multi-row INSERT.
func (p *Persister) insertRows(ctx context.Context, tx *sql.Tx, stage []*staged, ids []int64) error {
	var q strings.Builder
	q.WriteString(`INSERT INTO events (stream_ordering, event_id, room_id, instance_name, type, state_key,
		sender, depth, origin_server_ts, membership, redacts, replaces_state, sender_device, txn_scope, txn_id, json) VALUES `)
	args := make([]any, 0, len(stage)*insertColumns)
	hasTxn := false
	for j, st := range stage {
		ev, d := st.ev, st.r.drafts[st.i]
		var stateKey, membership, redacts, scope, txn, device, repl sql.NullString
		if ev.IsState() {
			stateKey = sql.NullString{String: *ev.StateKey(), Valid: true}
		}
		if m := ev.Membership(); m != "" {
			membership = sql.NullString{String: m, Valid: true}
		}
		if r := ev.Redacts(); r != "" && ev.Type() == "m.room.redaction" {
			redacts = sql.NullString{String: r, Valid: true}
		}
		if d.DeviceID != "" {
			device = sql.NullString{String: d.DeviceID, Valid: true}
			if d.TxnID != "" {
				txn = sql.NullString{String: d.TxnID, Valid: true}
				scope = sql.NullString{String: d.TxnScope, Valid: true}
				hasTxn = true
			}
		}
		if st.replaces != "" {
			repl = sql.NullString{String: st.replaces, Valid: true}
		}
		if j > 0 {
			q.WriteString(", ")
		}
		q.WriteByte('(')
		for c := range insertColumns {
			if c > 0 {
				q.WriteString(", ")
			}
			fmt.Fprintf(&q, "$%d", len(args)+c+1)
		}
		q.WriteByte(')')
		args = append(args, ids[j], ev.EventID(), ev.RoomID(), p.instance, ev.Type(), stateKey, ev.Sender(), ev.Depth(),
			ev.OriginServerTS(), membership, redacts, repl, device, scope, txn, string(ev.JSON()))
	}
	if _, err := tx.ExecContext(ctx, q.String(), args...); err != nil {
		if storage.IsUniqueViolation(err) && hasTxn {
			return errDuplicateTxn
		}
		return fmt.Errorf("insert %d events: %w", len(stage), err)
	}
	return nil
}

// afterInsert writes what an event needs besides its row: the redaction
// index, its relation (relations.go), the un-forgetting of a room by a new membership, and the current
// state and state log for state events.
func (p *Persister) afterInsert(ctx context.Context, tx *sql.Tx, ev *events.Event, so int64) error {
	roomID := ev.RoomID()
	if err := p.afterInsertTimeline(ctx, tx, ev, so); err != nil {
		return err
	}
	if ev.Type() == "m.room.member" && ev.StateKey() != nil {
		// A new membership un-forgets the room (forgetting applies to the
		// membership the user had when they forgot it).
		if _, err := tx.ExecContext(ctx, `DELETE FROM forgotten_rooms WHERE user_id = $1 AND room_id = $2`, *ev.StateKey(), roomID); err != nil {
			return fmt.Errorf("clear forgotten room: %w", err)
		}
	}
	if ev.IsState() {
		var membership sql.NullString
		if m := ev.Membership(); m != "" {
			membership = sql.NullString{String: m, Valid: true}
		}
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

// afterInsertTimeline writes what any timeline event needs besides its
// row, local or remote: the redaction index and its relation.
func (p *Persister) afterInsertTimeline(ctx context.Context, tx *sql.Tx, ev *events.Event, so int64) error {
	if r := ev.Redacts(); r != "" && ev.Type() == "m.room.redaction" {
		if _, err := tx.ExecContext(ctx, `INSERT INTO redactions (event_id, redacts) VALUES ($1, $2)`, ev.EventID(), r); err != nil {
			return fmt.Errorf("insert redaction: %w", err)
		}
		// A redacted event has no m.relates_to any more.
		if _, err := tx.ExecContext(ctx, `DELETE FROM event_relations WHERE event_id = $1`, r); err != nil {
			return fmt.Errorf("drop relation of redacted %s: %w", r, err)
		}
	}
	return insertRelation(ctx, tx, ev, so)
}

// errDuplicateTxn means a concurrent request with the same txn id won the
// race (only possible across persisters during a shard change);
// persistBatch retries and then finds the earlier event.
var errDuplicateTxn = errors.New("duplicate transaction id")
