package stateres

import (
	"context"
	"crypto/sha1"
	"fmt"
	"slices"
	"strings"

	"ganglion/internal/eventauth"
	"ganglion/internal/events"
)

// resolveV1 is room version 1's algorithm:
//
//  1. R is the union of the state sets without the conflicted keys (a key
//     is conflicted when two sets hold different events for it; a key in
//     only some sets is not).
//  2. Conflicted m.room.power_levels events are sorted by ascending depth,
//     then descending sha1(event_id); the first goes into R unchecked, each
//     next one replaces it while the auth rules allow it against R, and the
//     first refused one stops the walk.
//  3. The same for m.room.join_rules, then for each conflicted
//     m.room.member key.
//  4. Every other conflicted key gets its first event, by descending depth
//     then ascending sha1(event_id), that the auth rules allow against R;
//     when none is allowed, the last one of that order (Synapse's choice;
//     the spec does not say).
func resolveV1(ctx context.Context, rv *events.RoomVersion, sets []map[StateKey]string, f EventFetcher) (map[StateKey]string, error) {
	r := map[StateKey]string{}
	conflicts := map[StateKey][]string{}
	for _, s := range sets {
		for k, id := range s {
			if c, ok := conflicts[k]; ok {
				if !slices.Contains(c, id) {
					conflicts[k] = append(c, id)
				}
				continue
			}
			if prev, ok := r[k]; !ok {
				r[k] = id
			} else if prev != id {
				conflicts[k] = []string{prev, id}
				delete(r, k)
			}
		}
	}
	if len(conflicts) == 0 {
		return r, nil
	}

	l := newLoader(f, 2*len(conflicts)+16)
	var ids []string
	for _, c := range conflicts {
		ids = append(ids, c...)
	}
	// The auth checks consult R's events for the auth types; load the
	// ones that can matter (everything but plain room state) up front.
	for k, id := range r {
		switch k.Type {
		case typeCreate, typePowerLevels, typeJoinRules, typeMember, "m.room.third_party_invite":
			ids = append(ids, id)
		}
	}
	if err := l.load(ctx, ids); err != nil {
		return nil, err
	}
	keys := make([]StateKey, 0, len(conflicts))
	for k, c := range conflicts {
		for _, id := range c {
			if l.get(id) == nil {
				return nil, fmt.Errorf("%w: conflicted state event %s", ErrMissingEvent, id)
			}
		}
		keys = append(keys, k)
	}
	// Keys in a fixed order so the result never depends on map iteration.
	slices.SortFunc(keys, func(a, b StateKey) int {
		if c := strings.Compare(a.Type, b.Type); c != 0 {
			return c
		}
		return strings.Compare(a.StateKey, b.StateKey)
	})

	// As Synapse does, every key of a phase is checked against R as it was
	// when the phase began, plus the key's own progress: resolving one
	// member does not change what another member's events are checked
	// against. Only R counts, not the events' own auth events: the spec
	// checks each event "for a room in state R".
	snap := maps1(r)
	view := &authView{partial: snap, l: l}
	allowed := func(ev *events.Event) bool { return eventauth.Check(ev, view) == nil }
	resolveAuthKey := func(k StateKey) {
		evs := l.eventsOf(conflicts[k])
		slices.SortFunc(evs, byDepthThenSHA1Desc)
		snap[k] = evs[0].EventID()
		for _, ev := range evs[1:] {
			if !allowed(ev) {
				break
			}
			snap[k] = ev.EventID()
		}
		r[k] = snap[k]
		delete(snap, k) // conflicted keys are absent from R until resolved
	}
	for _, phase := range []func(StateKey) bool{
		func(k StateKey) bool { return k == powerLevelsKey },
		func(k StateKey) bool { return k == StateKey{Type: typeJoinRules} },
		func(k StateKey) bool { return k.Type == typeMember },
	} {
		for _, k := range keys {
			if phase(k) {
				resolveAuthKey(k)
			}
		}
		for k, v := range r {
			snap[k] = v
		}
	}
	for _, k := range keys {
		if k == powerLevelsKey || k == (StateKey{Type: typeJoinRules}) || k.Type == typeMember {
			continue
		}
		evs := l.eventsOf(conflicts[k])
		slices.SortFunc(evs, func(a, b *events.Event) int { return byDepthThenSHA1Desc(b, a) })
		r[k] = evs[len(evs)-1].EventID()
		for _, ev := range evs {
			if allowed(ev) {
				r[k] = ev.EventID()
				break
			}
		}
	}
	return r, nil
}

func (l *loader) eventsOf(ids []string) []*events.Event {
	out := make([]*events.Event, 0, len(ids))
	for _, id := range ids {
		if ev := l.get(id); ev != nil {
			out = append(out, ev)
		}
	}
	return out
}

// byDepthThenSHA1Desc orders by ascending depth, then descending
// sha1(event_id) (hex, as Synapse compares it; the byte order is the same).
func byDepthThenSHA1Desc(a, b *events.Event) int {
	if a.Depth() != b.Depth() {
		if a.Depth() < b.Depth() {
			return -1
		}
		return 1
	}
	ha, hb := sha1.Sum([]byte(a.EventID())), sha1.Sum([]byte(b.EventID()))
	return -slices.Compare(ha[:], hb[:])
}
