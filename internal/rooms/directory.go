package rooms

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"

	"ganglion/internal/accounts"
	"ganglion/internal/mxhttp"
	"ganglion/internal/storage"
)

func validateAliasLocalpart(local string) error {
	if local == "" || strings.ContainsAny(local, ":# \t\n") {
		return mxhttp.WithCode(http.StatusBadRequest, "M_INVALID_PARAM", "Invalid characters in room alias")
	}
	return nil
}

// maxAliasLength is the spec's limit on a whole room alias, sigil and
// server name included.
const maxAliasLength = 255

// splitAlias validates "#local:server".
func splitAlias(alias string) (string, string, error) {
	if len(alias) < 4 || alias[0] != '#' || len(alias) > maxAliasLength {
		return "", "", mxhttp.InvalidParam("Invalid room alias %q", alias)
	}
	i := strings.IndexByte(alias, ':')
	if i < 2 || i == len(alias)-1 {
		return "", "", mxhttp.InvalidParam("Invalid room alias %q", alias)
	}
	return alias[1:i], alias[i+1:], nil
}

// ResolveAlias returns the room an alias points to ("" if none).
func (s *Service) ResolveAlias(ctx context.Context, alias string) (string, error) {
	var roomID string
	err := s.store.db.Reader().QueryRowContext(ctx, `SELECT room_id FROM room_aliases WHERE alias = $1`, alias).Scan(&roomID)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("resolve alias %s: %w", alias, err)
	}
	return roomID, nil
}

// resolveAliasAsking is ResolveAlias, and when the alias is unknown but in
// an application service's namespace, asks the service (which may create
// it) and looks again.
func (s *Service) resolveAliasAsking(ctx context.Context, alias string) (string, error) {
	roomID, err := s.ResolveAlias(ctx, alias)
	if err != nil || roomID != "" || s.appservices == nil {
		return roomID, err
	}
	if !s.appservices.QueryAlias(ctx, alias) {
		return "", nil
	}
	return s.ResolveAlias(ctx, alias)
}

func (s *Service) createAlias(ctx context.Context, alias, roomID, creator string) error {
	_, err := s.store.db.Exec(ctx, `INSERT INTO room_aliases (alias, room_id, creator, created_ts) VALUES ($1, $2, $3, $4)`,
		alias, roomID, creator, s.now().UnixMilli())
	if storage.IsUniqueViolation(err) {
		return mxhttp.WithCode(http.StatusConflict, "M_UNKNOWN", "Room alias %s already exists", alias)
	}
	if err != nil {
		return fmt.Errorf("create alias %s: %w", alias, err)
	}
	return nil
}

// CreateAlias is PUT /directory/room/{alias}.
func (s *Service) CreateAlias(ctx context.Context, req *accounts.Requester, alias, roomID string) error {
	local, server, err := splitAlias(alias)
	if err != nil {
		return err
	}
	if server != s.cfg.ServerName {
		return mxhttp.InvalidParam("Room alias must be on this server")
	}
	if err := validateAliasLocalpart(local); err != nil {
		return err
	}
	if s.appservices != nil {
		if err := s.appservices.CheckAliasCreation(req, alias); err != nil {
			return err
		}
	}
	if err := s.requireRoom(ctx, roomID); err != nil {
		return err
	}
	// Synapse lets any joined member add an alias (the room's canonical
	// alias is what power levels protect).
	m, _, err := s.store.Membership(ctx, roomID, req.UserID)
	if err != nil {
		return err
	}
	if m != "join" && !req.Admin {
		return errNotInRoom(req.UserID, roomID)
	}
	return s.createAlias(ctx, alias, roomID, req.UserID)
}

// DeleteAlias is DELETE /directory/room/{alias}: allowed to the alias's
// creator, server admins, and users who may change the canonical alias.
func (s *Service) DeleteAlias(ctx context.Context, req *accounts.Requester, alias string) error {
	if _, _, err := splitAlias(alias); err != nil {
		return err
	}
	var roomID, creator string
	err := s.store.db.Reader().QueryRowContext(ctx, `SELECT room_id, creator FROM room_aliases WHERE alias = $1`, alias).Scan(&roomID, &creator)
	if errors.Is(err, sql.ErrNoRows) {
		return mxhttp.NotFound("Room alias %s not found", alias)
	}
	if err != nil {
		return fmt.Errorf("load alias %s: %w", alias, err)
	}
	if creator != req.UserID && !req.Admin {
		pl, err := s.powerLevels(ctx, roomID)
		if err != nil {
			return err
		}
		if pl.UserLevel(req.UserID) < pl.EventLevel("m.room.canonical_alias", true) {
			return mxhttp.Forbidden("You don't have permission to delete the alias")
		}
	}
	if _, err := s.store.db.Exec(ctx, `DELETE FROM room_aliases WHERE alias = $1`, alias); err != nil {
		return fmt.Errorf("delete alias %s: %w", alias, err)
	}
	err = s.dropFromCanonicalAlias(ctx, req, roomID, alias)
	var refused *mxhttp.Error
	if errors.As(err, &refused) && refused.Status < 500 {
		// The alias is gone either way. Someone who may delete it (its
		// creator) but not change the room's canonical alias leaves the
		// event as it was, as with Synapse.
		s.log.Info("could not remove a deleted alias from the canonical alias event", "room_id", roomID,
			"user_id", req.UserID, "err", err)
		return nil
	}
	return err
}

// dropFromCanonicalAlias sends a new m.room.canonical_alias without alias
// when the current one names it, as alias or among alt_aliases: the event
// must not keep advertising an alias that no longer exists. Other keys
// are kept as they are.
func (s *Service) dropFromCanonicalAlias(ctx context.Context, req *accounts.Requester, roomID, alias string) error {
	cur, err := s.store.CurrentStateEvent(ctx, roomID, "m.room.canonical_alias", "")
	if err != nil || cur == nil {
		return err
	}
	var content map[string]json.RawMessage
	if json.Unmarshal(cur.Event.Content(), &content) != nil {
		return nil
	}
	names := func(raw json.RawMessage) bool {
		var name string
		return json.Unmarshal(raw, &name) == nil && name == alias
	}
	changed := false
	if names(content["alias"]) {
		delete(content, "alias")
		changed = true
	}
	var alt []json.RawMessage
	if json.Unmarshal(content["alt_aliases"], &alt) == nil && alt != nil {
		kept := make([]json.RawMessage, 0, len(alt))
		for _, a := range alt {
			if names(a) {
				changed = true
				continue
			}
			kept = append(kept, a)
		}
		if len(kept) == 0 {
			delete(content, "alt_aliases")
		} else {
			content["alt_aliases"] = mustJSON(kept)
		}
	}
	if !changed {
		return nil
	}
	empty := ""
	_, err = s.sendOne(ctx, roomID, Draft{Type: "m.room.canonical_alias", StateKey: &empty, Sender: req.UserID,
		Content: mustJSON(content), DeviceID: req.DeviceID})
	if err != nil {
		return fmt.Errorf("remove %s from the canonical alias of %s: %w", alias, roomID, err)
	}
	return nil
}

// Aliases lists a room's local aliases (GET /rooms/{roomId}/aliases).
func (s *Service) Aliases(ctx context.Context, req *accounts.Requester, roomID string) ([]string, error) {
	if err := s.requireRoom(ctx, roomID); err != nil {
		return nil, err
	}
	if _, _, err := s.readPosition(ctx, req, roomID); err != nil {
		return nil, err
	}
	rows, err := s.store.db.Reader().QueryContext(ctx, `SELECT alias FROM room_aliases WHERE room_id = $1 ORDER BY alias`, roomID)
	if err != nil {
		return nil, fmt.Errorf("aliases of %s: %w", roomID, err)
	}
	return scanStrings(rows)
}

// checkCanonicalAlias enforces the spec's rule that m.room.canonical_alias
// may only name aliases that point to the room (M_BAD_ALIAS otherwise).
func (s *Service) checkCanonicalAlias(ctx context.Context, roomID string, content json.RawMessage) error {
	var c struct {
		Alias      *string  `json:"alias"`
		AltAliases []string `json:"alt_aliases"`
	}
	if err := json.Unmarshal(content, &c); err != nil {
		return mxhttp.BadJSON("Invalid m.room.canonical_alias content")
	}
	all := append([]string{}, c.AltAliases...)
	if c.Alias != nil && *c.Alias != "" {
		all = append(all, *c.Alias)
	}
	for _, a := range all {
		_, server, err := splitAlias(a)
		if err != nil {
			return mxhttp.WithCode(http.StatusBadRequest, "M_INVALID_PARAM", "Invalid alias %q", a)
		}
		if server != s.cfg.ServerName {
			continue // remote aliases need federation to check
		}
		target, err := s.ResolveAlias(ctx, a)
		if err != nil {
			return err
		}
		if target != roomID {
			return mxhttp.WithCode(http.StatusBadRequest, "M_BAD_ALIAS", "Room alias %s does not point to the room", a)
		}
	}
	return nil
}

func (s *Service) setPublished(ctx context.Context, roomID string, public bool) error {
	if _, err := s.store.db.Exec(ctx, `UPDATE rooms SET is_public = $1 WHERE room_id = $2`, public, roomID); err != nil {
		return fmt.Errorf("set directory visibility of %s: %w", roomID, err)
	}
	return nil
}

// DirectoryVisibility is GET /directory/list/room/{roomId}.
func (s *Service) DirectoryVisibility(ctx context.Context, roomID string) (string, error) {
	var public bool
	err := s.store.db.Reader().QueryRowContext(ctx, `SELECT is_public FROM rooms WHERE room_id = $1`, roomID).Scan(&public)
	if errors.Is(err, sql.ErrNoRows) {
		return "", mxhttp.NotFound("Unknown room %s", roomID)
	}
	if err != nil {
		return "", fmt.Errorf("directory visibility of %s: %w", roomID, err)
	}
	if public {
		return "public", nil
	}
	return "private", nil
}

// SetDirectoryVisibility is PUT /directory/list/room/{roomId}: room
// moderators (those who may set the canonical alias) and server admins.
func (s *Service) SetDirectoryVisibility(ctx context.Context, req *accounts.Requester, roomID, visibility string) error {
	if visibility != "public" && visibility != "private" {
		return mxhttp.InvalidParam("visibility must be public or private")
	}
	if err := s.requireRoom(ctx, roomID); err != nil {
		return err
	}
	if !req.Admin {
		m, _, err := s.store.Membership(ctx, roomID, req.UserID)
		if err != nil {
			return err
		}
		if m != "join" {
			return errNotInRoom(req.UserID, roomID)
		}
		pl, err := s.powerLevels(ctx, roomID)
		if err != nil {
			return err
		}
		if pl.UserLevel(req.UserID) < pl.EventLevel("m.room.canonical_alias", true) {
			return mxhttp.Forbidden("You don't have permission to change the room's directory visibility")
		}
	}
	return s.setPublished(ctx, roomID, visibility == "public")
}

// PublicRoom is one publicRooms chunk entry.
type PublicRoom struct {
	RoomID           string  `json:"room_id"`
	Name             *string `json:"name,omitempty"`
	Topic            *string `json:"topic,omitempty"`
	CanonicalAlias   *string `json:"canonical_alias,omitempty"`
	AvatarURL        *string `json:"avatar_url,omitempty"`
	NumJoinedMembers int     `json:"num_joined_members"`
	WorldReadable    bool    `json:"world_readable"`
	GuestCanJoin     bool    `json:"guest_can_join"`
	JoinRule         string  `json:"join_rule,omitempty"`
	RoomType         *string `json:"room_type,omitempty"`
}

// PublicRoomsPage is the publicRooms response.
type PublicRoomsPage struct {
	Chunk     []PublicRoom `json:"chunk"`
	NextBatch string       `json:"next_batch,omitempty"`
	PrevBatch string       `json:"prev_batch,omitempty"`
	Total     int          `json:"total_room_count_estimate"`
}

// PublicRoomsFilter is publicRooms' filter (POST body "filter").
type PublicRoomsFilter struct {
	// GenericSearchTerm matches, case-insensitively, a substring of the
	// name, topic, canonical alias or room id.
	GenericSearchTerm string `json:"generic_search_term"`
	// RoomTypes keeps rooms whose m.room.create type is one of these; a
	// null entry stands for rooms without a type. Empty keeps every room.
	RoomTypes []*string `json:"room_types"`
}

func (f PublicRoomsFilter) keeps(pr PublicRoom) bool {
	if f.GenericSearchTerm != "" && !matchesTerm(pr, strings.ToLower(f.GenericSearchTerm)) {
		return false
	}
	if len(f.RoomTypes) == 0 {
		return true
	}
	for _, t := range f.RoomTypes {
		if (t == nil && pr.RoomType == nil) || (t != nil && pr.RoomType != nil && *t == *pr.RoomType) {
			return true
		}
	}
	return false
}

// PublicRooms lists published rooms, most members first, filtered, paginated
// with offset tokens into the filtered list (a page boundary stays put as
// long as the same filter is passed with the token).
// total_room_count_estimate counts the rooms the filter keeps.
func (s *Service) PublicRooms(ctx context.Context, limit int, since string, filter PublicRoomsFilter) (*PublicRoomsPage, error) {
	offset := 0
	if since != "" {
		n, err := strconv.Atoi(strings.TrimPrefix(since, "o"))
		if err != nil || !strings.HasPrefix(since, "o") || n < 0 {
			return nil, mxhttp.InvalidParam("Invalid since token")
		}
		offset = n
	}
	rows, err := s.store.db.Reader().QueryContext(ctx, `SELECT room_id FROM rooms WHERE is_public = TRUE`)
	if err != nil {
		return nil, fmt.Errorf("list public rooms: %w", err)
	}
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return nil, err
		}
		ids = append(ids, id)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	all := make([]PublicRoom, 0, len(ids))
	for _, id := range ids {
		pr, err := s.publicRoom(ctx, id)
		if err != nil {
			return nil, err
		}
		if !filter.keeps(pr) {
			continue
		}
		all = append(all, pr)
	}
	sort.Slice(all, func(i, j int) bool {
		if all[i].NumJoinedMembers != all[j].NumJoinedMembers {
			return all[i].NumJoinedMembers > all[j].NumJoinedMembers
		}
		return all[i].RoomID < all[j].RoomID
	})
	if limit <= 0 || limit > 500 {
		limit = 500
	}
	page := &PublicRoomsPage{Chunk: []PublicRoom{}, Total: len(all)}
	if offset < len(all) {
		end := min(offset+limit, len(all))
		page.Chunk = all[offset:end]
		if end < len(all) {
			page.NextBatch = "o" + strconv.Itoa(end)
		}
	}
	if offset > 0 {
		page.PrevBatch = "o" + strconv.Itoa(max(offset-limit, 0))
	}
	return page, nil
}

func matchesTerm(pr PublicRoom, term string) bool {
	if strings.Contains(strings.ToLower(pr.RoomID), term) {
		return true
	}
	for _, p := range []*string{pr.Name, pr.Topic, pr.CanonicalAlias} {
		if p != nil && strings.Contains(strings.ToLower(*p), term) {
			return true
		}
	}
	return false
}

func (s *Service) publicRoom(ctx context.Context, roomID string) (PublicRoom, error) {
	pr := PublicRoom{RoomID: roomID}
	var name struct {
		Name string `json:"name"`
	}
	var topic struct {
		Topic string `json:"topic"`
	}
	var alias struct {
		Alias string `json:"alias"`
	}
	var avatar struct {
		URL string `json:"url"`
	}
	var hv struct {
		HistoryVisibility string `json:"history_visibility"`
	}
	var ga struct {
		GuestAccess string `json:"guest_access"`
	}
	var jr struct {
		JoinRule string `json:"join_rule"`
	}
	var create struct {
		Type *string `json:"type"`
	}
	for _, x := range []struct {
		typ string
		v   any
	}{{"m.room.name", &name}, {"m.room.topic", &topic}, {"m.room.canonical_alias", &alias}, {"m.room.avatar", &avatar},
		{"m.room.history_visibility", &hv}, {"m.room.guest_access", &ga}, {"m.room.join_rules", &jr}, {"m.room.create", &create}} {
		if _, err := s.store.StateContent(ctx, roomID, x.typ, "", x.v); err != nil {
			return pr, err
		}
	}
	if name.Name != "" {
		pr.Name = &name.Name
	}
	if topic.Topic != "" {
		pr.Topic = &topic.Topic
	}
	if alias.Alias != "" {
		pr.CanonicalAlias = &alias.Alias
	}
	if avatar.URL != "" {
		pr.AvatarURL = &avatar.URL
	}
	pr.WorldReadable = hv.HistoryVisibility == "world_readable"
	pr.GuestCanJoin = ga.GuestAccess == "can_join"
	pr.JoinRule = jr.JoinRule
	pr.RoomType = create.Type
	members, err := s.store.JoinedMembers(ctx, roomID)
	if err != nil {
		return pr, err
	}
	pr.NumJoinedMembers = len(members)
	return pr, nil
}
