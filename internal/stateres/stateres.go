// Package stateres implements Matrix state resolution: given the room states
// at the tips of a room's DAG (the states after each prev_event of a new
// event), compute the one state the room is in. It is pure computation over
// events supplied by an EventFetcher, so the federation receiver can back the
// fetcher with the database and tests with a map.
//
// The algorithm is chosen by the room version's StateRes field:
//
//   - v1 (room version 1): the spec's original algorithm, by depth and
//     sha1(event_id).
//   - v2 (room versions 2–11): unconflicted/conflicted split, auth difference,
//     reverse topological power ordering, iterative auth checks, mainline
//     ordering.
//   - v2.1 (room version 12, MSC4297): v2 plus the conflicted state subgraph
//     in the full conflicted set, and the first iterative auth checks start
//     from an empty state instead of the unconflicted state.
//
// Where the spec leaves room for interpretation the choice follows Synapse,
// the implementation every other server must agree with; each such choice is
// noted where it is made.
package stateres

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"ganglion/internal/eventauth"
	"ganglion/internal/events"
)

// StateKey identifies one piece of room state: (type, state_key).
type StateKey = eventauth.StateKey

// EventFetcher loads events for state resolution. Both methods take batches
// so that a database-backed fetcher needs few round trips.
type EventFetcher interface {
	// Events returns the events with the given ids that the fetcher knows
	// and that were not rejected. Ids it does not know (or knows as
	// rejected) are left out of the map: resolution treats them as absent,
	// as the spec treats rejected auth events, and fails only when an event
	// of the conflicted state itself is missing.
	Events(ctx context.Context, ids []string) (map[string]*events.Event, error)
	// AuthChain returns the union of the auth chains of the given events:
	// every event reachable through auth_events links, each once. The given
	// events themselves are included only when one is in another's chain.
	AuthChain(ctx context.Context, ids []string) ([]string, error)
}

// ErrMissingEvent is returned (wrapped, with the event id) when an event of
// the conflicted state cannot be loaded: resolution cannot order or check it.
var ErrMissingEvent = errors.New("state resolution: event not found")

// Resolve resolves stateSets (each a room state: (type, state_key) → event
// id) with the algorithm of room version rv. The input maps are not
// modified; the result is a new map.
func Resolve(ctx context.Context, rv *events.RoomVersion, stateSets []map[StateKey]string, fetcher EventFetcher) (map[StateKey]string, error) {
	if rv == nil {
		return nil, errors.New("state resolution: nil room version")
	}
	if fetcher == nil {
		return nil, errors.New("state resolution: nil event fetcher")
	}
	switch len(stateSets) {
	case 0:
		return map[StateKey]string{}, nil
	case 1:
		return maps1(stateSets[0]), nil
	}
	var (
		out map[StateKey]string
		err error
	)
	switch rv.StateRes {
	case events.StateResV1:
		out, err = resolveV1(ctx, rv, stateSets, fetcher)
	case events.StateResV2:
		out, err = resolveV2(ctx, rv, stateSets, fetcher, false)
	case events.StateResV21:
		out, err = resolveV2(ctx, rv, stateSets, fetcher, true)
	default:
		return nil, fmt.Errorf("state resolution: room version %s has unknown algorithm %d", rv.ID, rv.StateRes)
	}
	if err != nil {
		return nil, fmt.Errorf("resolve state of room version %s: %w", rv.ID, err)
	}
	return out, nil
}

func maps1(m map[StateKey]string) map[StateKey]string {
	out := make(map[StateKey]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// loader caches fetched events for one resolution. A nil entry records an id
// the fetcher did not return, so it is not asked for again.
type loader struct {
	f   EventFetcher
	evs map[string]*events.Event
	buf []string
}

func newLoader(f EventFetcher, sizeHint int) *loader {
	return &loader{f: f, evs: make(map[string]*events.Event, sizeHint)}
}

// load fetches, in one batch, those of ids not fetched before.
func (l *loader) load(ctx context.Context, ids []string) error {
	l.buf = l.buf[:0]
	for _, id := range ids {
		if _, done := l.evs[id]; done {
			continue
		}
		l.evs[id] = nil // also dedupes ids within this batch
		l.buf = append(l.buf, id)
	}
	if len(l.buf) == 0 {
		return nil
	}
	got, err := l.f.Events(ctx, l.buf)
	if err != nil {
		return fmt.Errorf("fetch %d events: %w", len(l.buf), err)
	}
	for _, id := range l.buf {
		// Only the requested id is trusted: a fetcher returning an event
		// under another id must not smuggle it in.
		if ev := got[id]; ev != nil && ev.EventID() == id {
			l.evs[id] = ev
		}
	}
	return nil
}

func (l *loader) get(id string) *events.Event { return l.evs[id] }

// authEventIDs lists the auth event ids of evs, for one batch load.
func authEventIDs(dst []string, evs []*events.Event) []string {
	for _, ev := range evs {
		if ev != nil {
			dst = append(dst, ev.AuthEventIDs()...)
		}
	}
	return dst
}

// split divides the state sets into the unconflicted state map (keys present
// in every set with the same event) and the conflicted state set (every other
// event id, once, sorted for determinism). conflictedKeys marks the keys.
func split(sets []map[StateKey]string) (unconflicted map[StateKey]string, conflicted []string, conflictedKeys map[StateKey]struct{}) {
	// Start from the smallest set: only its keys can be in every set.
	smallest := 0
	for i, s := range sets {
		if len(s) < len(sets[smallest]) {
			smallest = i
		}
	}
	unconflicted = make(map[StateKey]string, len(sets[smallest]))
	conflictedKeys = map[StateKey]struct{}{}
	for k, v := range sets[smallest] {
		same := true
		for _, s := range sets {
			if w, ok := s[k]; !ok || w != v {
				same = false
				break
			}
		}
		if same {
			unconflicted[k] = v
		}
	}
	seen := map[string]struct{}{}
	for _, s := range sets {
		for k, v := range s {
			if _, ok := unconflicted[k]; ok {
				continue
			}
			conflictedKeys[k] = struct{}{}
			if _, dup := seen[v]; !dup {
				seen[v] = struct{}{}
				conflicted = append(conflicted, v)
			}
		}
	}
	slices.Sort(conflicted)
	return unconflicted, conflicted, conflictedKeys
}

// authView is the state one event is checked against during the iterative
// auth checks: the partially resolved state where it has an entry for the
// key asked for, otherwise the event's own auth events (spec: "the event's
// auth events, with the partial state's events for the event's auth types
// replacing them"). The auth rules only ever ask for keys among the event's
// auth types, so consulting the partial state first for every key gives the
// same answer. create is the room's create event, added for room versions
// whose events do not list it (MSC4291).
type authView struct {
	partial map[StateKey]string
	own     []*events.Event
	create  *events.Event
	l       *loader
}

var _ eventauth.AuthEvents = (*authView)(nil)

func (a *authView) Get(eventType, stateKey string) *events.Event {
	if a.partial != nil {
		if id, ok := a.partial[StateKey{Type: eventType, StateKey: stateKey}]; ok {
			if ev := a.l.get(id); ev != nil {
				return ev
			}
		}
	}
	for _, ev := range a.own {
		if ev != nil && ev.Type() == eventType && ev.StateKeyEquals(stateKey) {
			return ev
		}
	}
	if a.create != nil && eventType == "m.room.create" && stateKey == "" {
		return a.create
	}
	return nil
}
