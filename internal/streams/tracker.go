// Package streams owns the replication spine: the registry of named streams,
// each stream's writers and positions, the tracker that turns allocated ids
// into a gap-free committed position, and the notifier that wakes waiters.
package streams

import (
	"sync"
)

// Tracker turns the ids one writer allocates for a stream into the writer's
// position: the highest id such that every id this writer allocated at or
// below it has finished (committed or rolled back). Readers may read rows up
// to the position and never miss one that commits later.
//
// Ids come from a shared sequence, so another writer's ids interleave with
// ours; they are simply never seen here. The subtle case is the window
// between asking the sequence for an id and learning its value: Reserve
// records a floor (every id we will get is above the highest id seen so far)
// so that the position cannot advance past an id we have not yet learnt.
type Tracker struct {
	mu        sync.Mutex
	pos       int64 // committed without gaps
	maxSeen   int64
	maxDone   int64
	inFlight  map[int64]struct{}
	reserving map[*Reservation]int64 // reservation → floor
	onAdvance func(pos int64)
	// bumpTo is a position another writer of the stream reached, to be
	// taken as ours once nothing of ours is in flight (see Bump).
	bumpTo int64
}

// NewTracker starts a tracker at pos (read from stream_positions or the
// table's maximum at start-up). onAdvance, if set, is called with the mutex
// released whenever the position moves.
func NewTracker(pos int64, onAdvance func(pos int64)) *Tracker {
	return &Tracker{pos: pos, maxSeen: pos, maxDone: pos, inFlight: map[int64]struct{}{},
		reserving: map[*Reservation]int64{}, onAdvance: onAdvance}
}

// Reservation is one id (or batch of ids) being allocated and written.
type Reservation struct {
	t    *Tracker
	ids  []int64
	done bool
}

// Reserve must be called before the id is allocated from the sequence.
func (t *Tracker) Reserve() *Reservation {
	r := &Reservation{t: t}
	t.mu.Lock()
	t.reserving[r] = t.maxSeen
	t.mu.Unlock()
	return r
}

// Add records an id the sequence returned for this reservation.
func (r *Reservation) Add(id int64) {
	t := r.t
	t.mu.Lock()
	r.ids = append(r.ids, id)
	t.inFlight[id] = struct{}{}
	if id > t.maxSeen {
		t.maxSeen = id
	}
	t.mu.Unlock()
}

// IDs returns the ids allocated so far, in allocation order.
func (r *Reservation) IDs() []int64 { return r.ids }

// Done marks the reservation finished, its transaction committed.
func (r *Reservation) Done() { r.finish(true) }

// Abort ends a reservation whose transaction rolled back. Its ids are
// forgotten without counting as finished: on SQLite the counter update
// rolled back with the transaction and the same id will be handed out
// again, so the position must not pass it now. (On PostgreSQL the id is
// simply never used; later ids move the position past it.)
func (r *Reservation) Abort() { r.finish(false) }

func (r *Reservation) finish(committed bool) {
	t := r.t
	t.mu.Lock()
	if r.done {
		t.mu.Unlock()
		return
	}
	r.done = true
	delete(t.reserving, r)
	for _, id := range r.ids {
		delete(t.inFlight, id)
		if committed && id > t.maxDone {
			t.maxDone = id
		}
	}
	moved, pos := t.recompute()
	t.mu.Unlock()
	if moved && t.onAdvance != nil {
		t.onAdvance(pos)
	}
}

func (t *Tracker) recompute() (bool, int64) {
	limit := t.maxDone
	if len(t.inFlight) == 0 && len(t.reserving) == 0 && t.bumpTo > limit {
		// Idle: every id we allocated is finished, and any id we allocate
		// later comes after bumpTo, which the shared sequence already
		// handed to another writer.
		limit = t.bumpTo
		t.maxDone = max(t.maxDone, t.bumpTo)
		t.maxSeen = max(t.maxSeen, t.bumpTo)
	}
	for id := range t.inFlight {
		if id-1 < limit {
			limit = id - 1
		}
	}
	for _, floor := range t.reserving {
		if floor < limit {
			limit = floor
		}
	}
	if limit > t.pos {
		t.pos = limit
		return true, limit
	}
	return false, t.pos
}

// Position is the writer's committed-without-gaps position.
func (t *Tracker) Position() int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.pos
}

// Bump moves the position forward without an id of our own: another
// writer of the same multi-writer stream reached to, so once nothing of
// ours is in flight our position may be to as well. Without this an idle
// writer would hold back the stream's minimum (Synapse #8499). If ids of
// ours are in flight, the bump is applied when they finish.
func (t *Tracker) Bump(to int64) {
	t.mu.Lock()
	if to <= t.bumpTo {
		t.mu.Unlock()
		return
	}
	t.bumpTo = to
	moved, pos := t.recompute()
	t.mu.Unlock()
	if moved && t.onAdvance != nil {
		t.onAdvance(pos)
	}
}
