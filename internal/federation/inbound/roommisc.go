package inbound

import (
	"context"
	"net/http"

	"ganglion/internal/mxhttp"
	"ganglion/internal/rooms"
)

// checkACL refuses origin when the room's server ACL denies it (403, as
// for every room-scoped federation request).
func (s *Server) checkACL(ctx context.Context, roomID, origin string) error {
	aclEv, err := s.store.CurrentStateEvent(ctx, roomID, "m.room.server_acl", "")
	if err != nil {
		return err
	}
	if aclEv != nil && !parseServerACL(aclEv.Event.Content()).allows(origin) {
		return mxhttp.Forbidden("Server %s is banned from room %s by its server ACL", origin, roomID)
	}
	return nil
}

// GET /_matrix/federation/v1/hierarchy/{roomId}?suggested_only=
//
// The room and its direct children, as the spec's server-server hierarchy
// describes: 404 when the room is unknown or the origin may not see it;
// children it may not see (or this server does not have) are named in
// inaccessible_children.
func (s *Server) getHierarchy(w http.ResponseWriter, r *http.Request) error {
	from, err := origin(r)
	if err != nil {
		return err
	}
	ctx := r.Context()
	roomID := r.PathValue("roomId")
	var suggested bool
	switch v := r.URL.Query().Get("suggested_only"); v {
	case "", "false":
	case "true":
		suggested = true
	default:
		return mxhttp.InvalidParam("suggested_only must be true or false")
	}
	if err := s.checkACL(ctx, roomID, from); err != nil {
		return err
	}
	h, err := s.rooms.FederationHierarchy(ctx, from, roomID, suggested)
	if err != nil {
		return err
	}
	if h == nil {
		return mxhttp.NotFound("Unknown room %s", roomID)
	}
	return mxhttp.WriteJSON(w, http.StatusOK, h)
}

// GET /_matrix/federation/v1/timestamp_to_event/{roomId}?ts=&dir=
//
// The closest event of this server's copy of the room to ts; the origin
// must be allowed into the room (ACL, and a user who was joined), as for
// the other room reads.
func (s *Server) getTimestampToEvent(w http.ResponseWriter, r *http.Request) error {
	from, err := origin(r)
	if err != nil {
		return err
	}
	ctx := r.Context()
	roomID := r.PathValue("roomId")
	if _, err := s.roomAccess(ctx, roomID, from); err != nil {
		return err
	}
	ts, forwards, err := rooms.TimestampQuery(r.URL.Query())
	if err != nil {
		return err
	}
	ev, err := s.rooms.ClosestToTimestampForServer(ctx, roomID, ts, forwards)
	if err != nil {
		return err
	}
	if ev == nil {
		return mxhttp.NotFound("Unable to find event from %d in direction %s", ts, r.URL.Query().Get("dir"))
	}
	return mxhttp.WriteJSON(w, http.StatusOK, ev)
}
