package inbound

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"ganglion/internal/accounts"
	"ganglion/internal/events"
	"ganglion/internal/federation/serverkeys"
	"ganglion/internal/federation/xmatrix"
	"ganglion/internal/mxhttp"
	"ganglion/internal/rooms"
	"ganglion/internal/storage"
)

// Membership is what the membership handshakes (make_join/send_join,
// make_leave/send_leave, make_knock/send_knock, invite) need beyond the
// read side: our signing key (templates are checked by building them; the
// joins we authorise and the invites of our users carry our signature),
// the keys of other servers, the remote-event writer, the database (the
// events we relay to the rest of the room as a resident server) and which
// local users exist.
type Membership struct {
	Key    events.SigningKey
	Keys   serverkeys.VerifyKeyFinder
	Writer rooms.RemoteWriter
	DB     *storage.DB
	Users  Users
}

// Users tells whether a local user exists (accounts.Service).
type Users interface {
	KnownUser(ctx context.Context, userID string) (bool, error)
}

// WithMembership serves the membership handshakes; without it they are not
// mounted.
func (s *Server) WithMembership(m Membership) *Server {
	s.member = &m
	return s
}

// MembershipRoutes mounts only the membership handshakes (Routes mounts
// them too when WithMembership was called): for a process that wires them
// apart from the read side.
func (s *Server) MembershipRoutes(mux *mxhttp.Mux, srv *mxhttp.Server, auth *xmatrix.Authenticator) {
	if s.member != nil {
		s.membershipRoutes(mux, func(f mxhttp.HandlerFunc) http.Handler { return srv.Handle(auth.Auth(f)) })
	}
}

func (s *Server) membershipRoutes(mux *mxhttp.Mux, h func(f mxhttp.HandlerFunc) http.Handler) {
	const v1, v2 = "/_matrix/federation/v1", "/_matrix/federation/v2"
	mux.Handle("GET "+v1+"/make_join/{roomId}/{userId}", h(s.makeMembership("join")))
	mux.Handle("GET "+v1+"/make_leave/{roomId}/{userId}", h(s.makeMembership("leave")))
	mux.Handle("GET "+v1+"/make_knock/{roomId}/{userId}", h(s.makeMembership("knock")))
	mux.Handle("PUT "+v1+"/send_join/{roomId}/{eventId}", h(s.sendMembership("join", true)))
	mux.Handle("PUT "+v2+"/send_join/{roomId}/{eventId}", h(s.sendMembership("join", false)))
	mux.Handle("PUT "+v1+"/send_leave/{roomId}/{eventId}", h(s.sendMembership("leave", true)))
	mux.Handle("PUT "+v2+"/send_leave/{roomId}/{eventId}", h(s.sendMembership("leave", false)))
	mux.Handle("PUT "+v1+"/send_knock/{roomId}/{eventId}", h(s.sendMembership("knock", false)))
	mux.Handle("PUT "+v1+"/invite/{roomId}/{eventId}", h(s.putInviteV1))
	mux.Handle("PUT "+v2+"/invite/{roomId}/{eventId}", h(s.putInvite))
}

// incompatibleVersion is the answer to a server that does not support the
// room's version.
func incompatibleVersion(rv string) error {
	e := mxhttp.WithCode(http.StatusBadRequest, "M_INCOMPATIBLE_ROOM_VERSION",
		"Your homeserver does not support the features required to interact with this room (version %s)", rv)
	e.Extra = map[string]any{"room_version": rv}
	return e
}

// originUser checks that userID is a well-formed user of the requesting
// server: a server only makes membership events for its own users.
func originUser(userID, origin string) error {
	_, server, ok := accounts.SplitUserID(userID)
	if !ok {
		return mxhttp.InvalidParam("Invalid user id %q", userID)
	}
	if server != origin {
		return mxhttp.Forbidden("User %s does not belong to the requesting server %s", userID, origin)
	}
	return nil
}

// residentRoom checks that the room is known here, with a local user in it
// (only then can this server build and vouch for its events), and that its
// server ACL lets origin in. It returns the room's version.
func (s *Server) residentRoom(ctx context.Context, roomID, origin string) (*events.RoomVersion, error) {
	ok, err := s.store.RoomExists(ctx, roomID)
	if err != nil {
		return nil, err
	}
	if ok {
		ok, err = s.rooms.LocalHostInRoom(ctx, roomID)
		if err != nil {
			return nil, err
		}
	}
	if !ok {
		return nil, mxhttp.NotFound("This server is not in room %s", roomID)
	}
	if err := s.checkACL(ctx, roomID, origin); err != nil {
		return nil, err
	}
	return s.store.RoomVersion(ctx, roomID)
}

// template is a built event stripped to what the requesting server fills
// in itself: no hashes, signatures or (v1/v2) event id.
func template(ev *events.Event) (json.RawMessage, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(ev.JSON(), &m); err != nil {
		return nil, fmt.Errorf("template of %s: %w", ev.EventID(), err)
	}
	for _, k := range []string{"hashes", "signatures", "unsigned", "event_id"} {
		delete(m, k)
	}
	// Synapse's templates name the resident server; some servers read it.
	return json.Marshal(m)
}

// GET /_matrix/federation/v1/make_{join,leave,knock}/{roomId}/{userId}?ver=
func (s *Server) makeMembership(membership string) mxhttp.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		from, err := origin(r)
		if err != nil {
			return err
		}
		ctx := r.Context()
		roomID, userID := r.PathValue("roomId"), r.PathValue("userId")
		if err := originUser(userID, from); err != nil {
			return err
		}
		rv, err := s.residentRoom(ctx, roomID, from)
		if err != nil {
			return err
		}
		if membership != "leave" {
			// Without ver the server only supports version 1 (spec); a
			// knock needs a version that has knocks, which ver must name.
			vers := r.URL.Query()["ver"]
			if len(vers) == 0 && membership == "join" {
				vers = []string{"1"}
			}
			if !slices.Contains(vers, rv.ID) {
				return incompatibleVersion(rv.ID)
			}
		}
		content := json.RawMessage(fmt.Sprintf(`{"membership":%q}`, membership))
		if membership == "join" {
			if content, err = s.rooms.RemoteJoinContent(ctx, roomID, userID); err != nil {
				return err
			}
		}
		ev, err := s.rooms.MembershipEvent(ctx, roomID, userID, userID, content, s.member.Key, s.cfg.Now())
		if err != nil {
			return err
		}
		tmpl, err := template(ev)
		if err != nil {
			return err
		}
		return mxhttp.WriteJSON(w, http.StatusOK, map[string]any{"event": tmpl, "room_version": rv.ID})
	}
}

// remoteEvent parses and checks an event another server sent us for a room
// of version rv: the id in the path, the room, a member event of the
// expected membership for a user of origin sent by that user, the content
// hash, and the signatures (after cosign, when set, added ours).
func (s *Server) remoteEvent(ctx context.Context, raw []byte, rv *events.RoomVersion, roomID, eventID, origin, membership string,
	cosign func(*events.Event) (*events.Event, error)) (*events.Event, error) {
	ev, err := events.Parse(raw, rv)
	if err != nil {
		return nil, mxhttp.BadJSON("Invalid event: %v", err)
	}
	if ev.EventID() != eventID {
		return nil, mxhttp.BadJSON("Event id %s does not match the event (%s)", eventID, ev.EventID())
	}
	if ev.RoomID() != roomID {
		return nil, mxhttp.BadJSON("Event is for room %s, not %s", ev.RoomID(), roomID)
	}
	if ev.Type() != "m.room.member" || ev.StateKey() == nil {
		return nil, mxhttp.BadJSON("Not a member event")
	}
	if ev.Membership() != membership {
		return nil, mxhttp.BadJSON("Membership is %q, not %s", ev.Membership(), membership)
	}
	if membership != "invite" {
		if *ev.StateKey() != ev.Sender() {
			return nil, mxhttp.BadJSON("The state key %s is not the sender %s", *ev.StateKey(), ev.Sender())
		}
	}
	if err := originUser(ev.Sender(), origin); err != nil {
		return nil, err
	}
	if err := events.CheckContentHash(ev); err != nil {
		return nil, mxhttp.BadJSON("Content hash mismatch: %v", err)
	}
	if cosign != nil {
		if ev, err = cosign(ev); err != nil {
			return nil, err
		}
	}
	if err := serverkeys.VerifyEventSignatures(ctx, s.member.Keys, ev); err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, mxhttp.Forbidden("Signature check of the event failed: %v", err)
	}
	return ev, nil
}

// sign adds our signature to ev.
func (s *Server) sign(ev *events.Event) (*events.Event, error) {
	signed, err := events.SignEvent(ev.JSON(), ev.Version(), s.cfg.ServerName, s.member.Key)
	if err != nil {
		return nil, fmt.Errorf("sign %s: %w", ev.EventID(), err)
	}
	out, err := events.Parse(signed, ev.Version())
	if err != nil {
		return nil, fmt.Errorf("parse signed %s: %w", ev.EventID(), err)
	}
	return out, nil
}

// authorisedByUs reports whether a join names one of our users as its
// authoriser (restricted rooms): we must sign it, and the auth rules
// check that the user may invite.
func (s *Server) authorisedByUs(ev *events.Event) bool {
	var c struct {
		Via string `json:"join_authorised_via_users_server"`
	}
	if json.Unmarshal(ev.Content(), &c) != nil || c.Via == "" {
		return false
	}
	_, server, _ := accounts.SplitUserID(c.Via)
	return server == s.cfg.ServerName
}

// persist marks ev as one we relay to the room's other servers (before
// persisting it, so that the federation sender sees the mark whenever it
// reads the event) and persists it. A refusal by the auth rules is a 403.
func (s *Server) persist(ctx context.Context, ev *events.Event, origin string) error {
	if _, err := s.member.DB.Exec(ctx, `INSERT INTO federation_relayed_events (event_id, origin) VALUES ($1, $2)
		ON CONFLICT (event_id) DO NOTHING`, ev.EventID(), origin); err != nil {
		return fmt.Errorf("mark %s to relay: %w", ev.EventID(), err)
	}
	return s.persistOne(ctx, ev, rooms.RemoteBatch{PDUs: []rooms.RemotePDU{{Event: ev.JSON()}}})
}

// persistOne persists a batch of the one event ev through the remote-event
// writer. A refusal by the auth rules is a 403.
func (s *Server) persistOne(ctx context.Context, ev *events.Event, batch rooms.RemoteBatch) error {
	res, err := s.member.Writer.PersistRemote(ctx, ev.RoomID(), batch)
	if err != nil {
		return fmt.Errorf("persist %s: %w", ev.EventID(), err)
	}
	if len(res) != 1 {
		return fmt.Errorf("persist %s: %d results for one event", ev.EventID(), len(res))
	}
	switch res[0].Outcome {
	case rooms.RemotePersisted, rooms.RemoteDuplicate:
		return nil
	case rooms.RemoteRejected, rooms.RemoteSoftFailed:
		return mxhttp.Forbidden("The event is not allowed in the room: %s", res[0].Error)
	case rooms.RemoteMissingPrev:
		return &missingPrevError{ids: res[0].Missing}
	}
	return errors.New("persist " + ev.EventID() + ": outcome " + res[0].Outcome + " " + res[0].Error)
}

// PUT /_matrix/federation/{v1,v2}/send_{join,leave,knock}/{roomId}/{eventId}
//
// v1 answers [200, body], as the spec's deprecated endpoints did.
func (s *Server) sendMembership(membership string, v1 bool) mxhttp.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		from, err := origin(r)
		if err != nil {
			return err
		}
		ctx := r.Context()
		roomID, eventID := r.PathValue("roomId"), r.PathValue("eventId")
		rv, err := s.residentRoom(ctx, roomID, from)
		if err != nil {
			return err
		}
		raw, err := mxhttp.ReadBody(r, mxhttp.DefaultMaxBody)
		if err != nil {
			return err
		}
		var cosign func(*events.Event) (*events.Event, error)
		if membership == "join" {
			cosign = func(ev *events.Event) (*events.Event, error) {
				if !s.authorisedByUs(ev) {
					return ev, nil
				}
				return s.sign(ev)
			}
		}
		omit, err := omitMembers(r, membership, v1)
		if err != nil {
			return err
		}
		ev, err := s.remoteEvent(ctx, raw, rv, roomID, eventID, from, membership, cosign)
		if err != nil {
			return err
		}
		var state []*rooms.StoredEvent
		if membership == "join" {
			// The template's prev events must be ours.
			if err = s.checkPrevEvents(ctx, ev); err != nil {
				return err
			}
			// Read before the join lands: the state before it as the
			// room's DAG has it (the resolution of its prev events'
			// states when they fork).
			if state, err = s.store.StateFromPrevEvents(ctx, ev); err != nil {
				return err
			}
		}
		if err := s.persist(ctx, ev, from); err != nil {
			var missing *missingPrevError
			if errors.As(err, &missing) {
				return mxhttp.BadJSON("The event's prev events are unknown here: %v", missing.ids)
			}
			return err
		}
		var body any = struct{}{}
		switch membership {
		case "join":
			if body, err = s.joinAnswer(ctx, ev, state, omit); err != nil {
				return err
			}
		case "knock":
			st, err := s.rooms.StrippedState(ctx, roomID)
			if err != nil {
				return err
			}
			body = map[string]any{"knock_room_state": st}
		}
		if v1 {
			return mxhttp.WriteJSON(w, http.StatusOK, []any{200, body})
		}
		return mxhttp.WriteJSON(w, http.StatusOK, body)
	}
}

// checkPrevEvents refuses a join whose prev events are not events of
// the room stored here (a make_join template's are this server's forward
// extremities): a 400, before anything is persisted.
func (s *Server) checkPrevEvents(ctx context.Context, ev *events.Event) error {
	prev, err := s.store.EventsByID(ctx, ev.PrevEventIDs())
	if err != nil {
		return err
	}
	if len(ev.PrevEventIDs()) == 0 {
		return mxhttp.BadJSON("The event has no prev events")
	}
	for _, id := range ev.PrevEventIDs() {
		if se := prev[id]; se == nil || se.Event.RoomID() != ev.RoomID() {
			return mxhttp.BadJSON("Unknown prev event %s", id)
		}
	}
	return nil
}

// omitMembers reads send_join's omit_members (MSC3706, v2 only).
func omitMembers(r *http.Request, membership string, v1 bool) (bool, error) {
	v := r.URL.Query().Get("omit_members")
	if membership != "join" || v1 || v == "" || v == "false" {
		return false, nil
	}
	if v != "true" {
		return false, mxhttp.InvalidParam("omit_members must be true or false")
	}
	return true, nil
}

// maxHeroes is how many members a nameless room's partial state keeps
// (MSC3943): the ones a client names the room after.
const maxHeroes = 5

// joinAnswer is send_join's answer: the room's state before the join,
// the auth chain of that state and of the join, and the join (with our
// signature when we authorised it). With omit_members (MSC3706) the
// state leaves out m.room.member events (but, in a room with neither a
// name nor a canonical alias, the members it is named after, MSC3943),
// the auth chain leaves out what the state holds, and servers_in_room
// lists the servers with joined members.
func (s *Server) joinAnswer(ctx context.Context, join *events.Event, state []*rooms.StoredEvent, omit bool) (map[string]any, error) {
	var servers []string
	if omit {
		named := false
		for _, se := range state {
			if t := se.Event.Type(); t == "m.room.name" || t == "m.room.canonical_alias" {
				named = true
			}
		}
		var members, kept []*rooms.StoredEvent
		for _, se := range state {
			ev := se.Event
			if ev.Type() != "m.room.member" {
				kept = append(kept, se)
				continue
			}
			if ev.Membership() == "join" {
				if d := serverOf(*ev.StateKey()); d != "" && !slices.Contains(servers, d) {
					servers = append(servers, d)
				}
			}
			if !named && *ev.StateKey() != join.Sender() && (ev.Membership() == "join" || ev.Membership() == "invite") {
				members = append(members, se)
			}
		}
		slices.SortFunc(members, func(a, b *rooms.StoredEvent) int { return cmp.Compare(a.StreamOrdering, b.StreamOrdering) })
		state = append(kept, members[:min(len(members), maxHeroes)]...)
		if !slices.Contains(servers, s.cfg.ServerName) {
			servers = append(servers, s.cfg.ServerName)
		}
		slices.Sort(servers)
	}
	roots := slices.Clone(join.AuthEventIDs())
	inState := map[string]bool{}
	for _, se := range state {
		roots = append(roots, se.Event.AuthEventIDs()...)
		inState[se.Event.EventID()] = true
	}
	chain, err := s.authChain(ctx, join.RoomID(), roots)
	if err != nil {
		return nil, err
	}
	if omit {
		chain = slices.DeleteFunc(chain, func(se *rooms.StoredEvent) bool { return inState[se.Event.EventID()] })
	}
	sp, err := pdus(state, nil)
	if err != nil {
		return nil, err
	}
	cp, err := pdus(chain, nil)
	if err != nil {
		return nil, err
	}
	out := map[string]any{"origin": s.cfg.ServerName, "state": sp, "auth_chain": cp,
		"event": json.RawMessage(join.JSON()), "members_omitted": omit}
	if omit {
		out["servers_in_room"] = servers
	}
	return out, nil
}

// inviteRequest is the body of PUT /v2/invite.
type inviteRequest struct {
	RoomVersion     string            `json:"room_version"`
	Event           json.RawMessage   `json:"event"`
	InviteRoomState []json.RawMessage `json:"invite_room_state"`
}

// PUT /_matrix/federation/v2/invite/{roomId}/{eventId}
//
// Another server invites one of our users: we check and co-sign the
// invite, and keep it so that the user's sync lists it (with the stripped
// state the inviting server sent, in the event's unsigned) even when this
// server knows nothing else of the room.
func (s *Server) putInvite(w http.ResponseWriter, r *http.Request) error {
	from, err := origin(r)
	if err != nil {
		return err
	}
	var req inviteRequest
	if err := mxhttp.DecodeJSON(r, &req); err != nil {
		return err
	}
	rv, ok := events.LookupRoomVersion(req.RoomVersion)
	if !ok {
		return incompatibleVersion(req.RoomVersion)
	}
	signed, err := s.invite(r.Context(), from, r.PathValue("roomId"), r.PathValue("eventId"), rv, req.Event, req.InviteRoomState)
	if err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, http.StatusOK, map[string]any{"event": json.RawMessage(signed.JSON())})
}

// PUT /_matrix/federation/v1/invite/{roomId}/{eventId}
//
// The deprecated form, for room versions 1 and 2 only (the body names no
// version): the body is the event, with the stripped state in its
// unsigned.invite_room_state, and the answer is [200, {"event": …}].
func (s *Server) putInviteV1(w http.ResponseWriter, r *http.Request) error {
	from, err := origin(r)
	if err != nil {
		return err
	}
	ctx := r.Context()
	roomID := r.PathValue("roomId")
	raw, err := mxhttp.ReadBody(r, mxhttp.DefaultMaxBody)
	if err != nil {
		return err
	}
	rv, _ := events.LookupRoomVersion("1")
	known, err := s.store.RoomExists(ctx, roomID)
	if err != nil {
		return err
	}
	if known {
		if rv, err = s.store.RoomVersion(ctx, roomID); err != nil {
			return err
		}
	}
	if rv.ID != "1" && rv.ID != "2" {
		return incompatibleVersion(rv.ID)
	}
	var body struct {
		Unsigned struct {
			InviteRoomState []json.RawMessage `json:"invite_room_state"`
		} `json:"unsigned"`
	}
	if err := json.Unmarshal(raw, &body); err != nil {
		return mxhttp.BadJSON("Invalid event: %v", err)
	}
	signed, err := s.invite(ctx, from, roomID, r.PathValue("eventId"), rv, raw, body.Unsigned.InviteRoomState)
	if err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, http.StatusOK, []any{200, map[string]any{"event": json.RawMessage(signed.JSON())}})
}

// invite checks, co-signs and keeps the invite of a local user that origin
// sent, in a room of version rv.
func (s *Server) invite(ctx context.Context, from, roomID, eventID string, rv *events.RoomVersion, raw json.RawMessage,
	strippedState []json.RawMessage) (*events.Event, error) {
	if len(raw) == 0 {
		return nil, mxhttp.BadJSON("Missing event")
	}
	known, err := s.store.RoomExists(ctx, roomID)
	if err != nil {
		return nil, err
	}
	if known {
		stored, err := s.store.RoomVersion(ctx, roomID)
		if err != nil {
			return nil, err
		}
		if stored.ID != rv.ID {
			return nil, mxhttp.BadJSON("Room %s has version %s here, not %s", roomID, stored.ID, rv.ID)
		}
		if err := s.checkACL(ctx, roomID, from); err != nil {
			return nil, err
		}
	}
	// Our own copy of the stripped state goes into unsigned below; what the
	// sender put there is not signed and not kept.
	ev, err := s.remoteEvent(ctx, raw, rv, roomID, eventID, from, "invite", nil)
	if err != nil {
		return nil, err
	}
	if ev, err = ev.WithUnsigned(nil); err != nil {
		return nil, err
	}
	invitee := *ev.StateKey()
	if _, server, ok := accounts.SplitUserID(invitee); !ok || server != s.cfg.ServerName {
		return nil, mxhttp.BadJSON("The invitee %s is not a user of this server", invitee)
	}
	exists, err := s.member.Users.KnownUser(ctx, invitee)
	if err != nil {
		return nil, err
	}
	if !exists {
		return nil, mxhttp.NotFound("Unknown user %s", invitee)
	}
	signed, err := s.sign(ev)
	if err != nil {
		return nil, err
	}
	if err := s.keepInvite(ctx, signed, strippedState); err != nil {
		return nil, err
	}
	return signed, nil
}

// keepInvite persists a co-signed invite of a local user. In a room this
// server is in, it is a PDU like any other; otherwise it is an out-of-band
// membership (rooms.RemotePDU.OutOfBand) carrying the stripped state in
// unsigned.invite_room_state for sync.
func (s *Server) keepInvite(ctx context.Context, ev *events.Event, strippedState []json.RawMessage) error {
	hosted, err := s.rooms.LocalHostInRoom(ctx, ev.RoomID())
	if err != nil {
		return err
	}
	pdu := rooms.RemotePDU{Event: ev.JSON()}
	if !hosted {
		if strippedState == nil {
			strippedState = []json.RawMessage{}
		}
		u := map[string]json.RawMessage{}
		st, err := json.Marshal(strippedState)
		if err != nil {
			return fmt.Errorf("invite_room_state: %w", err)
		}
		u["invite_room_state"] = st
		ub, err := json.Marshal(u)
		if err != nil {
			return fmt.Errorf("invite unsigned: %w", err)
		}
		withState, err := ev.WithUnsigned(ub)
		if err != nil {
			return mxhttp.BadJSON("Invalid invite_room_state: %v", err)
		}
		pdu = rooms.RemotePDU{Event: withState.JSON(), OutOfBand: true}
	}
	err = s.persistOne(ctx, ev, rooms.RemoteBatch{RoomVersion: ev.Version().ID, PDUs: []rooms.RemotePDU{pdu}})
	var missing *missingPrevError
	if hosted && errors.As(err, &missing) {
		// The inviting server built the invite on events that have not
		// reached us yet: it sends the invite to the room's servers, us
		// among them, and /send fetches what is missing then.
		s.log.Info("invite kept for /send: its prev events are not here yet", "event_id", ev.EventID(), "missing", missing.ids)
		return nil
	}
	return err
}

// missingPrevError is a RemoteMissingPrev outcome.
type missingPrevError struct{ ids []string }

func (e *missingPrevError) Error() string { return fmt.Sprintf("prev events missing: %v", e.ids) }

// serverOf is the server part of a user id ("" when it has none).
func serverOf(userID string) string {
	if i := strings.IndexByte(userID, ':'); i >= 0 {
		return userID[i+1:]
	}
	return ""
}
