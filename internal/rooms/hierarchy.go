package rooms

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"ganglion/internal/accounts"
	"ganglion/internal/mxhttp"
)

// The space hierarchy (spec: "GET /hierarchy") walks m.space.child state
// breadth first from a root room over the rooms this server knows, and
// rooms it does not have as their via servers describe them
// (hierarchy_remote.go). It lives beside the public room directory because
// each room's summary is the directory's entry.

// HierarchyRoom is one room of a hierarchy page.
type HierarchyRoom struct {
	PublicRoom
	ChildrenState []StrippedState `json:"children_state"`
}

// StrippedState is the stripped form of m.space.child events.
type StrippedState struct {
	Type           string          `json:"type"`
	StateKey       string          `json:"state_key"`
	Content        json.RawMessage `json:"content"`
	Sender         string          `json:"sender"`
	OriginServerTS int64           `json:"origin_server_ts"`
}

// HierarchyResponse is /hierarchy's body.
type HierarchyResponse struct {
	Rooms     []HierarchyRoom `json:"rooms"`
	NextBatch string          `json:"next_batch,omitempty"`
}

// HierarchyRequest is /hierarchy's parameters; MaxDepth < 0 is unbounded.
type HierarchyRequest struct {
	MaxDepth      int
	SuggestedOnly bool
	Limit         int
	From          string
}

const (
	defaultHierarchyLimit = 50
	maxHierarchyLimit     = 50
	// maxHierarchyRooms bounds one walk: a request never looks at more
	// rooms than this (shown or hidden), however the space is built.
	maxHierarchyRooms = 1000
)

func (h *roomHandlers) hierarchy(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	q := r.URL.Query()
	hr := HierarchyRequest{MaxDepth: -1, From: q.Get("from")}
	if v := q.Get("max_depth"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return mxhttp.InvalidParam("max_depth must be a non-negative integer")
		}
		hr.MaxDepth = n
	}
	var err error
	if hr.SuggestedOnly, err = parseBool(q, "suggested_only"); err != nil {
		return err
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return mxhttp.InvalidParam("limit must be a positive integer")
		}
		hr.Limit = n
	}
	resp, err := h.s.Hierarchy(r.Context(), req, r.PathValue("roomId"), hr)
	if err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, 200, resp)
}

// spaceChild is one m.space.child of a room, valid per the spec: its
// content has a non-empty via.
type spaceChild struct {
	roomID    string
	via       []string
	order     string
	suggested bool
	ts        int64
	state     StrippedState
}

// hierarchyToken is where a page ends: how many rooms were returned before,
// with the parameters it was made for (a token is only good for the same
// query, as Synapse enforces).
func hierarchyToken(offset int, hr HierarchyRequest) string {
	return fmt.Sprintf("h%d_%d_%t", offset, hr.MaxDepth, hr.SuggestedOnly)
}

func parseHierarchyToken(tok string, hr HierarchyRequest) (int, error) {
	parts := strings.Split(strings.TrimPrefix(tok, "h"), "_")
	if !strings.HasPrefix(tok, "h") || len(parts) != 3 {
		return 0, mxhttp.InvalidParam("Invalid pagination token")
	}
	n, err := strconv.Atoi(parts[0])
	if err != nil || n < 0 {
		return 0, mxhttp.InvalidParam("Invalid pagination token")
	}
	if parts[1] != strconv.Itoa(hr.MaxDepth) || parts[2] != strconv.FormatBool(hr.SuggestedOnly) {
		return 0, mxhttp.InvalidParam("The pagination token was made for other max_depth or suggested_only values")
	}
	return n, nil
}

// Hierarchy walks the space rooted at roomID as req's user may see it:
// a room is shown if they are joined or invited, or anyone may read or
// join (or knock on) it, or its join rule is restricted to rooms they are
// in. A hidden room is not walked into; a hidden root is 403.
func (s *Service) Hierarchy(ctx context.Context, req *accounts.Requester, roomID string, hr HierarchyRequest) (*HierarchyResponse, error) {
	if !validRoomID(roomID) {
		return nil, mxhttp.InvalidParam("Invalid room id %q", roomID)
	}
	offset := 0
	if hr.From != "" {
		var err error
		if offset, err = parseHierarchyToken(hr.From, hr); err != nil {
			return nil, err
		}
	}
	limit := hr.Limit
	if limit <= 0 {
		limit = defaultHierarchyLimit
	}
	limit = min(limit, maxHierarchyLimit)
	ok, err := s.store.RoomExists(ctx, roomID)
	if err != nil {
		return nil, err
	}
	if ok {
		ok, err = s.roomAccessible(ctx, req.UserID, roomID)
		if err != nil {
			return nil, err
		}
	}
	if !ok {
		return nil, mxhttp.Forbidden("You may not see room %s", roomID)
	}

	type queued struct {
		roomID string
		depth  int
		via    []string
	}
	resp := &HierarchyResponse{Rooms: []HierarchyRoom{}}
	queue := []queued{{roomID, 0, nil}}
	remote := remoteRooms{}
	seen := map[string]bool{roomID: true}
	shown, visited := 0, 0
	for len(queue) > 0 && visited < maxHierarchyRooms {
		cur := queue[0]
		queue = queue[1:]
		visited++
		var remoteRoom *FederationHierarchyRoom
		if cur.roomID != roomID {
			if ok, err := s.store.RoomExists(ctx, cur.roomID); err != nil {
				return nil, err
			} else if !ok {
				// A room this server does not have: its summary and
				// children come from a server named by the via.
				if remoteRoom, err = s.remoteHierarchyRoom(ctx, req.UserID, cur.roomID, cur.via, hr.SuggestedOnly, remote); err != nil {
					return nil, err
				}
				if remoteRoom == nil {
					continue
				}
			} else if ok, err := s.roomAccessible(ctx, req.UserID, cur.roomID); err != nil {
				return nil, err
			} else if !ok {
				continue
			}
		}
		var children []spaceChild
		if remoteRoom != nil {
			children = childrenOf(remoteRoom.ChildrenState, hr.SuggestedOnly)
		} else if children, err = s.spaceChildren(ctx, cur.roomID, hr.SuggestedOnly); err != nil {
			return nil, err
		}
		if shown >= offset {
			if len(resp.Rooms) == limit {
				resp.NextBatch = hierarchyToken(shown, hr)
				break
			}
			var pr PublicRoom
			if remoteRoom != nil {
				pr = remoteRoom.PublicRoom
			} else if pr, err = s.publicRoom(ctx, cur.roomID); err != nil {
				return nil, err
			}
			room := HierarchyRoom{PublicRoom: pr, ChildrenState: make([]StrippedState, 0, len(children))}
			for _, c := range children {
				room.ChildrenState = append(room.ChildrenState, c.state)
			}
			resp.Rooms = append(resp.Rooms, room)
		}
		shown++
		if hr.MaxDepth >= 0 && cur.depth >= hr.MaxDepth {
			continue
		}
		for _, c := range children {
			if !seen[c.roomID] {
				seen[c.roomID] = true
				queue = append(queue, queued{c.roomID, cur.depth + 1, c.via})
			}
		}
	}
	return resp, nil
}

// roomAccessible decides whether userID may see roomID in a hierarchy.
func (s *Service) roomAccessible(ctx context.Context, userID, roomID string) (bool, error) {
	m, _, err := s.store.Membership(ctx, roomID, userID)
	if err != nil {
		return false, err
	}
	if m == "join" || m == "invite" {
		return true, nil
	}
	var hv struct {
		HistoryVisibility string `json:"history_visibility"`
	}
	if _, err := s.store.StateContent(ctx, roomID, "m.room.history_visibility", "", &hv); err != nil {
		return false, err
	}
	if hv.HistoryVisibility == "world_readable" {
		return true, nil
	}
	var jr struct {
		JoinRule string `json:"join_rule"`
		Allow    []struct {
			Type   string `json:"type"`
			RoomID string `json:"room_id"`
		} `json:"allow"`
	}
	if _, err := s.store.StateContent(ctx, roomID, "m.room.join_rules", "", &jr); err != nil {
		return false, err
	}
	switch jr.JoinRule {
	case "public", "knock":
		return true, nil
	case "restricted", "knock_restricted":
		for _, a := range jr.Allow {
			if a.Type != "m.room_membership" || a.RoomID == "" {
				continue
			}
			m, _, err := s.store.Membership(ctx, a.RoomID, userID)
			if err != nil {
				return false, err
			}
			if m == "join" {
				return true, nil
			}
		}
	}
	return false, nil
}

// spaceChildren lists a room's valid m.space.child entries in the spec's
// order: by their order key (absent last), then by the event's
// origin_server_ts, then by room id.
func (s *Service) spaceChildren(ctx context.Context, roomID string, suggestedOnly bool) ([]spaceChild, error) {
	rows, err := s.store.db.Reader().QueryContext(ctx, `SELECT `+eventColumns+` FROM current_state cs
		JOIN events e ON e.event_id = cs.event_id WHERE cs.room_id = $1 AND cs.type = 'm.space.child'`, roomID)
	if err != nil {
		return nil, fmt.Errorf("load space children of %s: %w", roomID, err)
	}
	evs, err := s.store.scanEvents(ctx, rows)
	if err != nil {
		return nil, fmt.Errorf("load space children of %s: %w", roomID, err)
	}
	var states []StrippedState
	for _, se := range evs {
		ev := se.Event
		if se.RedactedBy != "" || ev.StateKey() == nil {
			continue
		}
		states = append(states, StrippedState{Type: ev.Type(), StateKey: *ev.StateKey(), Content: ev.Content(),
			Sender: ev.Sender(), OriginServerTS: ev.OriginServerTS()})
	}
	return childrenOf(states, suggestedOnly), nil
}

// childrenOf picks the valid m.space.child entries of a room's state (its
// own, or the children_state another server sent) in the spec's order: by
// their order key (absent last), then by the event's origin_server_ts,
// then by room id.
func childrenOf(states []StrippedState, suggestedOnly bool) []spaceChild {
	var out []spaceChild
	for _, st := range states {
		if st.Type != "m.space.child" || !validRoomID(st.StateKey) {
			continue
		}
		var c struct {
			Via       []string `json:"via"`
			Order     any      `json:"order"`
			Suggested bool     `json:"suggested"`
		}
		if json.Unmarshal(st.Content, &c) != nil || len(c.Via) == 0 {
			continue // no via: the child was removed
		}
		if suggestedOnly && !c.Suggested {
			continue
		}
		order, _ := c.Order.(string)
		if !validOrder(order) {
			order = ""
		}
		out = append(out, spaceChild{roomID: st.StateKey, via: c.Via, order: order, suggested: c.Suggested,
			ts: st.OriginServerTS, state: st})
	}
	slices.SortFunc(out, func(a, b spaceChild) int {
		switch {
		case a.order != "" && b.order == "":
			return -1
		case a.order == "" && b.order != "":
			return 1
		case a.order != b.order:
			return strings.Compare(a.order, b.order)
		case a.ts != b.ts:
			if a.ts < b.ts {
				return -1
			}
			return 1
		}
		return strings.Compare(a.roomID, b.roomID)
	})
	return out
}

// validOrder is the spec's rule for m.space.child's order: at most 50
// printable ASCII characters.
func validOrder(o string) bool {
	if o == "" || len(o) > 50 {
		return false
	}
	for i := 0; i < len(o); i++ {
		if o[i] < 0x20 || o[i] > 0x7e {
			return false
		}
	}
	return true
}
