package rooms

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"ganglion/internal/mxhttp"
)

// ThirdPartyInviteExchange is an identity server's proof that a Matrix
// user owns the third-party identifier (an email address, a phone number)
// an m.room.third_party_invite invited: Signed is the identity server's
// signed {mxid, token, signatures} object (spec: "Third-party invites").
type ThirdPartyInviteExchange struct {
	RoomID string
	// Sender is the user who sent the m.room.third_party_invite; the
	// m.room.member invite is sent in their name.
	Sender string
	// Target is the Matrix user the identifier belongs to (signed.mxid).
	Target string
	Signed json.RawMessage
}

// ErrNotInRoom is returned by ExchangeThirdPartyInvite when this server has
// no joined user in the room: it cannot build an event there.
var ErrNotInRoom = errors.New("this server is not in the room")

// ExchangeThirdPartyInvite turns a third-party invite into the invite of
// x.Target: the m.room.member event with content.third_party_invite
// (display_name copied from the m.room.third_party_invite, as Synapse
// does, and the signed proof), sent through the room's persister like any
// local event. The persister's auth check verifies the proof against the
// invite's public keys (eventauth: the identity server's signature, the
// token's m.room.third_party_invite and its sender); a bad proof is 403.
// Only a server with a joined user can build the event; the caller
// forwards the exchange elsewhere on ErrNotInRoom.
func (s *Service) ExchangeThirdPartyInvite(ctx context.Context, x ThirdPartyInviteExchange) (string, error) {
	if !validRoomID(x.RoomID) {
		return "", mxhttp.InvalidParam("Invalid room id %q", x.RoomID)
	}
	var signed struct {
		MXID  string `json:"mxid"`
		Token string `json:"token"`
	}
	if json.Unmarshal(x.Signed, &signed) != nil || signed.MXID == "" || signed.Token == "" {
		return "", mxhttp.InvalidParam("third_party_invite.signed needs mxid and token")
	}
	if signed.MXID != x.Target {
		return "", mxhttp.InvalidParam("third_party_invite.signed.mxid %q is not the invited user %q", signed.MXID, x.Target)
	}
	ok, err := s.store.RoomExists(ctx, x.RoomID)
	if err != nil {
		return "", err
	}
	if !ok {
		return "", fmt.Errorf("exchange a third-party invite in %s: %w", x.RoomID, ErrNotInRoom)
	}
	joined, _, err := s.store.serverMembership(ctx, x.RoomID, s.cfg.ServerName)
	if err != nil {
		return "", err
	}
	if !joined {
		return "", fmt.Errorf("exchange a third-party invite in %s: %w", x.RoomID, ErrNotInRoom)
	}
	tpi, err := s.store.CurrentStateEvent(ctx, x.RoomID, "m.room.third_party_invite", signed.Token)
	if err != nil {
		return "", err
	}
	if tpi == nil {
		return "", mxhttp.Forbidden("No third-party invite with token %q in room %s", signed.Token, x.RoomID)
	}
	if tpi.Event.Sender() != x.Sender {
		return "", mxhttp.Forbidden("The third-party invite with token %q was not sent by %s", signed.Token, x.Sender)
	}
	var tc struct {
		DisplayName string `json:"display_name"`
	}
	_ = json.Unmarshal(tpi.Event.Content(), &tc) // a revoked invite has empty content; the auth check refuses it
	content := map[string]any{
		"membership":         "invite",
		"third_party_invite": map[string]any{"display_name": tc.DisplayName, "signed": x.Signed},
	}
	return s.sendOne(ctx, x.RoomID, Draft{Type: "m.room.member", StateKey: &x.Target, Sender: x.Sender, Content: mustJSON(content)})
}
