package inbound

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"

	"ganglion/internal/accounts"
	"ganglion/internal/mxhttp"
	"ganglion/internal/rooms"
)

// Forwarder sends a signed federation PUT (the federation client).
type Forwarder interface {
	SignedPutJSON(ctx context.Context, destination, path string, body, out any) error
}

// WithForwarder lets 3pid/onbind pass exchanges for rooms this server is
// not in to the servers that are (the invite's sender's, the room id's).
func (s *Server) WithForwarder(f Forwarder) *Server {
	s.forward = f
	return s
}

// memberEventDict is the unsigned m.room.member event of
// exchange_third_party_invite's body (and what onbind forwards).
type memberEventDict struct {
	Type     string `json:"type"`
	RoomID   string `json:"room_id"`
	Sender   string `json:"sender"`
	StateKey string `json:"state_key"`
	Content  struct {
		Membership       string `json:"membership"`
		ThirdPartyInvite struct {
			DisplayName string          `json:"display_name,omitempty"`
			Signed      json.RawMessage `json:"signed"`
		} `json:"third_party_invite"`
	} `json:"content"`
}

// PUT /_matrix/federation/v1/exchange_third_party_invite/{roomId}
//
// The invited user's server, told by an identity server that its user
// owns the invited identifier (3pid/onbind), asks the room's server to
// issue the invite. This server builds it in the name of the invite's
// sender, who must be one of its users (the event is signed here), and
// the auth check verifies the identity server's signature.
func (s *Server) exchangeThirdPartyInvite(w http.ResponseWriter, r *http.Request) error {
	from, err := origin(r)
	if err != nil {
		return err
	}
	ctx := r.Context()
	roomID := r.PathValue("roomId")
	var ev memberEventDict
	if err := mxhttp.DecodeJSON(r, &ev); err != nil {
		return err
	}
	if err := s.checkACL(ctx, roomID, from); err != nil {
		return err
	}
	if err := s.validExchange(roomID, &ev); err != nil {
		return err
	}
	if _, srv, _ := accounts.SplitUserID(ev.Sender); srv != s.cfg.ServerName {
		return mxhttp.Forbidden("The invite's sender %s is not a user of this server", ev.Sender)
	}
	_, err = s.rooms.ExchangeThirdPartyInvite(ctx, rooms.ThirdPartyInviteExchange{
		RoomID: roomID, Sender: ev.Sender, Target: ev.StateKey, Signed: ev.Content.ThirdPartyInvite.Signed})
	if errors.Is(err, rooms.ErrNotInRoom) {
		return mxhttp.NotFound("Unknown room %s", roomID)
	}
	if err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, http.StatusOK, map[string]any{})
}

// validExchange checks the shape of an exchanged invite.
func (s *Server) validExchange(roomID string, ev *memberEventDict) error {
	switch {
	case ev.Type != "m.room.member":
		return mxhttp.InvalidParam("The event must be an m.room.member event, not %q", ev.Type)
	case ev.RoomID != roomID:
		return mxhttp.InvalidParam("The event's room_id %q is not the room of the request %q", ev.RoomID, roomID)
	case ev.Content.Membership != "invite":
		return mxhttp.InvalidParam("The event's membership must be invite")
	case len(ev.Content.ThirdPartyInvite.Signed) == 0:
		return mxhttp.InvalidParam("The event has no content.third_party_invite.signed")
	}
	if _, _, ok := accounts.SplitUserID(ev.Sender); !ok {
		return mxhttp.InvalidParam("Invalid sender %q", ev.Sender)
	}
	if _, _, ok := accounts.SplitUserID(ev.StateKey); !ok {
		return mxhttp.InvalidParam("Invalid state_key %q", ev.StateKey)
	}
	return nil
}

// maxOnBindInvites bounds the invites of one 3pid/onbind call.
const maxOnBindInvites = 100

// onBindRequest is 3pid/onbind's body.
type onBindRequest struct {
	Address string `json:"address"`
	Medium  string `json:"medium"`
	MXID    string `json:"mxid"`
	Invites []struct {
		Address string          `json:"address"`
		Medium  string          `json:"medium"`
		MXID    string          `json:"mxid"`
		RoomID  string          `json:"room_id"`
		Sender  string          `json:"sender"`
		Signed  json.RawMessage `json:"signed"`
	} `json:"invites"`
}

// PUT /_matrix/federation/v1/3pid/onbind
//
// An identity server tells the server of mxid that the identifier was
// bound to it, with the third-party invites pending for the identifier.
// Each becomes an invite of mxid: built here when this server is in the
// room, else passed with exchange_third_party_invite to the sender's and
// the room id's servers. One invite failing does not stop the others (as
// in Synapse); the identity server only needs the acknowledgement.
func (s *Server) onBind(w http.ResponseWriter, r *http.Request) error {
	var req onBindRequest
	if err := mxhttp.DecodeJSON(r, &req); err != nil {
		return err
	}
	if req.Address == "" || req.Medium == "" || req.MXID == "" {
		return mxhttp.MissingParam("address, medium and mxid are required")
	}
	if _, srv, ok := accounts.SplitUserID(req.MXID); !ok || srv != s.cfg.ServerName {
		return mxhttp.InvalidParam("%s is not a user of this server", req.MXID)
	}
	// The endpoint is unauthenticated and each invite may cost a request
	// to another server: one call may not make this server send many.
	if len(req.Invites) > maxOnBindInvites {
		return mxhttp.InvalidParam("At most %d invites per bind", maxOnBindInvites)
	}
	ctx := r.Context()
	for _, inv := range req.Invites {
		ev := memberEventDict{Type: "m.room.member", RoomID: inv.RoomID, Sender: inv.Sender, StateKey: req.MXID}
		ev.Content.Membership = "invite"
		ev.Content.ThirdPartyInvite.Signed = inv.Signed
		if err := s.exchangeForBind(ctx, &ev); err != nil {
			s.log.Warn("could not turn a third-party invite into an invite", "room_id", inv.RoomID, "sender", inv.Sender,
				"mxid", req.MXID, "err", err)
		}
	}
	return mxhttp.WriteJSON(w, http.StatusOK, map[string]any{})
}

// exchangeForBind makes one of onbind's invites.
func (s *Server) exchangeForBind(ctx context.Context, ev *memberEventDict) error {
	if err := s.validExchange(ev.RoomID, ev); err != nil {
		return err
	}
	_, err := s.rooms.ExchangeThirdPartyInvite(ctx, rooms.ThirdPartyInviteExchange{
		RoomID: ev.RoomID, Sender: ev.Sender, Target: ev.StateKey, Signed: ev.Content.ThirdPartyInvite.Signed})
	if !errors.Is(err, rooms.ErrNotInRoom) {
		return err
	}
	if s.forward == nil {
		return err
	}
	var dests []string
	for _, id := range []string{ev.Sender, ev.RoomID} {
		if _, srv, ok := splitID(id); ok && srv != s.cfg.ServerName && (len(dests) == 0 || dests[0] != srv) {
			dests = append(dests, srv)
		}
	}
	path := "/_matrix/federation/v1/exchange_third_party_invite/" + url.PathEscape(ev.RoomID)
	var errs []error
	for _, d := range dests {
		var out json.RawMessage
		if err := s.forward.SignedPutJSON(ctx, d, path, ev, &out); err != nil {
			errs = append(errs, fmt.Errorf("exchange with %s: %w", d, err))
			continue
		}
		return nil
	}
	if len(errs) == 0 {
		return err
	}
	return errors.Join(errs...)
}

// splitID splits a user or room id at its first colon.
func splitID(id string) (string, string, bool) {
	for i := 1; i < len(id); i++ {
		if id[i] == ':' {
			return id[:i], id[i+1:], i+1 < len(id)
		}
	}
	return "", "", false
}
