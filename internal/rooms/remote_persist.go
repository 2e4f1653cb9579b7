package rooms

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"ganglion/internal/eventauth"
	"ganglion/internal/events"
	"ganglion/internal/mxhttp"
	"ganglion/internal/stateres"
	"ganglion/internal/storage"
	"ganglion/internal/streams"
)

var _ RemoteWriter = (*Persister)(nil)

// Limits on a remote event's references, as Synapse's.
const (
	maxRemotePrevEvents = 20
	maxRemoteAuthEvents = 10
)

// remoteRun is one PersistRemote transaction's working set.
type remoteRun struct {
	p      *Persister
	tx     *sql.Tx
	roomID string
	rv     *events.RoomVersion
	// known holds every event loaded or stored by the run, by id.
	known map[string]*storedEvent
	// after holds the state after each event whose state the run computed.
	after map[string]*stateRef
	// cur and ext are the room's current state and forward extremities as
	// the run has left them.
	cur   StateIDs
	ext   []string
	depth int64
	// changed lists the current-state keys the run changed, with the
	// position each changed at.
	changed     map[eventauth.StateKey]int64
	built       []*events.Event
	ids         []int64
	afterCommit []func()
	res         *streams.Reservation
	// resetAt is the highest position at which the current state changed
	// by more than the event there.
	resetAt int64
}

// PersistRemote implements RemoteWriter.
func (p *Persister) PersistRemote(ctx context.Context, roomID string, batch RemoteBatch) ([]RemoteResult, error) {
	unlock := p.lockRoom(roomID)
	defer unlock()
	// As in persistBatch: once started, the transaction's fate must not
	// depend on the caller going away.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 60*time.Second)
	defer cancel()

	rv, isNew, err := p.remoteRoomVersion(ctx, roomID, batch.RoomVersion)
	if err != nil {
		return nil, err
	}
	var rc *roomCache
	if !isNew {
		if rc, err = p.room(ctx, roomID, Draft{}); err != nil {
			return nil, err
		}
	}
	var results []RemoteResult
	var r *remoteRun
	res := p.tracker.Reserve()
	defer res.Abort()
	err = p.db.Tx(storage.WithTxName(ctx, "persist_remote"), func(tx *sql.Tx) error {
		r = &remoteRun{p: p, tx: tx, roomID: roomID, rv: rv, known: map[string]*storedEvent{}, after: map[string]*stateRef{},
			changed: map[eventauth.StateKey]int64{}, res: res}
		if isNew {
			r.cur = StateIDs{}
			if err := r.createRoom(ctx, batch); err != nil {
				return err
			}
		} else {
			if err := r.loadRoom(ctx, rc); err != nil {
				return err
			}
		}
		results = results[:0]
		out, err := r.outliers(ctx, batch.Outliers)
		if err != nil {
			return err
		}
		results = append(results, out...)
		if batch.Backfill {
			out, err := r.backfill(ctx, batch.PDUs)
			if err != nil {
				return err
			}
			results = append(results, out...)
			return nil
		}
		for _, pdu := range batch.PDUs {
			rr, err := r.pdu(ctx, pdu)
			if err != nil {
				return err
			}
			results = append(results, rr)
		}
		return r.finish(ctx)
	})
	if err != nil {
		p.forget(roomID)
		return nil, err
	}
	p.afterRemote(roomID, rc, r)
	res.Done()
	return results, nil
}

// remoteRoomVersion finds the room's version; a room not stored here is
// new when the batch names its version.
func (p *Persister) remoteRoomVersion(ctx context.Context, roomID, want string) (*events.RoomVersion, bool, error) {
	var have string
	err := p.db.Reader().QueryRowContext(ctx, `SELECT room_version FROM rooms WHERE room_id = $1`, roomID).Scan(&have)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		if want == "" {
			return nil, false, mxhttp.NotFound("Unknown room %s", roomID)
		}
		v, ok := events.LookupRoomVersion(want)
		if !ok {
			return nil, false, mxhttp.WithCode(400, "M_UNSUPPORTED_ROOM_VERSION", "Unsupported room version %q", want)
		}
		return v, true, nil
	case err != nil:
		return nil, false, fmt.Errorf("load room %s: %w", roomID, err)
	}
	if want != "" && want != have {
		return nil, false, mxhttp.BadJSON("Room %s has version %s here, not %s", roomID, have, want)
	}
	v, ok := events.LookupRoomVersion(have)
	if !ok {
		return nil, false, fmt.Errorf("room %s has unknown version %q", roomID, have)
	}
	return v, false, nil
}

// createRoom stores the rooms row of a room first seen through another
// server.
func (r *remoteRun) createRoom(ctx context.Context, batch RemoteBatch) error {
	creator, created := "", r.p.now().UnixMilli()
	for _, raw := range batch.Outliers {
		ev, err := events.Parse(raw, r.rv)
		if err == nil && ev.Type() == "m.room.create" && ev.RoomID() == r.roomID {
			creator, created = ev.Sender(), ev.OriginServerTS()
		}
	}
	_, err := r.tx.ExecContext(ctx, `INSERT INTO rooms (room_id, room_version, creator, created_ts) VALUES ($1, $2, $3, $4)`,
		r.roomID, r.rv.ID, creator, created)
	if err != nil {
		return fmt.Errorf("insert room %s: %w", r.roomID, err)
	}
	return nil
}

// loadRoom loads the current state's ids and the extremities.
func (r *remoteRun) loadRoom(ctx context.Context, rc *roomCache) error {
	r.ext, r.depth = slices.Clone(rc.extremities), rc.depth
	if rc.curIDs != nil {
		r.cur = maps.Clone(rc.curIDs)
		return nil
	}
	rows, err := r.tx.QueryContext(ctx, `SELECT type, state_key, event_id FROM current_state WHERE room_id = $1`, r.roomID)
	if err != nil {
		return fmt.Errorf("load current state of %s: %w", r.roomID, err)
	}
	defer rows.Close()
	r.cur = StateIDs{}
	for rows.Next() {
		var k eventauth.StateKey
		var id string
		if err := rows.Scan(&k.Type, &k.StateKey, &id); err != nil {
			return fmt.Errorf("load current state of %s: %w", r.roomID, err)
		}
		r.cur[k] = id
	}
	return rows.Err()
}

// load makes sure the events are in r.known (those stored anywhere).
func (r *remoteRun) load(ctx context.Context, ids []string) error {
	var need []string
	for _, id := range ids {
		if _, ok := r.known[id]; !ok && !slices.Contains(need, id) {
			need = append(need, id)
		}
	}
	if len(need) == 0 {
		return nil
	}
	got, err := loadEventsAny(ctx, r.tx, r.rv, need)
	if err != nil {
		return err
	}
	maps.Copy(r.known, got)
	return nil
}

// authMap is the state the auth rules see for ev, from the given state
// ids: the keys ev's type needs, plus the v12 create event.
func (r *remoteRun) authMap(ctx context.Context, ev *events.Event, state StateIDs) (eventauth.StateMap, error) {
	keys := eventauth.AuthEventsNeeded(ev.Type(), ev.StateKey(), ev.Sender(), ev.Content(), r.rv)
	if r.rv.RoomIDFromCreate {
		keys = append(keys, eventauth.StateKey{Type: "m.room.create"})
	}
	var ids []string
	for _, k := range keys {
		if id, ok := state[k]; ok {
			ids = append(ids, id)
		}
	}
	if err := r.load(ctx, ids); err != nil {
		return nil, err
	}
	m := eventauth.StateMap{}
	for _, k := range keys {
		if se := r.known[state[k]]; se != nil && (se.rejected == "" || se.softFailed) {
			m[k] = se.ev
		}
	}
	return m, nil
}

// authIDs are the events ev's auth depends on: its auth_events and, from
// room version 12, the create event its room id names.
func (r *remoteRun) authIDs(ev *events.Event) []string {
	ids := slices.Clone(ev.AuthEventIDs())
	if id := r.impliedCreate(ev); id != "" {
		ids = append(ids, id)
	}
	return ids
}

// impliedCreate is the id of the create event a v12+ room id names ("" in
// earlier versions, and for the create event itself).
func (r *remoteRun) impliedCreate(ev *events.Event) string {
	if r.rv.RoomIDFromCreate && ev.Type() != "m.room.create" {
		return "$" + strings.TrimPrefix(r.roomID, "!")
	}
	return ""
}

// checkAuthEvents applies the auth rules to ev against its own auth
// events. missing lists auth events not stored here; reason is set when
// the rules reject it.
func (r *remoteRun) checkAuthEvents(ctx context.Context, ev *events.Event) (missing []string, reason string, err error) {
	ids := r.authIDs(ev)
	createID := r.impliedCreate(ev)
	if err := r.load(ctx, ids); err != nil {
		return nil, "", err
	}
	var authEvs []*events.Event
	m := eventauth.StateMap{}
	for _, id := range ids {
		se := r.known[id]
		if se == nil {
			missing = append(missing, id)
			continue
		}
		if se.rejected != "" && !se.softFailed {
			return nil, "auth event " + id + " was rejected", nil
		}
		if id != createID {
			authEvs = append(authEvs, se.ev)
		}
		if se.ev.IsState() {
			m[eventauth.StateKey{Type: se.ev.Type(), StateKey: *se.ev.StateKey()}] = se.ev
		}
	}
	if len(missing) > 0 {
		return missing, "", nil
	}
	if err := eventauth.CheckAuthEventsSelection(ev, authEvs); err != nil {
		return nil, notAllowed(err), nil
	}
	if err := eventauth.Check(ev, m); err != nil {
		return nil, notAllowed(err), nil
	}
	return nil, "", nil
}

func notAllowed(err error) string {
	var na *eventauth.NotAllowedError
	if errors.As(err, &na) {
		return na.Reason
	}
	return err.Error()
}

// parse reads one event of the batch for the room's version; a malformed
// event, or one of another room, comes back nil with its rejection.
func (r *remoteRun) parse(raw json.RawMessage) (*events.Event, RemoteResult) {
	ev, err := events.Parse(raw, r.rv)
	if err != nil {
		return nil, RemoteResult{Outcome: RemoteRejected, Error: err.Error()}
	}
	if ev.RoomID() != r.roomID {
		return nil, RemoteResult{EventID: ev.EventID(), Outcome: RemoteRejected, Error: "event belongs to room " + ev.RoomID()}
	}
	return ev, RemoteResult{EventID: ev.EventID()}
}

// outliers stores events that are not part of the timeline, each checked
// against its own auth events, in an order where auth events come first.
func (r *remoteRun) outliers(ctx context.Context, raws []json.RawMessage) ([]RemoteResult, error) {
	results := make([]RemoteResult, len(raws))
	pending := map[int]*events.Event{}
	var ids []string
	for i, raw := range raws {
		var ev *events.Event
		if ev, results[i] = r.parse(raw); ev == nil {
			continue
		}
		pending[i] = ev
		ids = append(ids, ev.EventID())
	}
	if err := r.load(ctx, ids); err != nil {
		return nil, err
	}
	inBatch := map[string]bool{}
	for i, ev := range pending {
		if r.known[ev.EventID()] != nil {
			results[i].Outcome = RemoteDuplicate
			delete(pending, i)
			continue
		}
		inBatch[ev.EventID()] = true
	}
	var store []*events.Event
	// Auth events first (Kahn's order over the batch's own auth links): an
	// outlier is judged once every auth event of it in the batch was; a
	// join's auth chain of tens of thousands of events is one pass.
	waits := map[int]int{}
	dependents := map[string][]int{}
	for _, i := range slices.Sorted(maps.Keys(pending)) {
		ev := pending[i]
		for _, a := range r.authIDs(ev) {
			if inBatch[a] && a != ev.EventID() {
				waits[i]++
				dependents[a] = append(dependents[a], i)
			}
		}
	}
	var ready []int
	for _, i := range slices.Sorted(maps.Keys(pending)) {
		if waits[i] == 0 {
			ready = append(ready, i)
		}
	}
	for len(ready) > 0 {
		i := ready[0]
		ready = ready[1:]
		ev := pending[i]
		if ev == nil {
			continue // the same event twice in the batch
		}
		missing, reason, err := r.checkAuthEvents(ctx, ev)
		if err != nil {
			return nil, err
		}
		switch {
		case len(missing) > 0:
			// Not judged, so not stored: a server that sent the event
			// without its auth chain must not get it refused for good.
			results[i].Outcome, results[i].Missing = RemoteMissingPrev, missing
		case reason != "":
			if err := r.reject(ctx, ev, reason, false); err != nil {
				return nil, err
			}
			results[i].Outcome, results[i].Error = RemoteRejected, reason
		default:
			r.known[ev.EventID()] = &storedEvent{ev: ev, pos: -1, outlier: true}
			store = append(store, ev)
			results[i].Outcome = RemoteOutlier
		}
		delete(pending, i)
		delete(inBatch, ev.EventID())
		for _, d := range dependents[ev.EventID()] {
			if waits[d]--; waits[d] == 0 {
				ready = append(ready, d)
			}
		}
	}
	// What is left names, through the batch, an auth event of its own:
	// none can be checked, and none is stored (as with unknown auth events).
	for i, ev := range pending {
		results[i].Outcome, results[i].Error = RemoteMissingPrev, "auth events form a cycle"
		results[i].Missing = r.authIDs(ev)
	}
	if len(store) == 0 {
		return results, nil
	}
	ids64, err := r.p.db.NextStreamIDs(ctx, r.tx, "outliers", len(store))
	if err != nil {
		return nil, err
	}
	for j, ev := range store {
		pos := -ids64[j]
		r.known[ev.EventID()].pos = pos
		if err := r.insertEvent(ctx, ev, pos, true); err != nil {
			return nil, err
		}
	}
	return results, nil
}

// reject stores a rejected or soft-failed event.
func (r *remoteRun) reject(ctx context.Context, ev *events.Event, reason string, soft bool) error {
	_, err := r.tx.ExecContext(ctx, `INSERT INTO event_rejections (event_id, room_id, reason, soft_failed, json, received_ts)
		VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (event_id) DO NOTHING`,
		ev.EventID(), r.roomID, reason, soft, string(ev.JSON()), r.p.now().UnixMilli())
	if err != nil {
		return fmt.Errorf("store rejected event %s: %w", ev.EventID(), err)
	}
	r.known[ev.EventID()] = &storedEvent{ev: ev, rejected: reason, softFailed: soft}
	return nil
}

// insertEvent writes an events row (an outlier's, or a timeline event's).
// An outlier joining the timeline gets its new position instead.
func (r *remoteRun) insertEvent(ctx context.Context, ev *events.Event, pos int64, outlier bool) error {
	var stateKey, membership, redacts sql.NullString
	if ev.IsState() {
		stateKey = sql.NullString{String: *ev.StateKey(), Valid: true}
	}
	if m := ev.Membership(); m != "" {
		membership = sql.NullString{String: m, Valid: true}
	}
	if rd := ev.Redacts(); rd != "" && ev.Type() == "m.room.redaction" {
		redacts = sql.NullString{String: rd, Valid: true}
	}
	_, err := r.tx.ExecContext(ctx, `INSERT INTO events (stream_ordering, event_id, room_id, instance_name, type, state_key,
		sender, depth, origin_server_ts, membership, redacts, json, outlier)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
		ON CONFLICT (event_id) DO UPDATE SET stream_ordering = excluded.stream_ordering, instance_name = excluded.instance_name,
		outlier = excluded.outlier`,
		pos, ev.EventID(), r.roomID, r.p.instance, ev.Type(), stateKey, ev.Sender(), ev.Depth(), ev.OriginServerTS(),
		membership, redacts, string(ev.JSON()), outlier)
	if err != nil {
		return fmt.Errorf("insert event %s: %w", ev.EventID(), err)
	}
	return nil
}

// stateAfter is the state after a stored or just-persisted event.
func (r *remoteRun) stateAfter(ctx context.Context, id string) (*stateRef, bool, error) {
	if ref, ok := r.after[id]; ok {
		return ref, true, nil
	}
	ref, ok, err := stateAfterEvent(ctx, r.tx, &r.p.states, r.roomID, id)
	if err != nil || !ok {
		return nil, ok, err
	}
	r.after[id] = ref
	return ref, true, nil
}

// resolve resolves the states after the given events.
func (r *remoteRun) resolve(ctx context.Context, ids []string) (StateIDs, *stateRef, error) {
	var sets []StateIDs
	var first *stateRef
	for _, id := range ids {
		ref, ok, err := r.stateAfter(ctx, id)
		if err != nil {
			return nil, nil, err
		}
		if !ok {
			return nil, nil, fmt.Errorf("state after %s is unknown", id)
		}
		if first == nil {
			first = ref
		}
		sets = append(sets, ref.ids)
	}
	if len(sets) == 1 {
		return maps.Clone(sets[0]), first, nil
	}
	res, err := stateres.Resolve(ctx, r.rv, sets, &dbFetcher{q: r.tx, rv: r.rv, known: r.known})
	if err != nil {
		return nil, nil, err
	}
	return res, first, nil
}

// lastPosition is the room's highest timeline position: the state log
// there is the current state.
func (r *remoteRun) lastPosition(ctx context.Context) (int64, error) {
	var pos sql.NullInt64
	if err := r.tx.QueryRowContext(ctx, `SELECT max(stream_ordering) FROM events WHERE room_id = $1`, r.roomID).Scan(&pos); err != nil {
		return 0, fmt.Errorf("last position of %s: %w", r.roomID, err)
	}
	return pos.Int64, nil
}

// resolveWith resolves state with the states after the given events.
func (r *remoteRun) resolveWith(ctx context.Context, state StateIDs, ids []string) (StateIDs, error) {
	if len(ids) == 0 {
		return state, nil
	}
	sets := []StateIDs{state}
	for _, id := range ids {
		ref, ok, err := r.stateAfter(ctx, id)
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, fmt.Errorf("state after %s is unknown", id)
		}
		sets = append(sets, ref.ids)
	}
	res, err := stateres.Resolve(ctx, r.rv, sets, &dbFetcher{q: r.tx, rv: r.rv, known: r.known})
	if err != nil {
		return nil, fmt.Errorf("resolve %d states of %s: %w", len(sets), r.roomID, err)
	}
	return res, nil
}

// pdu checks and stores one timeline event.
func (r *remoteRun) pdu(ctx context.Context, pdu RemotePDU) (RemoteResult, error) {
	ev, out := r.parse(pdu.Event)
	if ev == nil {
		return out, nil
	}
	if err := r.load(ctx, []string{ev.EventID()}); err != nil {
		return out, err
	}
	deOutlier := false
	if se := r.known[ev.EventID()]; se != nil {
		switch {
		case se.rejected != "":
			// Judged before: the same verdict, never a success.
			out.Outcome, out.Error = RemoteRejected, se.rejected
			if se.softFailed {
				out.Outcome = RemoteSoftFailed
			}
			return out, nil
		case !se.outlier:
			out.Outcome = RemoteDuplicate
			out.StreamPos = se.pos
			return out, nil
		}
		deOutlier = true // an outlier joins the timeline
	}
	if n, m := len(ev.PrevEventIDs()), len(ev.AuthEventIDs()); n > maxRemotePrevEvents || m > maxRemoteAuthEvents {
		// Synapse's limits: a server may not make us resolve the states
		// of hundreds of branches for one event.
		out.Outcome, out.Error = RemoteRejected, fmt.Sprintf("event has %d prev events and %d auth events (at most %d and %d)",
			n, m, maxRemotePrevEvents, maxRemoteAuthEvents)
		return out, nil
	}

	if pdu.OutOfBand {
		hosted, err := r.localJoined(ctx)
		if err != nil {
			return out, err
		}
		if len(r.ext) == 0 || !hosted {
			return r.outOfBand(ctx, ev)
		}
	}

	// 1. Against its own auth events.
	missing, reason, err := r.checkAuthEvents(ctx, ev)
	if err != nil {
		return out, err
	}
	if len(missing) > 0 {
		out.Outcome, out.Missing = RemoteMissingPrev, missing
		return out, nil
	}
	if reason != "" {
		if deOutlier {
			out.Outcome, out.Error = RemoteRejected, reason
			return out, nil
		}
		out.Outcome, out.Error = RemoteRejected, reason
		return out, r.reject(ctx, ev, reason, false)
	}

	// 2. The state before it.
	var before StateIDs
	mainLine := false
	var base *stateRef
	switch {
	case len(pdu.StateBefore) > 0:
		if err := r.load(ctx, pdu.StateBefore); err != nil {
			return out, err
		}
		before = StateIDs{}
		for _, id := range pdu.StateBefore {
			se := r.known[id]
			if se == nil {
				missing = append(missing, id)
				continue
			}
			if !se.ev.IsState() || se.ev.RoomID() != r.roomID || (se.rejected != "" && !se.softFailed) {
				out.Outcome, out.Error = RemoteRejected, "state_before names "+id+", not an accepted state event of the room"
				return out, nil
			}
			k := eventauth.StateKey{Type: se.ev.Type(), StateKey: *se.ev.StateKey()}
			if _, dup := before[k]; dup {
				out.Outcome, out.Error = RemoteRejected, fmt.Sprintf("state_before names two %s/%q events", k.Type, k.StateKey)
				return out, nil
			}
			before[k] = id
		}
		if len(missing) > 0 {
			out.Outcome, out.Missing = RemoteMissingPrev, missing
			return out, nil
		}
	case len(ev.PrevEventIDs()) > 0 && sameSet(ev.PrevEventIDs(), r.ext):
		// The common case: it extends every extremity, so the state before
		// it is the current state.
		before = maps.Clone(r.cur)
		mainLine = true
	default:
		for _, p := range ev.PrevEventIDs() {
			if _, ok, err := r.stateAfter(ctx, p); err != nil {
				return out, err
			} else if !ok {
				missing = append(missing, p)
			}
		}
		if len(missing) > 0 {
			out.Outcome, out.Missing = RemoteMissingPrev, missing
			return out, nil
		}
		if len(ev.PrevEventIDs()) == 0 {
			before = StateIDs{}
		} else if before, base, err = r.resolve(ctx, ev.PrevEventIDs()); err != nil {
			return out, fmt.Errorf("state before %s: %w", ev.EventID(), err)
		}
	}
	if len(pdu.StateBefore) > 0 {
		if err := r.setStateBefore(ctx, ev.EventID(), before); err != nil {
			return out, err
		}
	}
	auth, err := r.authMap(ctx, ev, before)
	if err != nil {
		return out, err
	}
	after := before
	if ev.IsState() {
		after = maps.Clone(before)
		after[eventauth.StateKey{Type: ev.Type(), StateKey: *ev.StateKey()}] = ev.EventID()
	}
	if err := eventauth.Check(ev, auth); err != nil {
		out.Outcome, out.Error = RemoteRejected, notAllowed(err)
		if deOutlier {
			return out, nil
		}
		// No state is kept for it: an event building on a rejected one is
		// sent with the state before it (/state_ids) or not at all.
		return out, r.reject(ctx, ev, out.Error, false)
	}

	// 3. Against the current state: soft fail. As Synapse does, "current"
	// is the resolution of the state before the event with the states
	// after the extremities it does not build on, so an event that fills
	// a gap is judged with what it knows too.
	softState := r.cur
	if !mainLine {
		sets := []string{}
		for _, x := range r.ext {
			if !slices.Contains(ev.PrevEventIDs(), x) {
				sets = append(sets, x)
			}
		}
		if softState, err = r.resolveWith(ctx, before, sets); err != nil {
			return out, fmt.Errorf("current state for %s: %w", ev.EventID(), err)
		}
	}
	curAuth, err := r.authMap(ctx, ev, softState)
	if err != nil {
		return out, err
	}
	if err := eventauth.Check(ev, curAuth); err != nil {
		// An event first stored as an outlier is judged like any other:
		// a server must not get a banned user's message into the timeline
		// by listing it in an auth chain first. (Its outlier row stays; the
		// rejection row records the verdict.)
		out.Outcome, out.Error = RemoteSoftFailed, notAllowed(err)
		if err := r.reject(ctx, ev, out.Error, true); err != nil {
			return out, err
		}
		if base == nil && mainLine {
			// Its state is the current state plus itself: a delta over
			// the state log, not a snapshot of the room.
			pos, err := r.lastPosition(ctx)
			if err != nil {
				return out, err
			}
			base = &stateRef{ids: r.cur, logPos: pos}
		}
		return out, r.setState(ctx, ev.EventID(), after, base)
	}

	// 4. Into the timeline.
	ids, err := r.p.db.NextStreamIDs(ctx, r.tx, string(streams.Events), 1)
	if err != nil {
		return out, err
	}
	pos := ids[0]
	r.res.Add(pos)
	if err := r.insertEvent(ctx, ev, pos, false); err != nil {
		return out, err
	}
	if err := r.p.afterInsertTimeline(ctx, r.tx, ev, pos); err != nil {
		return out, err
	}
	r.known[ev.EventID()] = &storedEvent{ev: ev, pos: pos}
	r.built, r.ids = append(r.built, ev), append(r.ids, pos)
	out.Outcome, out.StreamPos = RemotePersisted, pos

	ext := []string{ev.EventID()}
	for _, x := range r.ext {
		if !slices.Contains(ev.PrevEventIDs(), x) {
			ext = append(ext, x)
		}
	}
	r.after[ev.EventID()] = &stateRef{ids: after, logPos: pos}
	var newCur StateIDs
	if len(ext) == 1 {
		newCur = after
	} else if newCur, _, err = r.resolve(ctx, ext); err != nil {
		return out, fmt.Errorf("resolve current state of %s: %w", r.roomID, err)
	}
	if err := r.setCurrent(ctx, newCur, pos); err != nil {
		return out, err
	}
	if !sameState(after, newCur) {
		// Off the main line: the state log at its position is not its
		// state, so it gets a group of its own.
		delete(r.after, ev.EventID())
		if err := r.setState(ctx, ev.EventID(), after, base); err != nil {
			return out, err
		}
	}
	r.ext = ext
	r.depth = max(r.depth, ev.Depth())
	return out, nil
}

// backfill stores history older than the room's timeline: each event
// checked against its own auth events (the state at it is not known
// here), at negative positions below everything stored, newest first so
// that older events sit lower. The current state and the extremities are
// not touched, and no hook sees them (nobody is notified of history).
func (r *remoteRun) backfill(ctx context.Context, pdus []RemotePDU) ([]RemoteResult, error) {
	results := make([]RemoteResult, len(pdus))
	type item struct {
		i  int
		ev *events.Event
	}
	var todo []item
	for i, pdu := range pdus {
		var ev *events.Event
		if ev, results[i] = r.parse(pdu.Event); ev == nil {
			continue
		}
		todo = append(todo, item{i, ev})
	}
	slices.SortStableFunc(todo, func(a, b item) int {
		switch {
		case a.ev.Depth() > b.ev.Depth():
			return -1
		case a.ev.Depth() < b.ev.Depth():
			return 1
		}
		return 0
	})
	// Positions are handed out newest first so older events sit lower,
	// but events are checked oldest first: an event's auth events are
	// older than it and may be in the same answer.
	var ids []int64
	if len(todo) > 0 {
		var err error
		if ids, err = r.p.db.NextStreamIDs(ctx, r.tx, "outliers", len(todo)); err != nil {
			return nil, err
		}
	}
	for j := len(todo) - 1; j >= 0; j-- {
		it, pos := todo[j], -ids[j]
		ev, res := it.ev, &results[it.i]
		if err := r.load(ctx, []string{ev.EventID()}); err != nil {
			return nil, err
		}
		if se := r.known[ev.EventID()]; se != nil && !se.outlier {
			res.Outcome, res.StreamPos = RemoteDuplicate, se.pos
			continue
		}
		missing, reason, err := r.checkAuthEvents(ctx, ev)
		if err != nil {
			return nil, err
		}
		if len(missing) > 0 {
			res.Outcome, res.Missing = RemoteMissingPrev, missing
			continue
		}
		if reason != "" {
			res.Outcome, res.Error = RemoteRejected, reason
			if err := r.reject(ctx, ev, reason, false); err != nil {
				return nil, err
			}
			continue
		}
		if err := r.insertEvent(ctx, ev, pos, false); err != nil {
			return nil, err
		}
		if err := r.p.afterInsertTimeline(ctx, r.tx, ev, pos); err != nil {
			return nil, err
		}
		r.known[ev.EventID()] = &storedEvent{ev: ev, pos: pos}
		res.Outcome, res.StreamPos = RemotePersisted, pos
	}
	return results, nil
}

// localJoined tells whether a user of ours is joined to the room now.
func (r *remoteRun) localJoined(ctx context.Context) (bool, error) {
	for k, id := range r.cur {
		if k.Type != "m.room.member" || senderServer(k.StateKey) != r.p.serverName {
			continue
		}
		if err := r.load(ctx, []string{id}); err != nil {
			return false, err
		}
		if se := r.known[id]; se != nil && se.ev.Membership() == "join" {
			return true, nil
		}
	}
	return false, nil
}

// outOfBand stores a local user's membership in a room we have no state
// of: into the timeline (so the user's sync sees it) and the current state
// under its own key only; the room gets no extremities from it, so a later
// join starts the room's DAG from the state it brings.
func (r *remoteRun) outOfBand(ctx context.Context, ev *events.Event) (RemoteResult, error) {
	out := RemoteResult{EventID: ev.EventID()}
	if ev.Type() != "m.room.member" || ev.StateKey() == nil || senderServer(*ev.StateKey()) != r.p.serverName {
		out.Outcome, out.Error = RemoteRejected, "only a local user's membership can be stored out of band"
		return out, nil
	}
	ids, err := r.p.db.NextStreamIDs(ctx, r.tx, string(streams.Events), 1)
	if err != nil {
		return out, err
	}
	pos := ids[0]
	r.res.Add(pos)
	if err := r.insertEvent(ctx, ev, pos, false); err != nil {
		return out, err
	}
	r.known[ev.EventID()] = &storedEvent{ev: ev, pos: pos}
	r.built, r.ids = append(r.built, ev), append(r.ids, pos)
	next := maps.Clone(r.cur)
	next[eventauth.StateKey{Type: ev.Type(), StateKey: *ev.StateKey()}] = ev.EventID()
	if err := r.setCurrent(ctx, next, pos); err != nil {
		return out, err
	}
	out.Outcome, out.StreamPos = RemotePersisted, pos
	return out, nil
}

func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for _, x := range a {
		if !slices.Contains(b, x) {
			return false
		}
	}
	return true
}

func sameState(a, b StateIDs) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// setCurrent moves the current state to next at position pos: each
// changed entry goes to current_state and the state log.
func (r *remoteRun) setCurrent(ctx context.Context, next StateIDs, pos int64) error {
	var changedIDs []string
	for k, id := range next {
		if r.cur[k] != id {
			changedIDs = append(changedIDs, id)
		}
	}
	if len(changedIDs) == 0 {
		r.cur = next
		return nil
	}
	if err := r.load(ctx, changedIDs); err != nil {
		return err
	}
	for k, id := range next {
		if r.cur[k] == id {
			continue
		}
		var membership sql.NullString
		if se := r.known[id]; se != nil {
			if m := se.ev.Membership(); m != "" {
				membership = sql.NullString{String: m, Valid: true}
			}
		}
		_, err := r.tx.ExecContext(ctx, `INSERT INTO current_state (room_id, type, state_key, event_id, stream_ordering, membership)
			VALUES ($1, $2, $3, $4, $5, $6)
			ON CONFLICT (room_id, type, state_key) DO UPDATE SET event_id = excluded.event_id,
			stream_ordering = excluded.stream_ordering, membership = excluded.membership`,
			r.roomID, k.Type, k.StateKey, id, pos, membership)
		if err != nil {
			return fmt.Errorf("update current state: %w", err)
		}
		_, err = r.tx.ExecContext(ctx, `INSERT INTO state_log (room_id, type, state_key, stream_ordering, event_id, membership)
			VALUES ($1, $2, $3, $4, $5, $6)`, r.roomID, k.Type, k.StateKey, pos, id, membership)
		if err != nil {
			return fmt.Errorf("append state log: %w", err)
		}
		if k.Type == "m.room.member" {
			if _, err := r.tx.ExecContext(ctx, `DELETE FROM forgotten_rooms WHERE user_id = $1 AND room_id = $2`, k.StateKey, r.roomID); err != nil {
				return fmt.Errorf("clear forgotten room: %w", err)
			}
		}
		r.changed[k] = pos
		if se := r.known[id]; (se == nil || se.pos != pos) && r.resetAt != pos {
			if _, err := r.tx.ExecContext(ctx, `INSERT INTO state_resets (room_id, stream_ordering) VALUES ($1, $2)
				ON CONFLICT DO NOTHING`, r.roomID, pos); err != nil {
				return fmt.Errorf("record state reset of %s: %w", r.roomID, err)
			}
			r.resetAt = max(r.resetAt, pos)
		}
	}
	r.cur = next
	return nil
}

// setState records the state after an event that the state log does not
// hold.
func (r *remoteRun) setState(ctx context.Context, eventID string, state StateIDs, base *stateRef) error {
	group := eventID
	if base != nil && base.group != "" && sameState(state, base.ids) {
		group = base.group
	} else if err := r.writeGroup(ctx, group, state, base); err != nil {
		return err
	}
	if _, err := r.tx.ExecContext(ctx, `INSERT INTO event_state (event_id, group_id) VALUES ($1, $2) ON CONFLICT (event_id) DO NOTHING`,
		eventID, group); err != nil {
		return fmt.Errorf("store state of %s: %w", eventID, err)
	}
	r.after[eventID] = &stateRef{ids: state, group: group}
	return nil
}

// setStateBefore records the state another server said was before an
// event whose prev events are unknown here, for /state_ids and send_join
// answers about it.
func (r *remoteRun) setStateBefore(ctx context.Context, eventID string, state StateIDs) error {
	group := "<" + eventID
	if err := r.writeGroup(ctx, group, state, nil); err != nil {
		return err
	}
	if _, err := r.tx.ExecContext(ctx, `INSERT INTO event_state_before (event_id, group_id) VALUES ($1, $2) ON CONFLICT (event_id) DO NOTHING`,
		eventID, group); err != nil {
		return fmt.Errorf("store state before %s: %w", eventID, err)
	}
	return nil
}

// writeGroup stores a state group: a delta over base when the state came
// from one and the chain stays short, else a snapshot.
func (r *remoteRun) writeGroup(ctx context.Context, group string, state StateIDs, base *stateRef) error {
	var prev sql.NullString
	var logPos sql.NullInt64
	chain := 0
	delta := state
	if base != nil {
		switch {
		case base.group != "":
			var c int
			if err := r.tx.QueryRowContext(ctx, `SELECT chain FROM state_groups WHERE group_id = $1`, base.group).Scan(&c); err != nil {
				return fmt.Errorf("load state group %s: %w", base.group, err)
			}
			if c+1 <= maxGroupChain {
				prev, chain, delta = sql.NullString{String: base.group, Valid: true}, c+1, diffState(state, base.ids)
			}
		case base.logPos > 0:
			logPos, delta = sql.NullInt64{Int64: base.logPos, Valid: true}, diffState(state, base.ids)
		}
		// Entries only add or replace: a base with a key the state lacks
		// cannot be its base.
		for k := range base.ids {
			if _, ok := state[k]; !ok {
				prev, logPos, chain, delta = sql.NullString{}, sql.NullInt64{}, 0, state
				break
			}
		}
	}
	_, err := r.tx.ExecContext(ctx, `INSERT INTO state_groups (group_id, room_id, prev_group, log_pos, chain) VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (group_id) DO NOTHING`, group, r.roomID, prev, logPos, chain)
	if err != nil {
		return fmt.Errorf("store state group %s: %w", group, err)
	}
	for k, id := range delta {
		if _, err := r.tx.ExecContext(ctx, `INSERT INTO state_group_entries (group_id, type, state_key, event_id) VALUES ($1, $2, $3, $4)
			ON CONFLICT DO NOTHING`, group, k.Type, k.StateKey, id); err != nil {
			return fmt.Errorf("store state group %s: %w", group, err)
		}
	}
	return nil
}

func diffState(state, base StateIDs) StateIDs {
	out := StateIDs{}
	for k, id := range state {
		if base[k] != id {
			out[k] = id
		}
	}
	return out
}

// finish writes the extremities and runs the batch hooks.
func (r *remoteRun) finish(ctx context.Context) error {
	if len(r.built) == 0 {
		return nil
	}
	for _, h := range r.p.hooks {
		after, err := h.InBatch(ctx, r.tx, r.roomID, r.built, r.ids)
		if err != nil {
			return err
		}
		if after != nil {
			r.afterCommit = append(r.afterCommit, after)
		}
	}
	if _, err := r.tx.ExecContext(ctx, `DELETE FROM forward_extremities WHERE room_id = $1`, r.roomID); err != nil {
		return fmt.Errorf("update extremities: %w", err)
	}
	for _, id := range r.ext {
		if _, err := r.tx.ExecContext(ctx, `INSERT INTO forward_extremities (room_id, event_id) VALUES ($1, $2)`, r.roomID, id); err != nil {
			return fmt.Errorf("update extremities: %w", err)
		}
	}
	return nil
}

// afterRemote makes a committed run visible: the room's cache, the state
// and event notifications, the hooks' after-commit work and the wake-up.
func (p *Persister) afterRemote(roomID string, rc *roomCache, r *remoteRun) {
	if rc == nil || len(r.built) == 0 {
		if rc == nil {
			p.forget(roomID)
		}
	} else {
		rc.extremities, rc.depth = r.ext, r.depth
		rc.curIDs = r.cur
		for k := range r.changed {
			delete(rc.state, k)
			delete(rc.missing, k)
		}
	}
	if len(r.built) == 0 {
		return
	}
	last := r.ids[len(r.ids)-1]
	if p.persisted != nil {
		p.persisted(roomID, last)
	}
	if p.stateReset != nil && r.resetAt > 0 {
		p.stateReset(roomID, r.resetAt)
	}
	if p.stateChanged != nil {
		for k, pos := range r.changed {
			p.stateChanged(roomID, k.Type, k.StateKey, pos)
		}
	}
	for _, f := range r.afterCommit {
		f()
	}
	p.reg.WakeAtWriter(streams.Events, p.instance, last, WakeKeys(roomID, r.built)...)
}

// senderServer is the server part of a user id.
func senderServer(userID string) string {
	if i := strings.IndexByte(userID, ':'); i >= 0 {
		return userID[i+1:]
	}
	return ""
}
