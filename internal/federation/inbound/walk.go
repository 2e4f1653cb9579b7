package inbound

import (
	"context"
	"net/http"
	"sort"
	"strconv"

	"ganglion/internal/mxhttp"
	"ganglion/internal/rooms"
)

// Walks over the room DAG read one level at a time: the events of a level
// are loaded together (rooms.Store.EventsByID, one query per 200 ids), so
// an auth chain of N levels costs N round trips, not one per event.
// Events of another room are never followed: an id named by one of our
// events is trusted only as far as it resolves inside the room.

// authChain returns the events reachable from roots through auth_events,
// roots included, oldest first.
func (s *Server) authChain(ctx context.Context, roomID string, roots []string) ([]*rooms.StoredEvent, error) {
	seen := map[string]bool{}
	var front []string
	for _, id := range roots {
		if !seen[id] {
			seen[id] = true
			front = append(front, id)
		}
	}
	var out []*rooms.StoredEvent
	for len(front) > 0 {
		evs, err := s.store.EventsByID(ctx, front)
		if err != nil {
			return nil, err
		}
		var next []string
		for _, id := range front {
			se := evs[id]
			if se == nil || se.Event.RoomID() != roomID {
				continue
			}
			out = append(out, se)
			for _, a := range se.Event.AuthEventIDs() {
				if !seen[a] {
					seen[a] = true
					next = append(next, a)
				}
			}
		}
		front = next
	}
	sortChronological(out)
	return out, nil
}

// sortChronological orders events by depth, then by stream position.
func sortChronological(evs []*rooms.StoredEvent) {
	sort.SliceStable(evs, func(i, j int) bool {
		a, b := evs[i], evs[j]
		if a.Event.Depth() != b.Event.Depth() {
			return a.Event.Depth() < b.Event.Depth()
		}
		return a.StreamOrdering < b.StreamOrdering
	})
}

// newestFirst is the reverse of sortChronological.
func newestFirst(evs []*rooms.StoredEvent) {
	sort.SliceStable(evs, func(i, j int) bool {
		a, b := evs[i], evs[j]
		if a.Event.Depth() != b.Event.Depth() {
			return a.Event.Depth() > b.Event.Depth()
		}
		return a.StreamOrdering > b.StreamOrdering
	})
}

// GET /_matrix/federation/v1/backfill/{roomId}?v=…&limit=
//
// The answer holds the v events themselves and what precedes them through
// prev_events, breadth first, newest first, at most limit (capped at 100,
// as Synapse does) events.
func (s *Server) getBackfill(w http.ResponseWriter, r *http.Request) error {
	from, err := origin(r)
	if err != nil {
		return err
	}
	ctx := r.Context()
	roomID := r.PathValue("roomId")
	q := r.URL.Query()
	seeds := q["v"]
	if len(seeds) == 0 {
		return mxhttp.MissingParam("Missing v")
	}
	ls := q.Get("limit")
	if ls == "" {
		return mxhttp.MissingParam("Missing limit")
	}
	limit, err := strconv.Atoi(ls)
	if err != nil || limit < 0 {
		return mxhttp.InvalidParam("limit must be a non-negative integer")
	}
	limit = min(limit, maxBackfill)
	vis, err := s.roomAccess(ctx, roomID, from)
	if err != nil {
		return err
	}

	out, err := s.walkBack(ctx, roomID, seeds, nil, limit, 0, true)
	if err != nil {
		return err
	}
	newestFirst(out)
	p, err := pdus(out, vis)
	if err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, http.StatusOK, s.transaction(p))
}

// POST /_matrix/federation/v1/get_missing_events/{roomId}
//
// Walks back from latest_events' prev_events, breadth first, stopping at
// earliest_events (which the requester has) and below min_depth, and
// answers at most limit (default 10, at most 20) events, oldest first.
// The latest events themselves are not included: the requester has them.
func (s *Server) postMissingEvents(w http.ResponseWriter, r *http.Request) error {
	from, err := origin(r)
	if err != nil {
		return err
	}
	ctx := r.Context()
	roomID := r.PathValue("roomId")
	// earliest_events may be left out, as Synapse allows: the walk then
	// stops only at the limit and min_depth.
	var body struct {
		EarliestEvents []string `json:"earliest_events"`
		LatestEvents   []string `json:"latest_events"`
		Limit          *int     `json:"limit"`
		MinDepth       *int64   `json:"min_depth"`
	}
	if err := mxhttp.DecodeJSON(r, &body); err != nil {
		return err
	}
	if body.LatestEvents == nil {
		return mxhttp.MissingParam("Missing latest_events")
	}
	limit := defaultMissingEvents
	if body.Limit != nil {
		if *body.Limit < 0 {
			return mxhttp.InvalidParam("limit must be non-negative")
		}
		limit = min(*body.Limit, maxMissingEvents)
	}
	var minDepth int64
	if body.MinDepth != nil {
		minDepth = *body.MinDepth
	}
	vis, err := s.roomAccess(ctx, roomID, from)
	if err != nil {
		return err
	}

	out, err := s.walkBack(ctx, roomID, body.LatestEvents, body.EarliestEvents, limit, minDepth, false)
	if err != nil {
		return err
	}
	sortChronological(out)
	p, err := pdus(out, vis)
	if err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, http.StatusOK, map[string]any{"events": p})
}

// walkBack walks a room's DAG back from start through prev_events,
// breadth first, one query per level: the events of each level deepest
// first, never an event of stop or below minDepth, never one of another
// room, until limit events are collected. With withStart the start events
// themselves count (backfill); without, the walk begins at their
// prev_events (get_missing_events, whose requester has them).
func (s *Server) walkBack(ctx context.Context, roomID string, start, stop []string, limit int, minDepth int64, withStart bool) ([]*rooms.StoredEvent, error) {
	seen := map[string]bool{}
	for _, id := range stop {
		seen[id] = true
	}
	var front []string
	for _, id := range start {
		if !seen[id] {
			seen[id] = true
			front = append(front, id)
		}
	}
	var out []*rooms.StoredEvent
	for first := true; len(front) > 0 && len(out) < limit; first = false {
		evs, err := s.store.EventsByID(ctx, front)
		if err != nil {
			return nil, err
		}
		level := make([]*rooms.StoredEvent, 0, len(front))
		for _, id := range front {
			if se := evs[id]; se != nil && se.Event.RoomID() == roomID && se.Event.Depth() >= minDepth {
				level = append(level, se)
			}
		}
		// Within a level the deepest go first, so a level cut by the limit
		// keeps the events nearest the start.
		newestFirst(level)
		var next []string
		for _, se := range level {
			if withStart || !first {
				if len(out) >= limit {
					break
				}
				out = append(out, se)
			}
			for _, p := range se.Event.PrevEventIDs() {
				if !seen[p] {
					seen[p] = true
					next = append(next, p)
				}
			}
		}
		front = next
	}
	return out, nil
}
