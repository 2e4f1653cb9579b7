// Package notices sends server notices, as Synapse's server_notices: a
// system user (server_notices.system_mxid_localpart) writes to each user in
// a room of their own, tagged m.server_notice, which the user cannot leave
// and where they cannot speak. Admins send through
// POST /_synapse/admin/v1/send_server_notice (or PUT with a transaction
// id), served by the main process.
package notices

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"

	"ganglion/internal/accountdata"
	"ganglion/internal/accounts"
	"ganglion/internal/config"
	"ganglion/internal/mxhttp"
	"ganglion/internal/rooms"
	"ganglion/internal/storage"
)

// Tag is the room tag of a notices room.
const Tag = "m.server_notice"

// Service is the server notices domain.
type Service struct {
	db    *storage.DB
	cfg   config.ServerNoticesConfig
	enab  bool
	sysID string
	acc   *accounts.Service
	rooms *rooms.Service
	ad    accountdata.Writer
	log   *slog.Logger
	// mu serialises finding or creating a user's room (only the main
	// process sends notices), so two notices at once make one room.
	mu sync.Mutex
}

var _ rooms.NoticeRooms = (*Service)(nil)

// NewService: cfg may be nil (notices off; the leave guard still answers,
// for rooms made while they were on).
func NewService(db *storage.DB, serverName string, cfg *config.ServerNoticesConfig, acc *accounts.Service, roomSvc *rooms.Service,
	ad accountdata.Writer, log *slog.Logger) *Service {
	s := &Service{db: db, acc: acc, rooms: roomSvc, ad: ad, log: log}
	if cfg != nil && cfg.SystemMXIDLocalpart != "" {
		s.cfg, s.enab = *cfg, true
		s.sysID = "@" + cfg.SystemMXIDLocalpart + ":" + serverName
	}
	return s
}

// IsServerNoticeRoom implements rooms.NoticeRooms.
func (s *Service) IsServerNoticeRoom(ctx context.Context, roomID, userID string) (bool, error) {
	var one int
	err := s.db.Reader().QueryRowContext(ctx, `SELECT 1 FROM server_notices_rooms WHERE user_id = $1 AND room_id = $2`,
		userID, roomID).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("is %s the notices room of %s: %w", roomID, userID, err)
	}
	return true, nil
}

// EnsureSystemUser creates the system user (without a password, so nobody
// can log in as it) and keeps its profile as configured. The main process
// calls it at start, so the name is taken before anyone could register it.
func (s *Service) EnsureSystemUser(ctx context.Context) error {
	if !s.enab {
		return nil
	}
	p, err := s.acc.GetProfile(ctx, s.sysID)
	if err != nil {
		return err
	}
	if p == nil {
		_, err := s.acc.Register(ctx, accounts.NewUser{Localpart: s.cfg.SystemMXIDLocalpart, DisplayName: s.cfg.SystemMXIDDisplayName,
			InhibitLogin: true})
		var me *mxhttp.Error
		if err != nil && !(errors.As(err, &me) && me.Code == "M_USER_IN_USE") {
			return fmt.Errorf("create the server notices user %s: %w", s.sysID, err)
		}
		if p, err = s.acc.GetProfile(ctx, s.sysID); err != nil || p == nil {
			return fmt.Errorf("load the server notices user %s: %w", s.sysID, err)
		}
	}
	if want := s.cfg.SystemMXIDDisplayName; want != "" && (p.DisplayName == nil || *p.DisplayName != want) {
		if err := s.acc.SetProfileField(ctx, s.sysID, "displayname", &want); err != nil {
			return err
		}
	}
	if want := s.cfg.SystemMXIDAvatarURL; want != "" && (p.AvatarURL == nil || *p.AvatarURL != want) {
		if err := s.acc.SetProfileField(ctx, s.sysID, "avatar_url", &want); err != nil {
			return err
		}
	}
	return nil
}

func (s *Service) system() *accounts.Requester {
	return &accounts.Requester{UserID: s.sysID, RateLimitExempt: true}
}

// roomFor returns userID's notices room, making one when they have none
// they are joined or invited to (a room they were removed from by an admin
// is replaced, as Synapse does).
func (s *Service) roomFor(ctx context.Context, userID string) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var roomID string
	err := s.db.Reader().QueryRowContext(ctx, `SELECT room_id FROM server_notices_rooms WHERE user_id = $1`, userID).Scan(&roomID)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return "", fmt.Errorf("notices room of %s: %w", userID, err)
	}
	if roomID != "" {
		m, _, err := s.rooms.Store().Membership(ctx, roomID, userID)
		if err != nil {
			return "", err
		}
		if m == "join" || m == "invite" {
			if err := s.updateRoomInfo(ctx, roomID); err != nil {
				return "", err
			}
			return roomID, s.maybeJoin(ctx, roomID, userID, m)
		}
	}
	if err := s.EnsureSystemUser(ctx); err != nil {
		return "", err
	}
	empty := ""
	var initial []rooms.InitialStateEvent
	if s.cfg.RoomAvatarURL != "" {
		initial = append(initial, rooms.InitialStateEvent{Type: "m.room.avatar", StateKey: empty,
			Content: mustJSON(map[string]string{"url": s.cfg.RoomAvatarURL})})
	}
	req := rooms.CreateRoomRequest{
		Preset: "private_chat",
		Invite: []string{userID},
		// The user cannot speak in it: only the system user has a level
		// of at least events_default.
		PowerLevelContentOverride: map[string]json.RawMessage{"users_default": mustJSON(-10)},
		InitialState:              initial,
	}
	name := s.roomName()
	req.Name = &name
	if s.cfg.RoomTopic != "" {
		req.Topic = &s.cfg.RoomTopic
	}
	roomID, err = s.rooms.CreateRoom(ctx, s.system(), req)
	if err != nil {
		return "", fmt.Errorf("create the notices room of %s: %w", userID, err)
	}
	if _, err := s.ad.PutTag(ctx, userID, roomID, Tag, json.RawMessage(`{}`)); err != nil {
		return "", fmt.Errorf("tag the notices room of %s: %w", userID, err)
	}
	// Recorded before the auto-join so the user can never be in a notices
	// room that the leave guard does not know.
	if _, err := s.db.Exec(ctx, `DELETE FROM server_notices_rooms WHERE user_id = $1`, userID); err != nil {
		return "", fmt.Errorf("record the notices room of %s: %w", userID, err)
	}
	if _, err := s.db.Exec(ctx, `INSERT INTO server_notices_rooms (user_id, room_id) VALUES ($1, $2)`, userID, roomID); err != nil {
		return "", fmt.Errorf("record the notices room of %s: %w", userID, err)
	}
	s.log.Info("created server notices room", "user_id", userID, "room_id", roomID)
	return roomID, s.maybeJoin(ctx, roomID, userID, "invite")
}

// roomName is the notices room's name.
func (s *Service) roomName() string {
	if s.cfg.RoomName != "" {
		return s.cfg.RoomName
	}
	return "Server Notices" // Synapse's default
}

// updateRoomInfo brings an existing notices room's name, topic and avatar
// in line with the config, which may have changed since it was made (as
// Synapse does); and the system user's profile with it.
func (s *Service) updateRoomInfo(ctx context.Context, roomID string) error {
	if err := s.EnsureSystemUser(ctx); err != nil {
		return err
	}
	for _, st := range []struct{ typ, key, want string }{
		{"m.room.name", "name", s.roomName()},
		{"m.room.topic", "topic", s.cfg.RoomTopic},
		{"m.room.avatar", "url", s.cfg.RoomAvatarURL},
	} {
		var cur map[string]any
		if _, err := s.rooms.Store().StateContent(ctx, roomID, st.typ, "", &cur); err != nil {
			return err
		}
		have, _ := cur[st.key].(string)
		if have == st.want || (st.want == "" && cur == nil) {
			continue
		}
		content := map[string]any{st.key: st.want}
		if st.typ == "m.room.topic" && st.want != "" {
			content["m.topic"] = map[string]any{"m.text": []map[string]string{{"body": st.want, "mimetype": "text/plain"}}}
		}
		if _, err := s.rooms.SetState(ctx, s.system(), roomID, st.typ, "", mustJSON(content)); err != nil {
			return fmt.Errorf("update %s of notices room %s: %w", st.typ, roomID, err)
		}
	}
	return nil
}

// maybeJoin joins an invited user with auto_join.
func (s *Service) maybeJoin(ctx context.Context, roomID, userID, membership string) error {
	if !s.cfg.AutoJoin || membership != "invite" {
		return nil
	}
	_, err := s.rooms.ChangeMembership(ctx, &accounts.Requester{UserID: userID, RateLimitExempt: true}, roomID,
		rooms.MembershipChange{Target: userID, Membership: "join"})
	if err != nil {
		return fmt.Errorf("join %s to their notices room: %w", userID, err)
	}
	return nil
}

func mustJSON(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("marshal %T: %v", v, err)) // only our own values
	}
	return b
}

// Routes registers the admin endpoints.
func (s *Service) Routes(mux *mxhttp.Mux, srv *mxhttp.Server, acc *accounts.Service) {
	h := func(withTxn bool) http.Handler {
		return srv.Handle(acc.Auth(func(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
			if !req.Admin {
				return mxhttp.Forbidden("You are not a server admin")
			}
			txnID := ""
			if withTxn {
				txnID = r.PathValue("txnId")
			}
			return s.send(w, r, req, txnID)
		}))
	}
	mux.Handle("POST /_synapse/admin/v1/send_server_notice", h(false))
	mux.Handle("PUT /_synapse/admin/v1/send_server_notice/{txnId}", h(true))
}

// send is send_server_notice: {"user_id", "content", "type" (default
// m.room.message), "state_key" (a state event instead)}.
func (s *Service) send(w http.ResponseWriter, r *http.Request, req *accounts.Requester, txnID string) error {
	var body struct {
		UserID   *string         `json:"user_id"`
		Content  json.RawMessage `json:"content"`
		Type     *string         `json:"type"`
		StateKey *string         `json:"state_key"`
	}
	if err := mxhttp.DecodeJSON(r, &body); err != nil {
		return err
	}
	if !s.enab {
		return mxhttp.WithCode(http.StatusBadRequest, "M_UNKNOWN", "Server notices are not enabled on this server")
	}
	if body.UserID == nil {
		return mxhttp.MissingParam("Missing params: ['user_id']")
	}
	if len(body.Content) == 0 || string(body.Content) == "null" {
		return mxhttp.MissingParam("Missing params: ['content']")
	}
	var obj map[string]json.RawMessage
	if json.Unmarshal(body.Content, &obj) != nil || obj == nil {
		return mxhttp.BadJSON("content must be a JSON object")
	}
	evType := "m.room.message"
	if body.Type != nil {
		if *body.Type == "" {
			return mxhttp.InvalidParam("type must not be empty")
		}
		evType = *body.Type
	}
	ctx := r.Context()
	target := *body.UserID
	local, server, ok := accounts.SplitUserID(target)
	if !ok || local == "" {
		return mxhttp.InvalidParam("Invalid user id %q", target)
	}
	if server != s.acc.ServerName() {
		return mxhttp.WithCode(http.StatusBadRequest, "M_UNKNOWN", "Server notices can only be sent to local users")
	}
	if target == s.sysID {
		return mxhttp.InvalidParam("The server notices user cannot be sent notices")
	}
	exists, err := s.acc.UserExists(ctx, target)
	if err != nil {
		return err
	}
	if !exists {
		return mxhttp.NotFound("User not found")
	}
	roomID, err := s.roomFor(ctx, target)
	if err != nil {
		return err
	}
	var eventID string
	if body.StateKey != nil {
		eventID, err = s.rooms.SetState(ctx, s.system(), roomID, evType, *body.StateKey, body.Content)
	} else {
		// A retried PUT is the same transaction of the same admin's
		// device: the persister answers it with the first event.
		sys := s.system()
		if txnID != "" {
			sys.DeviceID = "admin:" + req.UserID + ":" + req.DeviceID
		}
		eventID, err = s.rooms.Send(ctx, sys, roomID, evType, txnID, body.Content)
	}
	if err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, http.StatusOK, map[string]string{"event_id": eventID})
}
