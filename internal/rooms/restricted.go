package rooms

import (
	"context"
	"sort"

	"ganglion/internal/accounts"
	"ganglion/internal/mxhttp"
)

// joinRules is the content of m.room.join_rules as restricted joins read it.
type joinRules struct {
	JoinRule string `json:"join_rule"`
	Allow    []struct {
		Type   string `json:"type"`
		RoomID string `json:"room_id"`
	} `json:"allow"`
}

// authoriseRestrictedJoin prepares a local user's join to a room whose
// join rule is restricted or knock_restricted (spec: "Restricted rooms"):
// unless they are already joined or invited, they must be joined to one
// of the rooms the allow list names, and a joined member of this server
// who may invite vouches for the join in join_authorised_via_users_server,
// which the auth rules check. content is the member event's content.
// A room whose version does not know the rule is left to the auth rules,
// which refuse the join.
func (s *Service) authoriseRestrictedJoin(ctx context.Context, roomID, userID string, content map[string]any) error {
	var jr joinRules
	found, err := s.store.StateContent(ctx, roomID, "m.room.join_rules", "", &jr)
	if err != nil || !found || (jr.JoinRule != "restricted" && jr.JoinRule != "knock_restricted") {
		return err
	}
	m, _, err := s.store.Membership(ctx, roomID, userID)
	if err != nil {
		return err
	}
	if m == "join" || m == "invite" {
		return nil
	}
	allowed := false
	for _, a := range jr.Allow {
		if a.Type != "m.room_membership" || !validRoomID(a.RoomID) {
			continue
		}
		am, _, err := s.store.Membership(ctx, a.RoomID, userID)
		if err != nil {
			return err
		}
		if am == "join" {
			allowed = true
			break
		}
	}
	if !allowed {
		if jr.JoinRule == "knock_restricted" {
			return mxhttp.Forbidden("You do not belong to any of the rooms this room allows to join; you may knock on it")
		}
		return mxhttp.Forbidden("You do not belong to any of the required rooms or spaces to join this room")
	}
	pl, err := s.powerLevels(ctx, roomID)
	if err != nil {
		return err
	}
	members, err := s.store.JoinedMembers(ctx, roomID)
	if err != nil {
		return err
	}
	// The highest-powered local member who may invite, as Synapse picks;
	// ties go to the smallest user id so the choice is stable.
	sort.Strings(members)
	best, bestLevel := "", int64(0)
	for _, u := range members {
		if _, server, _ := accounts.SplitUserID(u); server != s.cfg.ServerName {
			continue
		}
		lvl := pl.UserLevel(u)
		if lvl < pl.Invite {
			continue
		}
		if best == "" || lvl > bestLevel {
			best, bestLevel = u, lvl
		}
	}
	if best == "" {
		// Synapse's errcode for a resident server that cannot vouch.
		return mxhttp.WithCode(400, "M_UNABLE_TO_GRANT_JOIN", "No member of this server in the room may invite, so none can authorise the join")
	}
	content["join_authorised_via_users_server"] = best
	return nil
}
