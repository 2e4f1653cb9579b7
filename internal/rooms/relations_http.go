package rooms

import (
	"context"
	"net/http"
	"net/url"
	"strconv"

	"ganglion/internal/accounts"
	"ganglion/internal/mxhttp"
)

// routesV1 registers the rooms endpoints that exist only under
// /_matrix/client/v1: relations, threads and the space hierarchy.
func (s *Service) routesV1(mux *mxhttp.Mux, a func(accounts.AuthedHandler) http.Handler) {
	h := &roomHandlers{s: s}
	mux.Handle("GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}", a(h.relations))
	mux.Handle("GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}/{relType}", a(h.relations))
	mux.Handle("GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}/{relType}/{eventType}", a(h.relations))
	mux.Handle("GET /_matrix/client/v1/rooms/{roomId}/threads", a(h.threads))
	mux.Handle("GET /_matrix/client/v1/rooms/{roomId}/hierarchy", a(h.hierarchy))
	mux.Handle("GET /_matrix/client/v1/rooms/{roomId}/timestamp_to_event", a(h.timestampToEvent))
}

// Relations' limits: Synapse's default page, and a cap that keeps one
// page's visibility checks and formatting bounded.
const (
	defaultRelationsLimit = 5
	maxRelationsLimit     = 100
	// maxRecursionDepth is how deep recurse follows children of children,
	// as Synapse does.
	maxRecursionDepth = 3
)

// RelationsRequest is /relations' parameters.
type RelationsRequest struct {
	RelType, EventType string
	From, To           string
	Backwards          bool
	Limit              int
	Recurse            bool
}

// RelationsResponse is /relations' body.
type RelationsResponse struct {
	Chunk          []ClientEvent `json:"chunk"`
	NextBatch      string        `json:"next_batch,omitempty"`
	PrevBatch      string        `json:"prev_batch,omitempty"`
	RecursionDepth int           `json:"recursion_depth,omitempty"`
}

func parseBool(q url.Values, keys ...string) (bool, error) {
	for _, k := range keys {
		if v := q.Get(k); v != "" {
			b, err := strconv.ParseBool(v)
			if err != nil {
				return false, mxhttp.InvalidParam("%s must be true or false", k)
			}
			return b, nil
		}
	}
	return false, nil
}

func (h *roomHandlers) relations(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	q := r.URL.Query()
	rr := RelationsRequest{RelType: r.PathValue("relType"), EventType: r.PathValue("eventType"),
		From: q.Get("from"), To: q.Get("to"), Backwards: true}
	switch q.Get("dir") {
	case "", "b":
	case "f":
		rr.Backwards = false
	default:
		return mxhttp.InvalidParam("dir must be b or f")
	}
	var err error
	if rr.Limit, err = queryLimit(q); err != nil {
		return err
	}
	if rr.Recurse, err = parseBool(q, "recurse", "org.matrix.msc3981.recurse"); err != nil {
		return err
	}
	resp, err := h.s.Relations(r.Context(), req, r.PathValue("roomId"), r.PathValue("eventId"), rr)
	if err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, 200, resp)
}

// Relations pages over the children of an event the user may see (spec:
// "GET /relations"). Everything that hides the parent, an unknown room or
// event included, is 404, as the spec asks; children the user may not see
// are skipped.
func (s *Service) Relations(ctx context.Context, req *accounts.Requester, roomID, eventID string, rr RelationsRequest) (*RelationsResponse, error) {
	if !validRoomID(roomID) {
		return nil, mxhttp.InvalidParam("Invalid room id %q", roomID)
	}
	parent, err := s.store.Event(ctx, eventID)
	if err != nil {
		return nil, err
	}
	if parent == nil || parent.Event.RoomID() != roomID {
		return nil, errNotFoundEvent
	}
	v, err := s.VisibilityFor(ctx, roomID, req.UserID)
	if err != nil {
		return nil, err
	}
	if !v.CanSee(parent) {
		return nil, errNotFoundEvent
	}
	from, to := int64(-1), int64(-1)
	if rr.From != "" {
		if from, err = s.roomPosition(roomID, rr.From); err != nil {
			return nil, err
		}
	}
	if rr.To != "" {
		if to, err = s.roomPosition(roomID, rr.To); err != nil {
			return nil, err
		}
	}
	limit := rr.Limit
	if limit <= 0 {
		limit = defaultRelationsLimit
	}
	limit = min(limit, maxRelationsLimit)
	depth := 1
	if rr.Recurse {
		depth = maxRecursionDepth
	}
	resp := &RelationsResponse{Chunk: []ClientEvent{}, PrevBatch: rr.From}
	if rr.Recurse {
		resp.RecursionDepth = depth
	}
	var kept []*StoredEvent
	cursor := from
	exhausted := false
	for len(kept) < limit && !exhausted {
		ids, pos, err := s.store.relatedIDs(ctx, roomID, eventID, RelationsQuery{RelType: rr.RelType, EventType: rr.EventType,
			Depth: depth, From: cursor, To: to, Backwards: rr.Backwards, Limit: limit})
		if err != nil {
			return nil, err
		}
		exhausted = len(ids) < limit
		loaded, err := s.store.EventsByID(ctx, ids)
		if err != nil {
			return nil, err
		}
		for k, id := range ids {
			if rr.Backwards {
				cursor = pos[k] - 1
			} else {
				cursor = pos[k]
			}
			if se := loaded[id]; se != nil && v.CanSee(se) {
				kept = append(kept, se)
				if len(kept) == limit {
					exhausted = k == len(ids)-1 && exhausted
					break
				}
			}
		}
	}
	if !exhausted {
		resp.NextBatch = FormatRoomToken(cursor)
	}
	if resp.Chunk, err = s.Formatter(req.UserID, req.DeviceID).Format(ctx, kept); err != nil {
		return nil, err
	}
	return resp, nil
}

// ThreadsResponse is /threads' body.
type ThreadsResponse struct {
	Chunk     []ClientEvent `json:"chunk"`
	NextBatch string        `json:"next_batch,omitempty"`
}

func (h *roomHandlers) threads(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	tl, err := h.s.OpenTimeline(r.Context(), req, r.PathValue("roomId"))
	if err != nil {
		return err
	}
	q := r.URL.Query()
	participated := false
	switch q.Get("include") {
	case "", "all":
	case "participated":
		participated = true
	default:
		return mxhttp.InvalidParam("include must be all or participated")
	}
	limit, err := queryLimit(q)
	if err != nil {
		return err
	}
	from := int64(-1)
	if tok := q.Get("from"); tok != "" {
		if from, err = ParseRoomToken(tok); err != nil {
			return err
		}
	}
	resp, err := tl.Threads(r.Context(), participated, from, limit)
	if err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, 200, resp)
}

// Threads lists the room's thread roots the user may see, the thread with
// the latest reply first (spec: "GET /threads"), each with its bundled
// thread summary. from is a position: threads whose latest reply is at or
// before it (-1: all).
func (t *Timeline) Threads(ctx context.Context, participated bool, from int64, limit int) (*ThreadsResponse, error) {
	s := t.s
	if limit <= 0 {
		limit = defaultRelationsLimit
	}
	limit = min(limit, maxRelationsLimit)
	resp := &ThreadsResponse{Chunk: []ClientEvent{}}
	var kept []*StoredEvent
	cursor := from
	exhausted := false
	for len(kept) < limit && !exhausted {
		ids, latest, err := s.store.threadRoots(ctx, t.roomID, cursor, participated, t.req.UserID, limit)
		if err != nil {
			return nil, err
		}
		exhausted = len(ids) < limit
		loaded, err := s.store.EventsByID(ctx, ids)
		if err != nil {
			return nil, err
		}
		for k, id := range ids {
			cursor = latest[k] - 1
			if se := loaded[id]; se != nil && se.Event.RoomID() == t.roomID && t.v.CanSee(se) {
				kept = append(kept, se)
				if len(kept) == limit {
					exhausted = k == len(ids)-1 && exhausted
					break
				}
			}
		}
	}
	if !exhausted {
		resp.NextBatch = FormatRoomToken(cursor)
	}
	var err error
	if resp.Chunk, err = s.Formatter(t.req.UserID, t.req.DeviceID).Format(ctx, kept); err != nil {
		return nil, err
	}
	return resp, nil
}
