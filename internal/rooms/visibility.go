package rooms

import (
	"context"
	"encoding/json"
	"sort"
)

// History visibility (spec: "History visibility"): which events a user may
// see. It is decided per event from the room's history_visibility and the
// user's membership just before the event, which the state log answers for
// any position; one visibility object loads both histories once and then
// decides a whole page of events in memory.
type Visibility struct {
	userID  string
	hv      []hvChange
	members []stateChange
}

type hvChange struct {
	pos   int64
	value string
}

func (s *Service) VisibilityFor(ctx context.Context, roomID, userID string) (*Visibility, error) {
	return s.visibility(ctx, roomID, userID, false)
}

// SyncVisibilityFor is VisibilityFor for readers bounded by this process's
// stream positions (sync), served from the store's state cache when it is
// enabled. Readers that may read past those positions (/messages reads up
// to the newest stored event, so a user sees their own writes made
// through another process) use VisibilityFor.
func (s *Service) SyncVisibilityFor(ctx context.Context, roomID, userID string) (*Visibility, error) {
	return s.visibility(ctx, roomID, userID, true)
}

func (s *Service) visibility(ctx context.Context, roomID, userID string, cached bool) (*Visibility, error) {
	c := s.store.state // nil: the cache is off
	if !cached {
		c = nil
	}
	v := &Visibility{userID: userID}
	var err error
	if v.hv, err = s.historyVisibility(ctx, c, roomID); err != nil {
		return nil, err
	}
	v.members, err = throughCache(c, stateKey3(roomID, "m.room.member", userID), func() ([]stateChange, error) {
		return s.store.stateHistory(ctx, roomID, "m.room.member", userID)
	})
	if err != nil {
		return nil, err
	}
	return v, nil
}

// historyVisibility is the room's history visibility settings over time,
// through c when not nil. A cached result is shared: callers must not
// modify it.
func (s *Service) historyVisibility(ctx context.Context, c *stateCache, roomID string) ([]hvChange, error) {
	const typ = "m.room.history_visibility"
	return throughCache(c, stateKey3(roomID, typ, ""), func() ([]hvChange, error) {
		hist, err := s.store.stateHistory(ctx, roomID, typ, "")
		if err != nil || len(hist) == 0 {
			return nil, err
		}
		ids := make([]string, len(hist))
		for i, h := range hist {
			ids[i] = h.eventID
		}
		evs, err := s.store.EventsByID(ctx, ids)
		if err != nil {
			return nil, err
		}
		out := make([]hvChange, 0, len(hist))
		for _, h := range hist {
			value := "shared"
			if se := evs[h.eventID]; se != nil {
				var c struct {
					HistoryVisibility string `json:"history_visibility"`
				}
				if json.Unmarshal(se.Event.Content(), &c) == nil && c.HistoryVisibility != "" {
					value = c.HistoryVisibility
				}
			}
			out = append(out, hvChange{pos: h.pos, value: value})
		}
		return out, nil
	})
}

// historyVisibilityAt is the setting in force for an event at pos (the
// state before it); "shared" is the spec's default.
func (v *Visibility) historyVisibilityAt(pos int64) string {
	i := sort.Search(len(v.hv), func(i int) bool { return v.hv[i].pos >= pos })
	if i == 0 {
		return "shared"
	}
	return v.hv[i-1].value
}

func (v *Visibility) membershipBefore(pos int64) string {
	i := sort.Search(len(v.members), func(i int) bool { return v.members[i].pos >= pos })
	if i == 0 {
		return ""
	}
	return v.members[i-1].membership
}

func (v *Visibility) joinedAtOrAfter(pos int64) bool {
	for _, m := range v.members {
		if m.pos >= pos && m.membership == "join" {
			return true
		}
	}
	return false
}

// CanSee applies the spec's algorithm to one event.
func (v *Visibility) CanSee(se *StoredEvent) bool {
	ev := se.Event
	if ev.Type() == "m.room.member" && ev.StateKeyEquals(v.userID) {
		return true // users always see their own membership changes
	}
	return v.canSeeAt(se.StreamOrdering)
}

// canSeeAt applies the algorithm to an event at pos that is not the
// user's own membership change (all CanSee needs beyond the position).
func (v *Visibility) canSeeAt(pos int64) bool {
	hv := v.historyVisibilityAt(pos)
	if hv == "world_readable" {
		return true
	}
	m := v.membershipBefore(pos)
	if m == "join" {
		return true
	}
	switch hv {
	case "shared":
		return v.joinedAtOrAfter(pos)
	case "invited":
		return m == "invite"
	}
	return false
}

func (v *Visibility) Filter(evs []*StoredEvent) []*StoredEvent {
	out := evs[:0:0]
	for _, se := range evs {
		if v.CanSee(se) {
			out = append(out, se)
		}
	}
	return out
}

// WorldReadableNow reports whether the room's current setting lets anyone read.
func (v *Visibility) WorldReadableNow() bool {
	return len(v.hv) > 0 && v.hv[len(v.hv)-1].value == "world_readable"
}
