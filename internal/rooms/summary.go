package rooms

import (
	"context"
	"net/http"

	"ganglion/internal/accounts"
	"ganglion/internal/mxhttp"
)

// The room summary (MSC3266; stable as /v1/room_summary in spec v1.15):
// what a client shows about a room before joining it, for a room id or
// alias. A room is described to people who are in it (joined, invited,
// knocking) and, as in the hierarchy, to anyone when it is public,
// knockable or world-readable, or restricted to a room they are in.
// Authentication is optional, as the MSC allows: an anonymous caller sees
// only the rooms anyone may see.

// RoomSummary is the response.
type RoomSummary struct {
	PublicRoom
	RoomVersion string  `json:"room_version,omitempty"`
	Encryption  *string `json:"encryption,omitempty"`
	Membership  string  `json:"membership,omitempty"`
	// AllowedRoomIDs are the rooms whose members may join a restricted
	// room.
	AllowedRoomIDs []string `json:"allowed_room_ids,omitempty"`
	// The MSC's unstable names of the last two, which clients of the
	// unstable endpoint read.
	UnstableRoomVersion string  `json:"im.nheko.summary.room_version,omitempty"`
	UnstableEncryption  *string `json:"im.nheko.summary.encryption,omitempty"`
}

func (s *Service) summaryRoutes(mux *mxhttp.Mux, srv *mxhttp.Server, acc *accounts.Service) {
	h := srv.Handle(func(w http.ResponseWriter, r *http.Request) error {
		var req *accounts.Requester
		if accounts.TokenFromRequest(r) != "" {
			var err error
			if req, err = acc.AuthenticateRequest(r); err != nil {
				return err
			}
		}
		sum, err := s.Summary(r.Context(), req, r.PathValue("roomIdOrAlias"))
		if err != nil {
			return err
		}
		return mxhttp.WriteJSON(w, http.StatusOK, sum)
	})
	mux.Handle("GET /_matrix/client/unstable/im.nheko.summary/rooms/{roomIdOrAlias}/summary", h)
	// The MSC's later unstable path, which current clients use.
	mux.Handle("GET /_matrix/client/unstable/im.nheko.summary/summary/{roomIdOrAlias}", h)
	mux.Handle("GET /_matrix/client/v1/room_summary/{roomIdOrAlias}", h)
}

var errSummaryNotFound = mxhttp.NotFound("Room not found or is not accessible")

// Summary describes a room to req (nil: anonymous).
func (s *Service) Summary(ctx context.Context, req *accounts.Requester, idOrAlias string) (*RoomSummary, error) {
	roomID := idOrAlias
	if len(idOrAlias) > 0 && idOrAlias[0] == '#' {
		if _, _, err := splitAlias(idOrAlias); err != nil {
			return nil, err
		}
		var err error
		if roomID, err = s.resolveAliasAsking(ctx, idOrAlias); err != nil {
			return nil, err
		}
		if roomID == "" {
			return nil, errSummaryNotFound
		}
	} else if !validRoomID(idOrAlias) {
		return nil, mxhttp.InvalidParam("%q is not a room id or alias", idOrAlias)
	}
	ok, err := s.store.RoomExists(ctx, roomID)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, errSummaryNotFound
	}
	userID := ""
	if req != nil {
		userID = req.UserID
	}
	var membership string
	if userID != "" {
		if membership, _, err = s.store.Membership(ctx, roomID, userID); err != nil {
			return nil, err
		}
	}
	if membership != "join" && membership != "invite" && membership != "knock" {
		// roomAccessible with no user only passes rooms anyone may see.
		visible, err := s.roomAccessible(ctx, userID, roomID)
		if err != nil {
			return nil, err
		}
		if !visible {
			return nil, errSummaryNotFound
		}
	}
	pr, err := s.publicRoom(ctx, roomID)
	if err != nil {
		return nil, err
	}
	sum := &RoomSummary{PublicRoom: pr, Membership: membership}
	if rv, err := s.store.RoomVersion(ctx, roomID); err != nil {
		return nil, err
	} else if rv != nil {
		sum.RoomVersion = rv.ID
	}
	var enc struct {
		Algorithm string `json:"algorithm"`
	}
	if found, err := s.store.StateContent(ctx, roomID, "m.room.encryption", "", &enc); err != nil {
		return nil, err
	} else if found && enc.Algorithm != "" {
		sum.Encryption = &enc.Algorithm
	}
	if pr.JoinRule == "restricted" || pr.JoinRule == "knock_restricted" {
		var jr struct {
			Allow []struct {
				Type   string `json:"type"`
				RoomID string `json:"room_id"`
			} `json:"allow"`
		}
		if _, err := s.store.StateContent(ctx, roomID, "m.room.join_rules", "", &jr); err != nil {
			return nil, err
		}
		for _, a := range jr.Allow {
			if a.Type == "m.room_membership" && a.RoomID != "" {
				sum.AllowedRoomIDs = append(sum.AllowedRoomIDs, a.RoomID)
			}
		}
	}
	sum.UnstableRoomVersion, sum.UnstableEncryption = sum.RoomVersion, sum.Encryption
	if sum.Membership == "" && userID != "" {
		sum.Membership = "leave"
	}
	return sum, nil
}
