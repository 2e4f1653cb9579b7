package rooms

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"ganglion/internal/accounts"
	"ganglion/internal/filters"
	"ganglion/internal/mxhttp"
)

// Routes registers the room endpoints.
func (s *Service) Routes(mux *mxhttp.Mux, srv *mxhttp.Server, acc *accounts.Service, publicRoomsWithoutAuth bool) {
	h := &roomHandlers{s: s}
	a := func(f accounts.AuthedHandler) http.Handler { return srv.Handle(acc.Auth(f)) }
	mux.HandleClient("POST", "/createRoom", a(h.createRoom))
	mux.HandleClient("POST", "/rooms/{roomId}/join", a(h.joinRoomID))
	mux.HandleClient("POST", "/join/{roomIdOrAlias}", a(h.join))
	mux.HandleClient("POST", "/rooms/{roomId}/leave", a(h.membership("leave", false)))
	mux.HandleClient("POST", "/rooms/{roomId}/invite", a(h.membership("invite", true)))
	mux.HandleClient("POST", "/rooms/{roomId}/kick", a(h.membership("kick", true)))
	mux.HandleClient("POST", "/rooms/{roomId}/ban", a(h.membership("ban", true)))
	mux.HandleClient("POST", "/rooms/{roomId}/unban", a(h.unban))
	mux.HandleClient("POST", "/knock/{roomIdOrAlias}", a(h.knock))
	mux.HandleClient("POST", "/rooms/{roomId}/forget", a(h.forget))
	mux.HandleClient("PUT", "/rooms/{roomId}/send/{eventType}/{txnId}", a(h.send))
	mux.HandleClient("PUT", "/rooms/{roomId}/state/{eventType}", a(h.putState))
	mux.HandleClient("PUT", "/rooms/{roomId}/state/{eventType}/{stateKey...}", a(h.putState))
	mux.HandleClient("GET", "/rooms/{roomId}/state", a(h.getAllState))
	mux.HandleClient("GET", "/rooms/{roomId}/state/{eventType}", a(h.getState))
	mux.HandleClient("GET", "/rooms/{roomId}/state/{eventType}/{stateKey...}", a(h.getState))
	mux.HandleClient("PUT", "/rooms/{roomId}/redact/{eventId}/{txnId}", a(h.redact))
	mux.HandleClient("POST", "/rooms/{roomId}/upgrade", a(h.upgrade))
	mux.HandleClient("GET", "/rooms/{roomId}/event/{eventId}", a(h.event))
	mux.HandleClient("GET", "/rooms/{roomId}/members", a(h.members))
	mux.HandleClient("GET", "/rooms/{roomId}/joined_members", a(h.joinedMembers))
	mux.HandleClient("GET", "/joined_rooms", a(h.joinedRooms))
	mux.HandleClient("GET", "/rooms/{roomId}/messages", a(h.messages))
	mux.HandleClient("GET", "/rooms/{roomId}/context/{eventId}", a(h.context))
	mux.HandleClient("GET", "/rooms/{roomId}/aliases", a(h.aliases))
	mux.HandleClient("GET", "/directory/room/{alias}", srv.Handle(h.getAlias))
	mux.HandleClient("PUT", "/directory/room/{alias}", a(h.putAlias))
	mux.HandleClient("DELETE", "/directory/room/{alias}", a(h.deleteAlias))
	mux.HandleClient("GET", "/directory/list/room/{roomId}", srv.Handle(h.getVisibility))
	mux.HandleClient("PUT", "/directory/list/room/{roomId}", a(h.putVisibility))
	if publicRoomsWithoutAuth {
		mux.HandleClient("GET", "/publicRooms", srv.Handle(h.publicRoomsGet))
	} else {
		mux.HandleClient("GET", "/publicRooms", a(func(w http.ResponseWriter, r *http.Request, _ *accounts.Requester) error {
			return h.publicRoomsGet(w, r)
		}))
	}
	mux.HandleClient("POST", "/publicRooms", a(h.publicRoomsPost))
	s.routesV1(mux, a)
	s.summaryRoutes(mux, srv, acc)
}

type roomHandlers struct{ s *Service }

func (h *roomHandlers) createRoom(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	var body CreateRoomRequest
	if err := mxhttp.DecodeJSON(r, &body); err != nil {
		return err
	}
	roomID, err := h.s.CreateRoom(r.Context(), req, body)
	if err != nil {
		return err
	}
	resp := map[string]string{"room_id": roomID}
	if body.RoomAliasName != "" {
		resp["room_alias"] = "#" + body.RoomAliasName + ":" + h.s.cfg.ServerName
	}
	return mxhttp.WriteJSON(w, 200, resp)
}

type reasonBody struct {
	Reason string `json:"reason"`
	UserID string `json:"user_id"`
}

// doJoin joins req's user to roomID. With copyBody the request body's keys
// go into the member event, as Synapse does for /join/{roomIdOrAlias}
// (/rooms/{roomId}/join takes only the reason).
func (h *roomHandlers) doJoin(w http.ResponseWriter, r *http.Request, req *accounts.Requester, roomID string, copyBody bool,
	hint []string) error {
	raw, err := mxhttp.ReadBody(r, mxhttp.DefaultMaxBody)
	if err != nil {
		return err
	}
	var body reasonBody
	if err := mxhttp.DecodeJSONBytes(r, raw, &body); err != nil {
		return err
	}
	ch := MembershipChange{Target: req.UserID, Membership: "join", Reason: body.Reason}
	if copyBody {
		if err := mxhttp.DecodeJSONBytes(r, raw, &ch.Content); err != nil {
			return err
		}
	}
	if _, done, err := h.s.joinOrKnockRemotely(r.Context(), req, roomID, ch, hint); done || err != nil {
		if err != nil {
			return err
		}
		return mxhttp.WriteJSON(w, 200, map[string]string{"room_id": roomID})
	}
	ok, err := h.s.store.RoomExists(r.Context(), roomID)
	if err != nil {
		return err
	}
	if !ok {
		return mxhttp.NotFound("No known servers to join %s via", roomID)
	}
	if _, err := h.s.ChangeMembership(r.Context(), req, roomID, ch); err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, 200, map[string]string{"room_id": roomID})
}

func (h *roomHandlers) joinRoomID(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	roomID := r.PathValue("roomId")
	if !validRoomID(roomID) {
		return mxhttp.InvalidParam("Invalid room id")
	}
	return h.doJoin(w, r, req, roomID, false, viaServers(r.URL.Query()))
}

// resolveTarget resolves /join's and /knock's roomIdOrAlias, with the
// servers to reach the room through when it is not hosted here: the
// client's via and server_name, and a remote alias's servers.
func (h *roomHandlers) resolveTarget(r *http.Request, idOrAlias string) (string, []string, error) {
	hint := viaServers(r.URL.Query())
	if strings.HasPrefix(idOrAlias, "#") {
		_, server, err := splitAlias(idOrAlias)
		if err != nil {
			return "", nil, err
		}
		if server != h.s.cfg.ServerName && h.s.remote != nil {
			roomID, servers, err := h.s.remote.QueryAlias(r.Context(), idOrAlias)
			if err != nil {
				return "", nil, err
			}
			return roomID, append(servers, hint...), nil
		}
		roomID, err := h.s.resolveAliasAsking(r.Context(), idOrAlias)
		if err != nil {
			return "", nil, err
		}
		if roomID == "" {
			return "", nil, mxhttp.NotFound("Room alias %s not found", idOrAlias)
		}
		return roomID, hint, nil
	}
	if !validRoomID(idOrAlias) {
		return "", nil, mxhttp.InvalidParam("%q is not a room id or alias", idOrAlias)
	}
	return idOrAlias, hint, nil
}

func (h *roomHandlers) join(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	roomID, hint, err := h.resolveTarget(r, r.PathValue("roomIdOrAlias"))
	if err != nil {
		return err
	}
	return h.doJoin(w, r, req, roomID, true, hint)
}

func (h *roomHandlers) knock(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	roomID, hint, err := h.resolveTarget(r, r.PathValue("roomIdOrAlias"))
	if err != nil {
		return err
	}
	var body reasonBody
	if err := mxhttp.DecodeJSON(r, &body); err != nil {
		return err
	}
	ch := MembershipChange{Target: req.UserID, Membership: "knock", Reason: body.Reason}
	if _, done, err := h.s.joinOrKnockRemotely(r.Context(), req, roomID, ch, hint); done || err != nil {
		if err != nil {
			return err
		}
		return mxhttp.WriteJSON(w, 200, map[string]string{"room_id": roomID})
	}
	// As for joins: a room this server is not in could only be knocked on
	// over federation.
	if ok, err := h.s.store.RoomExists(r.Context(), roomID); err != nil {
		return err
	} else if !ok {
		return mxhttp.NotFound("No known servers to knock on %s via", roomID)
	}
	if _, err := h.s.ChangeMembership(r.Context(), req, roomID, ch); err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, 200, map[string]string{"room_id": roomID})
}

// membership serves leave/invite/kick/ban (m is the MembershipChange's
// Membership); withTarget says whether the body names the target user
// (otherwise it is the requester).
func (h *roomHandlers) membership(m string, withTarget bool) accounts.AuthedHandler {
	return func(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
		var body struct {
			reasonBody
			IsDirect bool `json:"is_direct"`
		}
		if err := mxhttp.DecodeJSON(r, &body); err != nil {
			return err
		}
		target := req.UserID
		if withTarget {
			if body.UserID == "" {
				return mxhttp.MissingParam("Missing user_id")
			}
			target = body.UserID
		}
		if _, err := h.s.ChangeMembership(r.Context(), req, r.PathValue("roomId"),
			MembershipChange{Target: target, Membership: m, Reason: body.Reason, IsDirect: body.IsDirect}); err != nil {
			return err
		}
		return mxhttp.WriteJSON(w, 200, struct{}{})
	}
}

func (h *roomHandlers) unban(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	var body reasonBody
	if err := mxhttp.DecodeJSON(r, &body); err != nil {
		return err
	}
	if body.UserID == "" {
		return mxhttp.MissingParam("Missing user_id")
	}
	roomID := r.PathValue("roomId")
	m, _, err := h.s.store.Membership(r.Context(), roomID, body.UserID)
	if err != nil {
		return err
	}
	if m != "ban" {
		return mxhttp.Forbidden("User %s is not banned", body.UserID)
	}
	if _, err := h.s.ChangeMembership(r.Context(), req, roomID, MembershipChange{Target: body.UserID, Membership: "leave", Reason: body.Reason}); err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, 200, struct{}{})
}

func (h *roomHandlers) forget(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	if err := h.s.Forget(r.Context(), req, r.PathValue("roomId")); err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, 200, struct{}{})
}

func readContent(r *http.Request) (json.RawMessage, error) {
	body, err := mxhttp.ReadBody(r, MaxEventContent+1024)
	if err != nil {
		var me *mxhttp.Error
		if errors.As(err, &me) && me.Code == "M_TOO_LARGE" {
			return nil, mxhttp.TooLarge("Event content too large")
		}
		return nil, err
	}
	var obj map[string]json.RawMessage
	if err := mxhttp.DecodeJSONBytes(r, body, &obj); err != nil {
		return nil, err
	}
	if len(strings.TrimSpace(string(body))) == 0 {
		return json.RawMessage("{}"), nil
	}
	return json.RawMessage(body), nil
}

func (h *roomHandlers) send(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	content, err := readContent(r)
	if err != nil {
		return err
	}
	id, err := h.s.Send(r.Context(), req, r.PathValue("roomId"), r.PathValue("eventType"), r.PathValue("txnId"), content)
	if err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, 200, map[string]string{"event_id": id})
}

func (h *roomHandlers) putState(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	content, err := readContent(r)
	if err != nil {
		return err
	}
	id, err := h.s.SetState(r.Context(), req, r.PathValue("roomId"), r.PathValue("eventType"), r.PathValue("stateKey"), content)
	if err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, 200, map[string]string{"event_id": id})
}

func (h *roomHandlers) getAllState(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	evs, err := h.s.State(r.Context(), req, r.PathValue("roomId"))
	if err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, 200, evs)
}

func (h *roomHandlers) getState(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	ev, err := h.s.StateEvent(r.Context(), req, r.PathValue("roomId"), r.PathValue("eventType"), r.PathValue("stateKey"))
	if err != nil {
		return err
	}
	if r.URL.Query().Get("format") == "event" {
		return mxhttp.WriteJSON(w, 200, ev)
	}
	return mxhttp.WriteJSON(w, 200, ev.Content)
}

func (h *roomHandlers) redact(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	var body struct {
		Reason string `json:"reason"`
	}
	if err := mxhttp.DecodeJSON(r, &body); err != nil {
		return err
	}
	id, err := h.s.Redact(r.Context(), req, r.PathValue("roomId"), r.PathValue("eventId"), r.PathValue("txnId"), body.Reason)
	if err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, 200, map[string]string{"event_id": id})
}

func (h *roomHandlers) event(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	ev, err := h.s.Event(r.Context(), req, r.PathValue("roomId"), r.PathValue("eventId"))
	if err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, 200, ev)
}

func (h *roomHandlers) members(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	q := r.URL.Query()
	evs, err := h.s.Members(r.Context(), req, r.PathValue("roomId"), MembersQuery{At: q.Get("at"),
		Membership: q.Get("membership"), NotMembership: q.Get("not_membership")})
	if err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, 200, map[string]any{"chunk": evs})
}

func (h *roomHandlers) joinedMembers(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	m, err := h.s.JoinedMembers(r.Context(), req, r.PathValue("roomId"))
	if err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, 200, map[string]any{"joined": m})
}

func (h *roomHandlers) joinedRooms(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	rooms, err := h.s.JoinedRooms(r.Context(), req.UserID)
	if err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, 200, map[string]any{"joined_rooms": rooms})
}

// queryFilter parses a filter given as a query parameter (JSON).
func queryFilter(q url.Values) (*filters.RoomEventFilter, error) {
	raw := q.Get("filter")
	if raw == "" {
		return nil, nil
	}
	f, err := filters.ParseRoomEventFilter([]byte(raw))
	if err != nil {
		return nil, mxhttp.InvalidParam("%v", err)
	}
	return f, nil
}

func queryLimit(q url.Values) (int, error) {
	l := q.Get("limit")
	if l == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(l)
	if err != nil || n < 0 {
		return 0, mxhttp.InvalidParam("limit must be a non-negative integer")
	}
	return n, nil
}

func (h *roomHandlers) messages(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	// Access first: a user who may not read the room gets 403 whatever
	// the query says.
	tl, err := h.s.OpenTimeline(r.Context(), req, r.PathValue("roomId"))
	if err != nil {
		return err
	}
	q := r.URL.Query()
	dir := q.Get("dir")
	if dir != "b" && dir != "f" {
		if dir == "" {
			return mxhttp.MissingParam("Missing dir")
		}
		return mxhttp.InvalidParam("dir must be b or f")
	}
	limit, err := queryLimit(q)
	if err != nil {
		return err
	}
	f, err := queryFilter(q)
	if err != nil {
		return err
	}
	if f != nil && f.Limit != nil && limit == 0 {
		limit = *f.Limit
	}
	resp, err := tl.Messages(r.Context(), MessagesRequest{From: q.Get("from"), To: q.Get("to"),
		Backwards: dir == "b", Limit: limit, Filter: f})
	if err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, 200, resp)
}

func (h *roomHandlers) context(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	tl, err := h.s.OpenTimeline(r.Context(), req, r.PathValue("roomId"))
	if err != nil {
		return err
	}
	q := r.URL.Query()
	limit, err := queryLimit(q)
	if err != nil {
		return err
	}
	f, err := queryFilter(q)
	if err != nil {
		return err
	}
	resp, err := tl.Context(r.Context(), r.PathValue("eventId"), limit, f)
	if err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, 200, resp)
}

func (h *roomHandlers) aliases(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	a, err := h.s.Aliases(r.Context(), req, r.PathValue("roomId"))
	if err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, 200, map[string]any{"aliases": a})
}

func (h *roomHandlers) getAlias(w http.ResponseWriter, r *http.Request) error {
	alias := r.PathValue("alias")
	_, aliasServer, err := splitAlias(alias)
	if err != nil {
		return err
	}
	if aliasServer != h.s.cfg.ServerName && h.s.remoteAliases != nil {
		roomID, servers, err := h.s.remoteAliases.RemoteAlias(r.Context(), alias)
		if err != nil {
			return err
		}
		return mxhttp.WriteJSON(w, 200, map[string]any{"room_id": roomID, "servers": servers})
	}
	roomID, err := h.s.resolveAliasAsking(r.Context(), alias)
	if err != nil {
		return err
	}
	if roomID == "" {
		return mxhttp.NotFound("Room alias %s not found", alias)
	}
	return mxhttp.WriteJSON(w, 200, map[string]any{"room_id": roomID, "servers": []string{h.s.cfg.ServerName}})
}

func (h *roomHandlers) putAlias(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	var body struct {
		RoomID string `json:"room_id"`
	}
	if err := mxhttp.DecodeJSON(r, &body); err != nil {
		return err
	}
	if body.RoomID == "" {
		return mxhttp.MissingParam("Missing room_id")
	}
	if err := h.s.CreateAlias(r.Context(), req, r.PathValue("alias"), body.RoomID); err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, 200, struct{}{})
}

func (h *roomHandlers) deleteAlias(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	if err := h.s.DeleteAlias(r.Context(), req, r.PathValue("alias")); err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, 200, struct{}{})
}

func (h *roomHandlers) getVisibility(w http.ResponseWriter, r *http.Request) error {
	v, err := h.s.DirectoryVisibility(r.Context(), r.PathValue("roomId"))
	if err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, 200, map[string]string{"visibility": v})
}

func (h *roomHandlers) putVisibility(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	var body struct {
		Visibility string `json:"visibility"`
	}
	if err := mxhttp.DecodeJSON(r, &body); err != nil {
		return err
	}
	if err := h.s.SetDirectoryVisibility(r.Context(), req, r.PathValue("roomId"), body.Visibility); err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, 200, struct{}{})
}

func (h *roomHandlers) publicRoomsGet(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	limit, err := queryLimit(q)
	if err != nil {
		return err
	}
	if s := q.Get("server"); s != "" && s != h.s.cfg.ServerName {
		return mxhttp.Forbidden("Querying other servers' directories needs federation")
	}
	page, err := h.s.PublicRooms(r.Context(), limit, q.Get("since"), PublicRoomsFilter{})
	if err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, 200, page)
}

func (h *roomHandlers) publicRoomsPost(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	var body struct {
		Limit              int               `json:"limit"`
		Since              string            `json:"since"`
		Filter             PublicRoomsFilter `json:"filter"`
		IncludeAllNetworks bool              `json:"include_all_networks"`
	}
	if err := mxhttp.DecodeJSON(r, &body); err != nil {
		return err
	}
	if s := r.URL.Query().Get("server"); s != "" && s != h.s.cfg.ServerName {
		return mxhttp.Forbidden("Querying other servers' directories needs federation")
	}
	if body.Limit < 0 {
		return mxhttp.InvalidParam("limit must not be negative")
	}
	page, err := h.s.PublicRooms(r.Context(), body.Limit, body.Since, body.Filter)
	if err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, 200, page)
}
