package rooms

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"

	"ganglion/internal/accounts"
	"ganglion/internal/events"
	"ganglion/internal/mxhttp"
)

// CreateRoomRequest is the body of POST /createRoom.
type CreateRoomRequest struct {
	Visibility                string                     `json:"visibility"`
	RoomAliasName             string                     `json:"room_alias_name"`
	Name                      *string                    `json:"name"`
	Topic                     *string                    `json:"topic"`
	Invite                    []string                   `json:"invite"`
	Invite3PID                []json.RawMessage          `json:"invite_3pid"`
	RoomVersion               string                     `json:"room_version"`
	CreationContent           map[string]json.RawMessage `json:"creation_content"`
	InitialState              []InitialStateEvent        `json:"initial_state"`
	Preset                    string                     `json:"preset"`
	IsDirect                  bool                       `json:"is_direct"`
	PowerLevelContentOverride map[string]json.RawMessage `json:"power_level_content_override"`
}

// InitialStateEvent is one entry of createRoom's initial_state.
type InitialStateEvent struct {
	Type     string          `json:"type"`
	StateKey string          `json:"state_key"`
	Content  json.RawMessage `json:"content"`
}

// presetState is what each preset sets (spec: createRoom "preset").
var presets = map[string]struct{ joinRule, history, guest string }{
	"private_chat":         {"invite", "shared", "can_join"},
	"trusted_private_chat": {"invite", "shared", "can_join"},
	"public_chat":          {"public", "shared", "forbidden"},
}

// CreateRoom creates a room; all of its initial events are persisted in one
// batch by the room's persister, so a half-created room never exists.
func (s *Service) CreateRoom(ctx context.Context, req *accounts.Requester, r CreateRoomRequest) (string, error) {
	if err := s.checkMessageRate(req); err != nil {
		return "", err
	}
	if err := s.checkCreateRate(req, len(r.Invite)); err != nil {
		return "", err
	}
	version := r.RoomVersion
	if version == "" {
		version = s.cfg.DefaultRoomVersion
	}
	rv, ok := events.LookupRoomVersion(version)
	if !ok || !events.IsSupportedRoomVersion(version) {
		return "", mxhttp.WithCode(http.StatusBadRequest, "M_UNSUPPORTED_ROOM_VERSION", "Your homeserver does not support room version %q", version)
	}
	switch r.Visibility {
	case "", "private", "public":
	default:
		return "", mxhttp.BadJSON("visibility must be public or private")
	}
	preset := r.Preset
	if preset == "" {
		preset = "private_chat"
		if r.Visibility == "public" {
			preset = "public_chat"
		}
	}
	ps, ok := presets[preset]
	if !ok {
		return "", mxhttp.BadJSON("Unknown preset %q", preset)
	}
	if len(r.Invite3PID) > 0 {
		return "", mxhttp.WithCode(http.StatusBadRequest, "M_UNKNOWN", "invite_3pid needs an identity server, which this server does not use")
	}
	for _, u := range r.Invite {
		if !validUserID(u) {
			return "", mxhttp.InvalidParam("Invalid user id %q in invite", u)
		}
		if _, server, _ := accounts.SplitUserID(u); server != s.cfg.ServerName {
			return "", mxhttp.Forbidden("Inviting users on other servers needs federation, which this server does not run yet")
		}
		exists, err := s.accounts.KnownUser(ctx, u)
		if err != nil {
			return "", err
		}
		if !exists {
			return "", mxhttp.NotFound("Unknown user %s", u)
		}
	}
	var alias string
	if r.RoomAliasName != "" {
		alias = "#" + r.RoomAliasName + ":" + s.cfg.ServerName
		if err := validateAliasLocalpart(r.RoomAliasName); err != nil {
			return "", err
		}
		if len(alias) > maxAliasLength {
			return "", mxhttp.InvalidParam("Room alias %s is longer than %d bytes", alias, maxAliasLength)
		}
		if s.appservices != nil {
			if err := s.appservices.CheckAliasCreation(req, alias); err != nil {
				return "", err
			}
		}
		if existing, err := s.ResolveAlias(ctx, alias); err != nil {
			return "", err
		} else if existing != "" {
			return "", mxhttp.WithCode(http.StatusBadRequest, "M_ROOM_IN_USE", "Room alias %s already taken", alias)
		}
	}
	for _, st := range r.InitialState {
		if st.Type == "" {
			return "", mxhttp.BadJSON("initial_state events need a type")
		}
		if err := checkContent(st.Content); err != nil {
			return "", err
		}
	}

	roomID := "!" + randomID(18) + ":" + s.cfg.ServerName
	creator := req.UserID
	empty := ""
	var drafts []Draft
	add := func(typ string, stateKey *string, content any) {
		drafts = append(drafts, Draft{Type: typ, StateKey: stateKey, Sender: creator, Content: mustJSON(content), DeviceID: req.DeviceID})
	}

	createContent := map[string]json.RawMessage{}
	for k, v := range r.CreationContent {
		createContent[k] = v
	}
	delete(createContent, "creator")
	if !rv.ImplicitRoomCreator {
		createContent["creator"] = mustJSON(creator)
	}
	createContent["room_version"] = mustJSON(rv.ID)
	creators := []string{creator}
	if rv.PrivilegedCreators {
		extra, err := additionalCreators(createContent)
		if err != nil {
			return "", err
		}
		creators = append(creators, extra...)
	}
	createDraft := Draft{Type: "m.room.create", StateKey: &empty, Sender: creator, Content: mustJSON(createContent),
		RoomVersion: rv.ID, DeviceID: req.DeviceID}
	if rv.RoomIDFromCreate {
		var err error
		if roomID, err = s.roomIDFromCreate(&createDraft, rv); err != nil {
			return "", err
		}
	}
	drafts = append(drafts, createDraft)

	member := map[string]any{"membership": "join"}
	if err := s.profileContent(ctx, creator, member); err != nil {
		return "", err
	}
	if r.IsDirect {
		member["is_direct"] = true
	}
	add("m.room.member", &creator, member)

	users := map[string]any{creator: 100}
	if preset == "trusted_private_chat" {
		for _, u := range r.Invite {
			users[u] = 100
		}
	}
	tombstoneLevel := 100
	if rv.PrivilegedCreators {
		// MSC4289: creators' level is infinite and may not be written in
		// the power levels; upgrading defaults to creators only.
		for _, c := range creators {
			delete(users, c)
		}
		tombstoneLevel = 150
	}
	invite := 0
	if preset == "public_chat" {
		invite = 50
	}
	pl := map[string]any{
		"users": users, "users_default": 0, "events_default": 0, "state_default": 50,
		"ban": 50, "kick": 50, "redact": 50, "invite": invite,
		"events": map[string]any{
			"m.room.name": 50, "m.room.power_levels": 100, "m.room.history_visibility": 100,
			"m.room.canonical_alias": 50, "m.room.avatar": 50, "m.room.tombstone": tombstoneLevel,
			"m.room.server_acl": 100, "m.room.encryption": 100,
		},
		"notifications": map[string]any{"room": 50},
	}
	for k, v := range r.PowerLevelContentOverride {
		var x any
		if err := json.Unmarshal(v, &x); err != nil {
			return "", mxhttp.BadJSON("Invalid power_level_content_override")
		}
		pl[k] = x
	}
	if rv.PrivilegedCreators {
		if u, ok := pl["users"].(map[string]any); ok {
			for _, c := range creators {
				if _, listed := u[c]; listed {
					return "", mxhttp.BadJSON("power_level_content_override.users may not list the room creator %s in room version %s", c, rv.ID)
				}
			}
		}
	}
	add("m.room.power_levels", &empty, pl)

	if alias != "" {
		add("m.room.canonical_alias", &empty, map[string]any{"alias": alias})
	}
	initial := map[string]bool{}
	for _, st := range r.InitialState {
		initial[st.Type+"\x00"+st.StateKey] = true
	}
	if !initial["m.room.join_rules\x00"] {
		add("m.room.join_rules", &empty, map[string]any{"join_rule": ps.joinRule})
	}
	if !initial["m.room.history_visibility\x00"] {
		add("m.room.history_visibility", &empty, map[string]any{"history_visibility": ps.history})
	}
	if ps.guest == "can_join" && !initial["m.room.guest_access\x00"] {
		add("m.room.guest_access", &empty, map[string]any{"guest_access": "can_join"})
	}
	for _, st := range r.InitialState {
		switch st.Type {
		case "m.room.create", "m.room.member", "m.room.power_levels":
			// Spec: these are set by the server and would be overridden.
			continue
		}
		sk := st.StateKey
		drafts = append(drafts, Draft{Type: st.Type, StateKey: &sk, Sender: creator, Content: st.Content, DeviceID: req.DeviceID})
	}
	if r.Name != nil {
		add("m.room.name", &empty, map[string]any{"name": *r.Name})
	}
	if r.Topic != nil {
		// The plain topic and its MSC3765 (spec v1.15) rich form: clients
		// that know m.topic read it, older ones read topic.
		add("m.room.topic", &empty, map[string]any{"topic": *r.Topic,
			"m.topic": map[string]any{"m.text": []map[string]string{{"body": *r.Topic, "mimetype": "text/plain"}}}})
	}
	seen := []string{creator}
	for _, u := range r.Invite {
		if slices.Contains(seen, u) {
			continue
		}
		seen = append(seen, u)
		c := map[string]any{"membership": "invite"}
		if err := s.profileContent(ctx, u, c); err != nil {
			return "", err
		}
		if r.IsDirect {
			c["is_direct"] = true
		}
		uu := u
		add("m.room.member", &uu, c)
	}
	if _, err := s.send(ctx, roomID, drafts...); err != nil {
		return "", fmt.Errorf("create room: %w", err)
	}
	if alias != "" {
		if err := s.createAlias(ctx, alias, roomID, creator); err != nil {
			return "", err
		}
	}
	if r.Visibility == "public" {
		if err := s.setPublished(ctx, roomID, true); err != nil {
			return "", err
		}
	}
	s.log.Info("created room", "room_id", roomID, "user_id", creator, "room_version", rv.ID)
	return roomID, nil
}

// additionalCreators validates creation_content.additional_creators (room
// version 12+, MSC4289): an array of user ids, who become creators too.
func additionalCreators(createContent map[string]json.RawMessage) ([]string, error) {
	raw, ok := createContent["additional_creators"]
	if !ok {
		return nil, nil
	}
	var users []string
	if err := json.Unmarshal(raw, &users); err != nil || users == nil {
		return nil, mxhttp.BadJSON("creation_content.additional_creators must be an array of user ids")
	}
	for _, u := range users {
		if !validUserID(u) {
			return nil, mxhttp.BadJSON("creation_content.additional_creators: %q is not a user id", u)
		}
	}
	return users, nil
}

// roomIDFromCreate fixes the timestamp of the create draft of a room
// version whose room id is the create event's hash (MSC4291) and returns
// that id. The room's persister is chosen by room id, so the id must be
// known before sending: it is the hash of the event the persister will
// build from the draft (depth 1, no prev or auth events, this timestamp).
func (s *Service) roomIDFromCreate(d *Draft, rv *events.RoomVersion) (string, error) {
	d.OriginServerTS = s.now().UnixMilli()
	id, err := events.EventIDOf(events.ProtoEvent{Sender: d.Sender, Type: d.Type, StateKey: d.StateKey,
		Content: d.Content, PrevEvents: []string{}, AuthEvents: []string{}, Depth: 1, OriginServerTS: d.OriginServerTS}, rv)
	if err != nil {
		return "", mxhttp.BadJSON("Invalid creation_content: %v", err)
	}
	return "!" + id[1:], nil
}
