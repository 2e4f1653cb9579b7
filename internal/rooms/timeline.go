package rooms

import (
	"context"
	"strconv"
	"strings"

	"ganglion/internal/accounts"
	"ganglion/internal/config"
	"ganglion/internal/eventauth"
	"ganglion/internal/filters"
	"ganglion/internal/mxhttp"
	"ganglion/internal/streams"
)

// Pagination tokens name a position in the events stream: "s123" is just
// after the event at 123. Within a room, locally created events are in
// stream order (one persister per room), so the stream position alone is
// enough. "t<depth>-<pos>" (Synapse's topological form) and sync's
// next_batch ("s123_4_5…") are accepted too, by their stream part.

// ParseRoomToken reads a pagination token.
func ParseRoomToken(tok string) (int64, error) {
	var body string
	switch {
	case strings.HasPrefix(tok, "s"):
		body = tok[1:]
		if i := strings.IndexByte(body, '_'); i >= 0 {
			body = body[:i]
		}
	case strings.HasPrefix(tok, "t"):
		i := strings.IndexByte(tok, '-')
		if i < 0 {
			return 0, mxhttp.InvalidParam("Invalid pagination token")
		}
		body = tok[i+1:]
	default:
		return 0, mxhttp.InvalidParam("Invalid pagination token")
	}
	n, err := strconv.ParseInt(body, 10, 64)
	if err != nil {
		return 0, mxhttp.InvalidParam("Invalid pagination token")
	}
	// Negative positions are history fetched with /backfill.
	return n, nil
}

// roomPosition reads a token given for one room: a pagination token
// ("s<pos>", "t<topo>-<pos>") or a sync token (next_batch, which clients
// pass as /members' at and /messages' from), whose events part is a vector
// on a fleet ("m<min>~<writer>.<pos>_…"). A room's events all come from its
// persister, so that writer's part of the vector is the room's position;
// the minimum would put the room in the past (an empty member list for a
// room created after it).
func (s *Service) roomPosition(roomID, tok string) (int64, error) {
	if strings.HasPrefix(tok, "m") || (strings.HasPrefix(tok, "s") && strings.Contains(tok, "_")) {
		t, err := s.reg.ParseToken(tok)
		if err != nil {
			return 0, mxhttp.InvalidParam("Invalid pagination token")
		}
		return t.EventsFor(s.persisterOf(roomID)), nil
	}
	return ParseRoomToken(tok)
}

// persisterOf names the events writer that owns a room.
func (s *Service) persisterOf(roomID string) string {
	return config.ShardFor(s.reg.Writers(streams.Events), roomID)
}

// FormatRoomToken writes a pagination token.
func FormatRoomToken(pos int64) string { return "s" + strconv.FormatInt(pos, 10) }

// MessagesRequest is /messages' parameters.
type MessagesRequest struct {
	From      string
	To        string
	Backwards bool
	Limit     int
	Filter    *filters.RoomEventFilter
}

// MessagesResponse is /messages' body.
type MessagesResponse struct {
	Chunk []ClientEvent `json:"chunk"`
	Start string        `json:"start"`
	End   string        `json:"end,omitempty"`
	State []ClientEvent `json:"state,omitempty"`
}

// Timeline is a user's read access to one room's timeline, checked once
// by OpenTimeline.
type Timeline struct {
	s      *Service
	req    *accounts.Requester
	roomID string
	v      *Visibility
}

// OpenTimeline checks that req's user may read the room's timeline at all:
// they were a member once, or the room is world readable. Endpoints call
// it before they look at their parameters, so a user who may not read the
// room is refused the same way whatever they ask, and learns nothing from
// how their parameters are judged.
func (s *Service) OpenTimeline(ctx context.Context, req *accounts.Requester, roomID string) (*Timeline, error) {
	if err := s.requireRoom(ctx, roomID); err != nil {
		return nil, err
	}
	v, err := s.VisibilityFor(ctx, roomID, req.UserID)
	if err != nil {
		return nil, err
	}
	if len(v.members) == 0 && !v.WorldReadableNow() {
		return nil, errNotInRoom(req.UserID, roomID)
	}
	return &Timeline{s: s, req: req, roomID: roomID, v: v}, nil
}

// Messages pages through a room's timeline, showing only what history
// visibility allows, and never returning an event twice or skipping one
// across pages.
func (t *Timeline) Messages(ctx context.Context, mr MessagesRequest) (*MessagesResponse, error) {
	s, req, roomID, v := t.s, t.req, t.roomID, t.v
	var err error
	var from int64
	if mr.From != "" {
		if from, err = s.roomPosition(roomID, mr.From); err != nil {
			return nil, err
		}
	} else if mr.Backwards {
		// The room's own persister's position: its events are readable up
		// to there whatever other persisters do.
		from = s.reg.WriterPosition(streams.Events, s.persisterOf(roomID))
		if m, err := s.store.MaxStreamOrdering(ctx, roomID); err == nil {
			from = max(from, m)
		}
	}
	to := int64(-1)
	if mr.To != "" {
		if to, err = s.roomPosition(roomID, mr.To); err != nil {
			return nil, err
		}
	}
	limit := mr.Limit
	if limit <= 0 {
		limit = 10
	}
	limit = min(limit, 1000)

	resp := &MessagesResponse{Chunk: []ClientEvent{}, Start: FormatRoomToken(from)}
	var kept []*StoredEvent
	cursor := from
	exhausted := false
	batch := max(limit*2, 50)
	backfilled := false
	for {
		for len(kept) < limit && !exhausted {
			evs, err := s.store.RoomEvents(ctx, roomID, cursor, to, mr.Backwards, batch)
			if err != nil {
				return nil, err
			}
			if len(evs) < batch {
				exhausted = true
			}
			for _, se := range evs {
				if mr.Backwards {
					cursor = se.StreamOrdering - 1
				} else {
					cursor = se.StreamOrdering
				}
				if v.CanSee(se) && mr.Filter.MatchesEvent(roomID, se.Event.Type(), se.Event.Sender(), se.Event.Content()) {
					kept = append(kept, se)
					if len(kept) == limit {
						// Stop exactly after the last returned event so the
						// next page starts with the event after it.
						exhausted = false
						break
					}
				}
			}
		}
		// At the start of what is stored: ask the room's other servers for
		// older history, once per request.
		if !mr.Backwards || !exhausted || len(kept) >= limit || backfilled || s.backfiller == nil || to >= 0 {
			break
		}
		backfilled = true
		n, err := s.backfiller.Backfill(ctx, roomID, limit-len(kept))
		if err != nil {
			s.log.Warn("could not backfill room", "room_id", roomID, "err", err)
			break
		}
		if n == 0 {
			break
		}
		exhausted = false
	}
	if !exhausted || len(kept) == limit {
		resp.End = FormatRoomToken(cursor)
	}
	f := s.Formatter(req.UserID, req.DeviceID)
	if resp.Chunk, err = f.Format(ctx, kept); err != nil {
		return nil, err
	}
	if mr.Filter != nil && mr.Filter.LazyLoadMembers && len(kept) > 0 {
		if resp.State, err = s.membersFor(ctx, f, roomID, kept); err != nil {
			return nil, err
		}
	}
	return resp, nil
}

// membersFor returns the member events of the senders of evs (lazy-loaded
// members), as of the newest of them. The requester is no exception: a
// client paginating back over its own messages needs its member event as
// of then (its displayname and avatar may have changed since), as Synapse
// sends it.
func (s *Service) membersFor(ctx context.Context, f *Formatter, roomID string, evs []*StoredEvent) ([]ClientEvent, error) {
	var newest int64
	seen := map[string]bool{}
	var keys []eventauth.StateKey
	for _, se := range evs {
		newest = max(newest, se.StreamOrdering)
		if u := se.Event.Sender(); !seen[u] {
			seen[u] = true
			keys = append(keys, eventauth.StateKey{Type: "m.room.member", StateKey: u})
		}
	}
	if len(keys) == 0 {
		return nil, nil
	}
	state, err := s.store.StateAt(ctx, roomID, newest, keys)
	if err != nil {
		return nil, err
	}
	return f.Format(ctx, state)
}

// ContextResponse is /context's body.
type ContextResponse struct {
	Start        string        `json:"start"`
	End          string        `json:"end"`
	EventsBefore []ClientEvent `json:"events_before"`
	Event        ClientEvent   `json:"event"`
	EventsAfter  []ClientEvent `json:"events_after"`
	State        []ClientEvent `json:"state"`
}

// Context returns events around one event.
func (t *Timeline) Context(ctx context.Context, eventID string, limit int, filter *filters.RoomEventFilter) (*ContextResponse, error) {
	s, req, roomID, v := t.s, t.req, t.roomID, t.v
	se, err := s.store.Event(ctx, eventID)
	if err != nil {
		return nil, err
	}
	if se == nil || se.Event.RoomID() != roomID || !v.CanSee(se) {
		return nil, errNotFoundEvent
	}
	if limit < 0 {
		return nil, mxhttp.InvalidParam("limit must not be negative")
	}
	if limit == 0 {
		limit = 10
	}
	limit = min(limit, 100)
	nBefore, nAfter := limit/2, limit-limit/2
	if limit == 1 {
		nBefore, nAfter = 0, 1
	}
	collect := func(backwards bool, n int) ([]*StoredEvent, int64, error) {
		var kept []*StoredEvent
		cursor := se.StreamOrdering
		if backwards {
			cursor = se.StreamOrdering - 1
		}
		for len(kept) < n {
			evs, err := s.store.RoomEvents(ctx, roomID, cursor, -1, backwards, max(n*2, 20))
			if err != nil {
				return nil, 0, err
			}
			for _, e := range evs {
				if backwards {
					cursor = e.StreamOrdering - 1
				} else {
					cursor = e.StreamOrdering
				}
				if v.CanSee(e) && filter.MatchesEvent(roomID, e.Event.Type(), e.Event.Sender(), e.Event.Content()) {
					kept = append(kept, e)
					if len(kept) == n {
						break
					}
				}
			}
			if len(evs) < max(n*2, 20) {
				break
			}
		}
		return kept, cursor, nil
	}
	before, startPos, err := collect(true, nBefore)
	if err != nil {
		return nil, err
	}
	after, endPos, err := collect(false, nAfter)
	if err != nil {
		return nil, err
	}
	f := s.Formatter(req.UserID, req.DeviceID)
	resp := &ContextResponse{Start: FormatRoomToken(startPos), End: FormatRoomToken(endPos)}
	main, err := f.Format(ctx, []*StoredEvent{se})
	if err != nil {
		return nil, err
	}
	resp.Event = main[0]
	if resp.EventsBefore, err = f.Format(ctx, before); err != nil {
		return nil, err
	}
	if resp.EventsAfter, err = f.Format(ctx, after); err != nil {
		return nil, err
	}
	if filter != nil && filter.LazyLoadMembers {
		all := append(append([]*StoredEvent{se}, before...), after...)
		resp.State, err = s.membersFor(ctx, f, roomID, all)
	} else {
		var st []*StoredEvent
		if st, err = s.store.StateAt(ctx, roomID, se.StreamOrdering, nil); err == nil {
			resp.State, err = f.Format(ctx, st)
		}
	}
	if err != nil {
		return nil, err
	}
	if resp.State == nil {
		resp.State = []ClientEvent{}
	}
	return resp, nil
}
