// Package inbound serves the read-only half of the federation API to
// other servers: single events, the state and auth chain at an event,
// backfill, missing events, profile and directory queries, the public room
// directory, and local users' devices and end-to-end keys. Every
// request is authenticated with X-Matrix (xmatrix.Authenticator); what a
// server may read of a room follows Synapse: a server that never had a
// user in the room, or that the room's server ACL denies, is refused, and
// events its users could not see by history visibility come back
// redacted (rooms.ServerVisibility).
package inbound

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"ganglion/internal/accounts"
	"ganglion/internal/federation/xmatrix"
	"ganglion/internal/mxhttp"
	"ganglion/internal/rooms"
)

// Config is what the endpoints need of the server's configuration.
type Config struct {
	ServerName string
	// AllowProfileLookup is allow_profile_lookup_over_federation.
	AllowProfileLookup bool
	// AllowPublicRooms is allow_public_rooms_over_federation.
	AllowPublicRooms bool
	// AllowDeviceNames is allow_device_name_lookup_over_federation: when
	// false, device display names are left out of user/devices and
	// user/keys/query answers.
	AllowDeviceNames bool
	// Now stamps answers (origin_server_ts); nil means time.Now.
	Now func() time.Time
}

// Profiles reads local users' profiles (accounts.Service).
type Profiles interface {
	GetProfile(ctx context.Context, userID string) (*accounts.Profile, error)
}

// Server serves the endpoints.
type Server struct {
	cfg      Config
	rooms    *rooms.Service
	store    *rooms.Store
	profiles Profiles
	keys     Keys // nil: the device and key endpoints are not mounted
	edus     map[string]EDUHandler
	send     *sendHandler // nil: PUT /send is not mounted
	metrics  *sendMetrics // nil: not counted
	member   *Membership  // nil: the membership handshakes are not mounted
	// forward sends 3pid/onbind's exchanges for rooms this server is not
	// in to the rooms' servers (thirdparty.go); nil: they are dropped.
	forward Forwarder
	log     *slog.Logger
}

// New builds the endpoints over the rooms domain's read side.
func New(cfg Config, roomSvc *rooms.Service, profiles Profiles, log *slog.Logger) *Server {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Server{cfg: cfg, rooms: roomSvc, store: roomSvc.Store(), profiles: profiles, log: log}
}

// Limits of the spec and Synapse.
const (
	maxBackfill          = 100
	defaultMissingEvents = 10
	maxMissingEvents     = 20
)

// Routes mounts the endpoints, each behind auth.
func (s *Server) Routes(mux *mxhttp.Mux, srv *mxhttp.Server, auth *xmatrix.Authenticator) {
	const p = "/_matrix/federation/v1"
	h := func(f mxhttp.HandlerFunc) http.Handler { return srv.Handle(auth.Auth(f)) }
	mux.Handle("GET "+p+"/event/{eventId}", h(s.getEvent))
	mux.Handle("GET "+p+"/state/{roomId}", h(s.getState))
	mux.Handle("GET "+p+"/state_ids/{roomId}", h(s.getStateIDs))
	mux.Handle("GET "+p+"/event_auth/{roomId}/{eventId}", h(s.getEventAuth))
	mux.Handle("GET "+p+"/backfill/{roomId}", h(s.getBackfill))
	mux.Handle("POST "+p+"/get_missing_events/{roomId}", h(s.postMissingEvents))
	mux.Handle("GET "+p+"/query/profile", h(s.queryProfile))
	mux.Handle("GET "+p+"/query/directory", h(s.queryDirectory))
	mux.Handle("GET "+p+"/publicRooms", h(s.publicRoomsGet))
	mux.Handle("POST "+p+"/publicRooms", h(s.publicRoomsPost))
	if s.send != nil {
		mux.Handle("PUT "+p+"/send/{txnId}", h(s.putSend))
	}
	if s.member != nil {
		s.membershipRoutes(mux, h)
	}
	mux.Handle("GET "+p+"/hierarchy/{roomId}", h(s.getHierarchy))
	mux.Handle("GET "+p+"/timestamp_to_event/{roomId}", h(s.getTimestampToEvent))
	mux.Handle("PUT "+p+"/exchange_third_party_invite/{roomId}", h(s.exchangeThirdPartyInvite))
	// Called by identity servers, which have no X-Matrix key.
	mux.Handle("PUT "+p+"/3pid/onbind", srv.Handle(s.onBind))
	if s.keys != nil {
		mux.Handle("GET "+p+"/user/devices/{userId}", h(s.userDevices))
		mux.Handle("POST "+p+"/user/keys/query", h(s.userKeysQuery))
		mux.Handle("POST "+p+"/user/keys/claim", h(s.userKeysClaim))
	}
}

// origin is the authenticated origin; the middleware always sets it.
func origin(r *http.Request) (string, error) {
	o, ok := xmatrix.Origin(r.Context())
	if !ok {
		return "", mxhttp.WithCode(http.StatusUnauthorized, "M_UNAUTHORIZED", "Request not authenticated")
	}
	return o, nil
}

// roomAccess checks that the room exists here and that origin may read it
// at all: allowed by the room's server ACL and with a user who is or was
// joined. The visibility it returns decides event by event.
func (s *Server) roomAccess(ctx context.Context, roomID, origin string) (*rooms.ServerVisibility, error) {
	ok, err := s.store.RoomExists(ctx, roomID)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, mxhttp.NotFound("Unknown room %s", roomID)
	}
	if err := s.checkACL(ctx, roomID, origin); err != nil {
		return nil, err
	}
	vis, err := s.rooms.ServerVisibilityFor(ctx, roomID, origin)
	if err != nil {
		return nil, err
	}
	if !vis.EverJoined() {
		return nil, mxhttp.Forbidden("Host %s is not in room %s", origin, roomID)
	}
	return vis, nil
}

// pdu is the event as served over federation: the stored signed PDU,
// redacted when it was redacted or when the requesting server may not see
// it. Redaction keeps the signatures and hashes, so the receiver can still
// check the event.
func pdu(se *rooms.StoredEvent, visible bool) (json.RawMessage, error) {
	ev := se.Event
	if se.RedactedBy != "" || !visible {
		red, err := ev.Redact()
		if err != nil {
			// Never fall back to the full event: it may be one the server
			// must not see.
			return nil, fmt.Errorf("redact %s for federation: %w", ev.EventID(), err)
		}
		ev = red
	}
	return ev.JSON(), nil
}

// pdus is pdu over a list, with vis deciding visibility (nil: all visible).
func pdus(evs []*rooms.StoredEvent, vis *rooms.ServerVisibility) ([]json.RawMessage, error) {
	out := make([]json.RawMessage, 0, len(evs))
	for _, se := range evs {
		p, err := pdu(se, vis == nil || vis.CanSee(se))
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

// transaction is the shape of /event and /backfill answers.
type transaction struct {
	Origin         string            `json:"origin"`
	OriginServerTS int64             `json:"origin_server_ts"`
	PDUs           []json.RawMessage `json:"pdus"`
}

func (s *Server) transaction(p []json.RawMessage) transaction {
	return transaction{Origin: s.cfg.ServerName, OriginServerTS: s.cfg.Now().UnixMilli(), PDUs: p}
}

// GET /_matrix/federation/v1/event/{eventId}
func (s *Server) getEvent(w http.ResponseWriter, r *http.Request) error {
	from, err := origin(r)
	if err != nil {
		return err
	}
	ctx := r.Context()
	eventID := r.PathValue("eventId")
	se, err := s.store.Event(ctx, eventID)
	if err != nil {
		return err
	}
	if se == nil {
		return mxhttp.NotFound("Unknown event %s", eventID)
	}
	vis, err := s.roomAccess(ctx, se.Event.RoomID(), from)
	if err != nil {
		return err
	}
	p, err := pdu(se, vis.CanSee(se))
	if err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, http.StatusOK, s.transaction([]json.RawMessage{p}))
}

// eventInRoom loads the event named by the request (the event_id query
// parameter, or the {eventId} path segment) and checks it belongs to the
// room: 404 otherwise, as for an unknown event.
func (s *Server) eventInRoom(ctx context.Context, roomID, eventID string) (*rooms.StoredEvent, error) {
	se, err := s.store.Event(ctx, eventID)
	if err != nil {
		return nil, err
	}
	if se == nil || se.Event.RoomID() != roomID {
		return nil, mxhttp.NotFound("Unknown event %s in room %s", eventID, roomID)
	}
	return se, nil
}

// stateBefore returns the room's state before the event and that state's
// auth chain: what /state and /state_ids answer.
func (s *Server) stateBefore(r *http.Request) (state, chain []*rooms.StoredEvent, err error) {
	from, err := origin(r)
	if err != nil {
		return nil, nil, err
	}
	ctx := r.Context()
	roomID := r.PathValue("roomId")
	eventID := r.URL.Query().Get("event_id")
	if eventID == "" {
		return nil, nil, mxhttp.MissingParam("Missing event_id")
	}
	if _, err := s.roomAccess(ctx, roomID, from); err != nil {
		return nil, nil, err
	}
	se, err := s.eventInRoom(ctx, roomID, eventID)
	if err != nil {
		return nil, nil, err
	}
	return s.stateAndChainBefore(ctx, se)
}

// stateAndChainBefore is the room's state before the event and that
// state's auth chain.
func (s *Server) stateAndChainBefore(ctx context.Context, se *rooms.StoredEvent) (state, chain []*rooms.StoredEvent, err error) {
	roomID := se.Event.RoomID()
	// The state at an event is the state before it.
	state, err = s.store.StateBeforeEvent(ctx, se.Event.EventID())
	if err != nil {
		return nil, nil, err
	}
	var roots []string
	for _, st := range state {
		roots = append(roots, st.Event.AuthEventIDs()...)
	}
	chain, err = s.authChain(ctx, roomID, roots)
	if err != nil {
		return nil, nil, err
	}
	return state, chain, nil
}

// GET /_matrix/federation/v1/state/{roomId}?event_id=
func (s *Server) getState(w http.ResponseWriter, r *http.Request) error {
	state, chain, err := s.stateBefore(r)
	if err != nil {
		return err
	}
	sp, err := pdus(state, nil)
	if err != nil {
		return err
	}
	cp, err := pdus(chain, nil)
	if err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, http.StatusOK, map[string]any{"pdus": sp, "auth_chain": cp})
}

// GET /_matrix/federation/v1/state_ids/{roomId}?event_id=
func (s *Server) getStateIDs(w http.ResponseWriter, r *http.Request) error {
	state, chain, err := s.stateBefore(r)
	if err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, http.StatusOK, map[string]any{"pdu_ids": ids(state), "auth_chain_ids": ids(chain)})
}

func ids(evs []*rooms.StoredEvent) []string {
	out := make([]string, 0, len(evs))
	for _, se := range evs {
		out = append(out, se.Event.EventID())
	}
	return out
}

// GET /_matrix/federation/v1/event_auth/{roomId}/{eventId}
func (s *Server) getEventAuth(w http.ResponseWriter, r *http.Request) error {
	from, err := origin(r)
	if err != nil {
		return err
	}
	ctx := r.Context()
	roomID := r.PathValue("roomId")
	if _, err := s.roomAccess(ctx, roomID, from); err != nil {
		return err
	}
	se, err := s.eventInRoom(ctx, roomID, r.PathValue("eventId"))
	if err != nil {
		return err
	}
	chain, err := s.authChain(ctx, roomID, se.Event.AuthEventIDs())
	if err != nil {
		return err
	}
	cp, err := pdus(chain, nil)
	if err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, http.StatusOK, map[string]any{"auth_chain": cp})
}
