package search

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"log/slog"
	"net/http"
	"slices"
	"strconv"

	"ganglion/internal/accounts"
	"ganglion/internal/eventauth"
	"ganglion/internal/filters"
	"ganglion/internal/mxhttp"
	"ganglion/internal/rooms"
)

const (
	defaultLimit   = 10
	maxLimit       = 100
	defaultContext = 5
	maxContext     = 100
)

// Service answers POST /search.
type Service struct {
	store *Store
	rooms *rooms.Service
	log   *slog.Logger
}

func NewService(store *Store, roomSvc *rooms.Service, log *slog.Logger) *Service {
	return &Service{store: store, rooms: roomSvc, log: log}
}

// Routes registers the endpoint.
func (s *Service) Routes(mux *mxhttp.Mux, srv *mxhttp.Server, acc *accounts.Service) {
	mux.HandleClient("POST", "/search", srv.Handle(acc.Auth(s.handle)))
}

// Request is the body of POST /search.
type Request struct {
	SearchCategories *struct {
		RoomEvents *RoomEventsCriteria `json:"room_events"`
	} `json:"search_categories"`
}

// RoomEventsCriteria is the spec's room_events category.
type RoomEventsCriteria struct {
	SearchTerm   *string         `json:"search_term"`
	Keys         []string        `json:"keys"`
	Filter       json.RawMessage `json:"filter"`
	OrderBy      string          `json:"order_by"`
	EventContext *struct {
		BeforeLimit    *int `json:"before_limit"`
		AfterLimit     *int `json:"after_limit"`
		IncludeProfile bool `json:"include_profile"`
	} `json:"event_context"`
	IncludeState bool `json:"include_state"`
	Groupings    *struct {
		GroupBy []struct {
			Key string `json:"key"`
		} `json:"group_by"`
	} `json:"groupings"`
}

func (s *Service) handle(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	var body Request
	if err := mxhttp.DecodeJSON(r, &body); err != nil {
		return err
	}
	if body.SearchCategories == nil {
		return mxhttp.MissingParam("Missing search_categories")
	}
	out := map[string]any{}
	if c := body.SearchCategories.RoomEvents; c != nil {
		res, err := s.RoomEvents(r.Context(), req, *c, r.URL.Query().Get("next_batch"))
		if err != nil {
			return err
		}
		out["room_events"] = res
	}
	return mxhttp.WriteJSON(w, 200, map[string]any{"search_categories": out})
}

// Result is one hit in the response.
type Result struct {
	Rank    float64            `json:"rank"`
	Result  rooms.ClientEvent  `json:"result"`
	Context *EventContextBlock `json:"context,omitempty"`
}

// EventContextBlock is a result's surrounding events.
type EventContextBlock struct {
	Start        string                    `json:"start"`
	End          string                    `json:"end"`
	EventsBefore []rooms.ClientEvent       `json:"events_before"`
	EventsAfter  []rooms.ClientEvent       `json:"events_after"`
	ProfileInfo  map[string]map[string]any `json:"profile_info,omitempty"`
}

// GroupValue is one group of the groupings.
type GroupValue struct {
	Results []string `json:"results"`
	Order   int      `json:"order"`
}

// RoomEventsResult is the room_events category of the response.
type RoomEventsResult struct {
	Count      int                              `json:"count"`
	Highlights []string                         `json:"highlights"`
	Results    []Result                         `json:"results"`
	NextBatch  string                           `json:"next_batch,omitempty"`
	State      map[string][]rooms.ClientEvent   `json:"state,omitempty"`
	Groups     map[string]map[string]GroupValue `json:"groups,omitempty"`
}

// cursor is where the next page starts: by rank, an offset into the hits;
// by recent, the stream position to continue below.
type cursor struct {
	recent bool
	n      int64
}

func (c cursor) String() string {
	kind := "r"
	if c.recent {
		kind = "t"
	}
	return base64.RawURLEncoding.EncodeToString([]byte(kind + strconv.FormatInt(c.n, 10)))
}

func parseCursor(s string, recent bool) (cursor, error) {
	bad := mxhttp.InvalidParam("Invalid next_batch")
	raw, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(raw) < 2 {
		return cursor{}, bad
	}
	n, err := strconv.ParseInt(string(raw[1:]), 10, 64)
	if err != nil || n < 0 {
		return cursor{}, bad
	}
	switch raw[0] {
	case 'r':
		if recent {
			return cursor{}, mxhttp.InvalidParam("next_batch is for order_by rank")
		}
	case 't':
		if !recent {
			return cursor{}, mxhttp.InvalidParam("next_batch is for order_by recent")
		}
	default:
		return cursor{}, bad
	}
	return cursor{recent: recent, n: n}, nil
}

// RoomEvents searches the rooms the user is or was joined to, returning
// only events history visibility lets them see.
func (s *Service) RoomEvents(ctx context.Context, req *accounts.Requester, c RoomEventsCriteria, nextBatch string) (*RoomEventsResult, error) {
	if c.SearchTerm == nil {
		return nil, mxhttp.MissingParam("Missing search_term")
	}
	recent := false
	switch c.OrderBy {
	case "", "rank":
	case "recent":
		recent = true
	default:
		return nil, mxhttp.InvalidParam("order_by must be rank or recent, got %q", c.OrderBy)
	}
	keys := AllKeys
	if c.Keys != nil {
		for _, k := range c.Keys {
			if !slices.Contains(AllKeys, k) {
				return nil, mxhttp.InvalidParam("Unknown key %q: keys are content.body, content.name and content.topic", k)
			}
		}
		keys = c.Keys
	}
	var filter *filters.RoomEventFilter
	if len(c.Filter) > 0 && string(c.Filter) != "null" {
		f, err := filters.ParseRoomEventFilter(c.Filter)
		if err != nil {
			return nil, mxhttp.BadJSON("%s", err.Error())
		}
		filter = f
	}
	limit := defaultLimit
	if filter != nil && filter.Limit != nil {
		limit = min(*filter.Limit, maxLimit)
	}
	before, after, withProfile, withContext := defaultContext, defaultContext, false, c.EventContext != nil
	if withContext {
		ec := c.EventContext
		if ec.BeforeLimit != nil {
			before = *ec.BeforeLimit
		}
		if ec.AfterLimit != nil {
			after = *ec.AfterLimit
		}
		if before < 0 || after < 0 {
			return nil, mxhttp.InvalidParam("event_context limits must not be negative")
		}
		before, after, withProfile = min(before, maxContext), min(after, maxContext), ec.IncludeProfile
	}
	var groupBy []string
	if c.Groupings != nil {
		for _, g := range c.Groupings.GroupBy {
			if g.Key != "room_id" && g.Key != "sender" {
				return nil, mxhttp.InvalidParam("group_by key must be room_id or sender, got %q", g.Key)
			}
			groupBy = append(groupBy, g.Key)
		}
	}
	cur := cursor{recent: recent}
	if nextBatch != "" {
		var err error
		if cur, err = parseCursor(nextBatch, recent); err != nil {
			return nil, err
		}
	}

	memberships, err := s.store.RoomsOfUser(ctx, req.UserID)
	if err != nil {
		return nil, err
	}
	var roomIDs []string
	leftAt := map[string]int64{}
	for room, left := range memberships {
		if !filter.MatchesRoom(room) {
			continue
		}
		roomIDs = append(roomIDs, room)
		if left > 0 {
			leftAt[room] = left
		}
	}
	slices.Sort(roomIDs)
	terms := Words(*c.SearchTerm)
	q := Query{Rooms: roomIDs, Terms: terms, Keys: keys, Recent: recent}
	res := &RoomEventsResult{Highlights: terms, Results: []Result{}}
	if res.Highlights == nil {
		res.Highlights = []string{}
	}
	vis := map[string]*rooms.Visibility{}
	visibility := func(room string) (*rooms.Visibility, error) {
		if v := vis[room]; v != nil {
			return v, nil
		}
		v, err := s.rooms.VisibilityFor(ctx, room, req.UserID)
		if err != nil {
			return nil, err
		}
		vis[room] = v
		return v, nil
	}
	if res.Count, err = s.count(ctx, q, leftAt, filter, visibility); err != nil {
		return nil, err
	}

	// Page through hits until limit visible ones are found: hits the user
	// may not see (before they joined a "joined" room, after they left)
	// are skipped, and the cursor moves past them.
	var kept []*rooms.StoredEvent
	ranks := map[string]float64{}
	more := false
	batch := max(limit*2, 20)
	for len(kept) < limit && !q.empty() {
		if recent {
			q.Before = cur.n
		} else {
			q.Offset = int(cur.n)
		}
		q.Limit = batch
		hits, err := s.store.Search(ctx, q)
		if err != nil {
			return nil, err
		}
		ids := make([]string, len(hits))
		for i, h := range hits {
			ids[i] = h.EventID
		}
		evs, err := s.rooms.Store().EventsByID(ctx, ids)
		if err != nil {
			return nil, err
		}
		stopped := false
		for _, h := range hits {
			if len(kept) == limit {
				stopped = true
				break
			}
			if recent {
				cur.n = h.StreamOrdering
			} else {
				cur.n++
			}
			se := evs[h.EventID]
			if se == nil || se.RedactedBy != "" {
				continue
			}
			v, err := visibility(h.RoomID)
			if err != nil {
				return nil, err
			}
			ev := se.Event
			if !v.CanSee(se) || !filter.MatchesEvent(h.RoomID, ev.Type(), ev.Sender(), ev.Content()) {
				continue
			}
			kept = append(kept, se)
			ranks[h.EventID] = h.Rank
		}
		if stopped || len(hits) == batch {
			more = true
		}
		if len(hits) < batch {
			if !stopped {
				more = false
			}
			break
		}
	}
	if more && len(kept) > 0 {
		res.NextBatch = cur.String()
	}

	f := s.rooms.Formatter(req.UserID, req.DeviceID)
	formatted, err := f.Format(ctx, kept)
	if err != nil {
		return nil, err
	}
	for i, se := range kept {
		r := Result{Rank: ranks[se.Event.EventID()], Result: formatted[i]}
		if withContext {
			if r.Context, err = s.context(ctx, f, vis[se.Event.RoomID()], se, before, after, withProfile); err != nil {
				return nil, err
			}
		}
		res.Results = append(res.Results, r)
	}
	if c.IncludeState {
		res.State = map[string][]rooms.ClientEvent{}
		for _, se := range kept {
			room := se.Event.RoomID()
			if _, done := res.State[room]; done {
				continue
			}
			var st []*rooms.StoredEvent
			if pos, left := leftAt[room]; left {
				st, err = s.rooms.Store().StateAt(ctx, room, pos, nil)
			} else {
				st, err = s.rooms.Store().CurrentState(ctx, room)
			}
			if err != nil {
				return nil, err
			}
			if res.State[room], err = f.Format(ctx, st); err != nil {
				return nil, err
			}
		}
	}
	if len(groupBy) > 0 {
		res.Groups = map[string]map[string]GroupValue{}
		for _, key := range groupBy {
			groups := map[string]GroupValue{}
			for _, se := range kept {
				k := se.Event.RoomID()
				if key == "sender" {
					k = se.Event.Sender()
				}
				g, ok := groups[k]
				if !ok {
					g.Order = len(groups) + 1
				}
				g.Results = append(g.Results, se.Event.EventID())
				groups[k] = g
			}
			res.Groups[key] = groups
		}
	}
	return res, nil
}

// context is the events around one result that the user may see, with
// their senders' profiles as of each event when asked for.
func (s *Service) context(ctx context.Context, f *rooms.Formatter, v *rooms.Visibility, se *rooms.StoredEvent,
	before, after int, withProfile bool) (*EventContextBlock, error) {
	store := s.rooms.Store()
	room := se.Event.RoomID()
	collect := func(backwards bool, n int) ([]*rooms.StoredEvent, int64, error) {
		var kept []*rooms.StoredEvent
		pos := se.StreamOrdering
		if backwards {
			pos--
		}
		for len(kept) < n {
			page := max(n*2, 20)
			evs, err := store.RoomEvents(ctx, room, pos, -1, backwards, page)
			if err != nil {
				return nil, 0, err
			}
			for _, e := range evs {
				if backwards {
					pos = e.StreamOrdering - 1
				} else {
					pos = e.StreamOrdering
				}
				if v.CanSee(e) {
					kept = append(kept, e)
					if len(kept) == n {
						break
					}
				}
			}
			if len(evs) < page {
				break
			}
		}
		return kept, pos, nil
	}
	evsBefore, start, err := collect(true, before)
	if err != nil {
		return nil, err
	}
	evsAfter, end, err := collect(false, after)
	if err != nil {
		return nil, err
	}
	block := &EventContextBlock{Start: rooms.FormatRoomToken(start), End: rooms.FormatRoomToken(end)}
	if block.EventsBefore, err = f.Format(ctx, evsBefore); err != nil {
		return nil, err
	}
	if block.EventsAfter, err = f.Format(ctx, evsAfter); err != nil {
		return nil, err
	}
	if withProfile {
		block.ProfileInfo = map[string]map[string]any{}
		for _, e := range append(append([]*rooms.StoredEvent{se}, evsBefore...), evsAfter...) {
			sender := e.Event.Sender()
			if _, done := block.ProfileInfo[sender]; done {
				continue
			}
			st, err := store.StateAt(ctx, room, e.StreamOrdering, []eventauth.StateKey{{Type: "m.room.member", StateKey: sender}})
			if err != nil {
				return nil, err
			}
			info := map[string]any{}
			if len(st) > 0 {
				var c map[string]any
				if json.Unmarshal(st[0].Event.Content(), &c) == nil {
					for _, k := range []string{"displayname", "avatar_url"} {
						if s, ok := c[k].(string); ok {
							info[k] = s
						}
					}
				}
			}
			block.ProfileInfo[sender] = info
		}
	}
	return block, nil
}

// maxExactCount bounds the hits count judges one by one; past it the count
// is the index's, bounded only by when the user left each room (the spec
// calls count approximate).
const maxExactCount = 5000

// count is the number of hits the user may see, as far as positions,
// senders and types tell (contains_url is not applied).
func (s *Service) count(ctx context.Context, q Query, leftAt map[string]int64, filter *filters.RoomEventFilter,
	visibility func(room string) (*rooms.Visibility, error)) (int, error) {
	// Unordered: a term in most messages is then cut off after
	// maxExactCount+1 hits instead of every hit being read and sorted.
	q.Unordered, q.Before, q.Offset, q.Limit = true, 0, 0, maxExactCount+1
	hits, err := s.store.Search(ctx, q)
	if err != nil {
		return 0, err
	}
	if len(hits) > maxExactCount {
		return s.store.Count(ctx, q, leftAt)
	}
	n := 0
	for _, h := range hits {
		if filter != nil && !filter.EventFilter.Matches(h.Type, h.Sender) {
			continue
		}
		v, err := visibility(h.RoomID)
		if err != nil {
			return 0, err
		}
		if v.CanSeeAt(h.StreamOrdering) {
			n++
		}
	}
	return n, nil
}
