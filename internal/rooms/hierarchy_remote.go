package rooms

import (
	"context"
	"slices"
)

// RemoteHierarchy asks another server for a room's hierarchy: GET
// /_matrix/federation/v1/hierarchy/{roomId} over the federation client.
type RemoteHierarchy interface {
	FederationHierarchy(ctx context.Context, server, roomID string, suggestedOnly bool) (*FederationHierarchy, error)
}

// SetRemoteHierarchy lets the client /hierarchy include children this
// server does not have, asking the servers their m.space.child via names.
// Without it such children are skipped.
func (s *Service) SetRemoteHierarchy(r RemoteHierarchy) { s.remoteHierarchy = r }

// maxHierarchyVia bounds the servers asked about one room.
const maxHierarchyVia = 3

// remoteRooms holds, for one walk, what other servers said: a room's
// summary (from its own answer, or from its parent's children), or nil
// for a room no server would describe. A room is asked about once.
type remoteRooms map[string]*FederationHierarchyRoom

// remoteHierarchyRoom describes a room this server does not have, as
// userID may see it (nil when it may not, or nobody answered). A summary
// cached from the parent's answer is used as it is unless the room is a
// space, whose children need its own answer (as Synapse does).
func (s *Service) remoteHierarchyRoom(ctx context.Context, userID, roomID string, via []string, suggestedOnly bool,
	cache remoteRooms) (*FederationHierarchyRoom, error) {
	if s.remoteHierarchy == nil {
		return nil, nil
	}
	room, known := cache[roomID]
	if !known || (room != nil && room.RoomType != nil && *room.RoomType == "m.space" && room.ChildrenState == nil) {
		room = s.askRemoteHierarchy(ctx, roomID, via, suggestedOnly, cache)
	}
	if room == nil || room.RoomID != roomID {
		return nil, nil
	}
	ok, err := s.remoteRoomAccessible(ctx, userID, room)
	if err != nil || !ok {
		return nil, err
	}
	return room, nil
}

// askRemoteHierarchy asks the via servers in turn; the first answer is
// cached with the children it describes. Failures are logged, not
// returned: a room nobody answers for is left out of the hierarchy.
func (s *Service) askRemoteHierarchy(ctx context.Context, roomID string, via []string, suggestedOnly bool, cache remoteRooms) *FederationHierarchyRoom {
	cache[roomID] = nil
	asked := 0
	for _, server := range via {
		if server == s.cfg.ServerName || asked == maxHierarchyVia {
			continue
		}
		asked++
		fh, err := s.remoteHierarchy.FederationHierarchy(ctx, server, roomID, suggestedOnly)
		if err != nil {
			s.log.Info("room hierarchy: a via server did not answer", "room_id", roomID, "server", server, "err", err)
			continue
		}
		if fh.Room.RoomID != roomID {
			s.log.Info("room hierarchy: a via server answered for another room", "room_id", roomID, "server", server)
			continue
		}
		for i := range fh.Children {
			c := fh.Children[i]
			if _, ok := cache[c.RoomID]; !ok && validRoomID(c.RoomID) {
				if len(c.ChildrenState) == 0 {
					c.ChildrenState = nil
				}
				cache[c.RoomID] = &c
			}
		}
		for _, id := range fh.InaccessibleChildren {
			if _, ok := cache[id]; !ok {
				cache[id] = nil
			}
		}
		room := fh.Room
		if room.ChildrenState == nil {
			room.ChildrenState = []StrippedState{}
		}
		cache[roomID] = &room
		return &room
	}
	return nil
}

// remoteRoomAccessible is Synapse's _is_remote_room_accessible: anyone
// may see a public, knockable or world-readable room; a restricted one if
// the user is joined to one of its allowed rooms here; any room the user
// is joined or invited to (as far as this server knows).
func (s *Service) remoteRoomAccessible(ctx context.Context, userID string, room *FederationHierarchyRoom) (bool, error) {
	switch room.JoinRule {
	case "", "public", "knock", "knock_restricted":
		// An absent join rule is public, as in Synapse.
		return true, nil
	}
	if room.WorldReadable {
		return true, nil
	}
	if room.JoinRule == "restricted" {
		for _, a := range room.AllowedRoomIDs {
			m, _, err := s.store.Membership(ctx, a, userID)
			if err != nil {
				return false, err
			}
			if m == "join" {
				return true, nil
			}
		}
	}
	m, _, err := s.store.Membership(ctx, room.RoomID, userID)
	if err != nil {
		return false, err
	}
	return slices.Contains([]string{"join", "invite"}, m), nil
}
