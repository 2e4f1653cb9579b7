package rooms

import (
	"context"
	"fmt"
	"strings"

	"ganglion/internal/federation/serveracl"
)

// FederationHierarchy is the answer of GET /_matrix/federation/v1/hierarchy:
// the room with its m.space.child state, and one level of children.
type FederationHierarchy struct {
	Room                 FederationHierarchyRoom   `json:"room"`
	Children             []FederationHierarchyRoom `json:"children"`
	InaccessibleChildren []string                  `json:"inaccessible_children"`
}

// FederationHierarchyRoom is a room's summary as another server sees it:
// allowed_room_ids lets that server decide, for its own users, whether a
// restricted room is visible to them.
type FederationHierarchyRoom struct {
	PublicRoom
	ChildrenState  []StrippedState `json:"children_state"`
	AllowedRoomIDs []string        `json:"allowed_room_ids,omitempty"`
}

// FederationHierarchy answers another server's hierarchy request for a
// room of this server: nil when the room is unknown here or not accessible
// to origin (the caller answers 404, as the spec says). A child room is
// summarised when it is accessible to origin and listed in
// inaccessible_children otherwise, unknown rooms included (as Synapse
// does: this server cannot speak for rooms it does not have).
func (s *Service) FederationHierarchy(ctx context.Context, origin, roomID string, suggestedOnly bool) (*FederationHierarchy, error) {
	root, ok, err := s.federationRoomSummary(ctx, origin, roomID)
	if err != nil || !ok {
		return nil, err
	}
	children, err := s.spaceChildren(ctx, roomID, suggestedOnly)
	if err != nil {
		return nil, err
	}
	root.ChildrenState = make([]StrippedState, 0, len(children))
	out := &FederationHierarchy{Children: []FederationHierarchyRoom{}, InaccessibleChildren: []string{}}
	for _, c := range children {
		root.ChildrenState = append(root.ChildrenState, c.state)
		room, ok, err := s.federationRoomSummary(ctx, origin, c.roomID)
		if err != nil {
			return nil, err
		}
		if ok {
			out.Children = append(out.Children, room)
		} else {
			out.InaccessibleChildren = append(out.InaccessibleChildren, c.roomID)
		}
		if len(out.Children)+len(out.InaccessibleChildren) >= maxHierarchyRooms {
			break
		}
	}
	out.Room = root
	return out, nil
}

// federationRoomSummary summarises roomID for origin, if it may see it.
func (s *Service) federationRoomSummary(ctx context.Context, origin, roomID string) (FederationHierarchyRoom, bool, error) {
	var room FederationHierarchyRoom
	if !validRoomID(roomID) {
		return room, false, nil
	}
	ok, err := s.store.RoomExists(ctx, roomID)
	if err != nil || !ok {
		return room, false, err
	}
	allowed, ok, err := s.roomAccessibleToServer(ctx, origin, roomID)
	if err != nil || !ok {
		return room, false, err
	}
	pr, err := s.publicRoom(ctx, roomID)
	if err != nil {
		return room, false, err
	}
	// A child's own children are not listed (as in Synapse): the asking
	// server asks for a child space's hierarchy when it walks into it.
	room.PublicRoom, room.AllowedRoomIDs, room.ChildrenState = pr, allowed, []StrippedState{}
	return room, true, nil
}

// roomAccessibleToServer is Synapse's rule for another server
// (_is_local_room_accessible with an origin): the room's server ACL must
// allow it, and then the room is accessible if it is world-readable, or
// public or knockable, or the server has a user joined or invited, or the
// join rule is restricted and the server has a user joined to one of the
// allowed rooms. It also returns the allowed rooms of a restricted room.
func (s *Service) roomAccessibleToServer(ctx context.Context, origin, roomID string) ([]string, bool, error) {
	if aclEv, err := s.store.CurrentStateEvent(ctx, roomID, "m.room.server_acl", ""); err != nil {
		return nil, false, err
	} else if aclEv != nil && !serveracl.Parse(aclEv.Event.Content()).Allows(origin) {
		return nil, false, nil
	}
	var jr struct {
		JoinRule string `json:"join_rule"`
		Allow    []struct {
			Type   string `json:"type"`
			RoomID string `json:"room_id"`
		} `json:"allow"`
	}
	if _, err := s.store.StateContent(ctx, roomID, "m.room.join_rules", "", &jr); err != nil {
		return nil, false, err
	}
	var allowed []string
	if jr.JoinRule == "restricted" || jr.JoinRule == "knock_restricted" {
		for _, a := range jr.Allow {
			if a.Type == "m.room_membership" && validRoomID(a.RoomID) {
				allowed = append(allowed, a.RoomID)
			}
		}
	}
	switch jr.JoinRule {
	case "public", "knock", "knock_restricted":
		return allowed, true, nil
	}
	var hv struct {
		HistoryVisibility string `json:"history_visibility"`
	}
	if _, err := s.store.StateContent(ctx, roomID, "m.room.history_visibility", "", &hv); err != nil {
		return nil, false, err
	}
	if hv.HistoryVisibility == "world_readable" {
		return allowed, true, nil
	}
	joined, invited, err := s.store.serverMembership(ctx, roomID, origin)
	if err != nil {
		return nil, false, err
	}
	if joined || invited {
		return allowed, true, nil
	}
	for _, a := range allowed {
		j, _, err := s.store.serverMembership(ctx, a, origin)
		if err != nil {
			return nil, false, err
		}
		if j {
			return allowed, true, nil
		}
	}
	return nil, false, nil
}

// serverMembership reports whether server has a user currently joined to
// the room, and one currently invited.
func (s *Store) serverMembership(ctx context.Context, roomID, server string) (joined, invited bool, err error) {
	// The LIKE narrows by suffix; the exact domain is checked below.
	rows, err := s.db.Reader().QueryContext(ctx, `SELECT state_key, membership FROM current_state
		WHERE room_id = $1 AND type = 'm.room.member' AND membership IN ('join', 'invite') AND state_key LIKE $2 ESCAPE '\'`,
		roomID, "%:"+escapeLike(server))
	if err != nil {
		return false, false, fmt.Errorf("members of %s in %s: %w", server, roomID, err)
	}
	defer rows.Close()
	for rows.Next() {
		var user, m string
		if err := rows.Scan(&user, &m); err != nil {
			return false, false, fmt.Errorf("members of %s in %s: %w", server, roomID, err)
		}
		if i := strings.IndexByte(user, ':'); i < 0 || user[i+1:] != server {
			continue
		}
		joined = joined || m == "join"
		invited = invited || m == "invite"
	}
	if err := rows.Err(); err != nil {
		return false, false, fmt.Errorf("members of %s in %s: %w", server, roomID, err)
	}
	return joined, invited, nil
}
