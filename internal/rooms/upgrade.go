package rooms

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"ganglion/internal/accounts"
	"ganglion/internal/events"
	"ganglion/internal/mxhttp"
)

// Room upgrades (spec: "Room Upgrades", server behaviour). The new room is
// created in one batch like createRoom's: its create event names the old
// room as predecessor, the state that defines the room is copied, and the
// upgrader's power level is raised for the batch if the copied levels
// would not let them send the rest, then the old levels are put back as
// the batch's last event. Only then is the old room tombstoned, so a
// failure before that leaves the old room as it was.

// upgradeCopiedState is the state the spec says to carry over, plus the
// children of a space (as Synapse does).
var upgradeCopiedState = []string{
	"m.room.server_acl", "m.room.encryption", "m.room.name", "m.room.avatar", "m.room.topic",
	"m.room.guest_access", "m.room.history_visibility", "m.room.join_rules", "m.room.canonical_alias",
}

func (h *roomHandlers) upgrade(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	var body struct {
		NewVersion *string `json:"new_version"`
	}
	if err := mxhttp.DecodeJSON(r, &body); err != nil {
		return err
	}
	if body.NewVersion == nil {
		return mxhttp.MissingParam("Missing new_version")
	}
	newRoom, err := h.s.UpgradeRoom(r.Context(), req, r.PathValue("roomId"), *body.NewVersion)
	if err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, 200, map[string]string{"replacement_room": newRoom})
}

// UpgradeRoom replaces roomID with a new room of version newVersion and
// returns the new room's id.
func (s *Service) UpgradeRoom(ctx context.Context, req *accounts.Requester, roomID, newVersion string) (string, error) {
	if err := s.checkMessageRate(req); err != nil {
		return "", err
	}
	rv, ok := events.LookupRoomVersion(newVersion)
	if !ok || !events.IsSupportedRoomVersion(newVersion) {
		return "", mxhttp.WithCode(http.StatusBadRequest, "M_UNSUPPORTED_ROOM_VERSION", "Your homeserver does not support room version %q", newVersion)
	}
	if err := s.requireRoom(ctx, roomID); err != nil {
		return "", err
	}
	m, _, err := s.store.Membership(ctx, roomID, req.UserID)
	if err != nil {
		return "", err
	}
	if m != "join" {
		return "", errNotInRoom(req.UserID, roomID)
	}
	pl, err := s.powerLevels(ctx, roomID)
	if err != nil {
		return "", err
	}
	if pl.UserLevel(req.UserID) < pl.EventLevel("m.room.tombstone", true) {
		return "", mxhttp.Forbidden("You may not send m.room.tombstone in %s, so you may not upgrade it", roomID)
	}

	oldCreate, err := s.store.CurrentStateEvent(ctx, roomID, "m.room.create", "")
	if err != nil {
		return "", err
	}
	if oldCreate == nil {
		return "", fmt.Errorf("upgrade %s: no create event", roomID)
	}
	lastEvent, err := s.lastEventID(ctx, roomID)
	if err != nil {
		return "", err
	}
	newRoomID := "!" + randomID(18) + ":" + s.cfg.ServerName
	drafts, err := s.upgradeDrafts(ctx, req, roomID, lastEvent, oldCreate, rv)
	if err != nil {
		return "", err
	}
	if rv.RoomIDFromCreate {
		if newRoomID, err = s.roomIDFromCreate(&drafts[0], rv); err != nil {
			return "", err
		}
	}
	if _, err := s.send(ctx, newRoomID, drafts...); err != nil {
		return "", fmt.Errorf("create the replacement of %s: %w", roomID, err)
	}

	empty := ""
	tombstone := Draft{Type: "m.room.tombstone", StateKey: &empty, Sender: req.UserID, DeviceID: req.DeviceID,
		Content: mustJSON(map[string]any{"body": "This room has been replaced", "replacement_room": newRoomID})}
	if _, err := s.sendOne(ctx, roomID, tombstone); err != nil {
		return "", fmt.Errorf("tombstone %s: %w", roomID, err)
	}
	if err := s.moveAliases(ctx, req, roomID, newRoomID); err != nil {
		return "", err
	}
	s.restrictOldRoom(ctx, req, roomID, pl.UsersDefault)
	s.log.Info("upgraded room", "room_id", roomID, "user_id", req.UserID, "replacement_room", newRoomID, "room_version", rv.ID)
	return newRoomID, nil
}

// lastEventID is the id of the newest event of the room (the spec's
// predecessor.event_id, "the last known event in the old room").
func (s *Service) lastEventID(ctx context.Context, roomID string) (string, error) {
	var id string
	err := s.store.db.Reader().QueryRowContext(ctx, `SELECT event_id FROM events WHERE room_id = $1
		ORDER BY stream_ordering DESC LIMIT 1`, roomID).Scan(&id)
	if err != nil {
		return "", fmt.Errorf("last event of %s: %w", roomID, err)
	}
	return id, nil
}

// upgradeDrafts builds the new room's initial events.
func (s *Service) upgradeDrafts(ctx context.Context, req *accounts.Requester, oldRoom, lastEvent string,
	oldCreate *StoredEvent, rv *events.RoomVersion) ([]Draft, error) {
	empty := ""
	var drafts []Draft
	add := func(typ string, stateKey string, content json.RawMessage) {
		sk := stateKey
		drafts = append(drafts, Draft{Type: typ, StateKey: &sk, Sender: req.UserID, Content: content, DeviceID: req.DeviceID})
	}

	// The create event keeps the old one's extra keys (room type,
	// m.federate) and names the predecessor.
	create := map[string]json.RawMessage{}
	_ = json.Unmarshal(oldCreate.Event.Content(), &create)
	delete(create, "creator")
	delete(create, "predecessor")
	delete(create, "additional_creators")
	if !rv.ImplicitRoomCreator {
		create["creator"] = mustJSON(req.UserID)
	}
	create["room_version"] = mustJSON(rv.ID)
	create["predecessor"] = mustJSON(map[string]string{"room_id": oldRoom, "event_id": lastEvent})
	drafts = append(drafts, Draft{Type: "m.room.create", StateKey: &empty, Sender: req.UserID, Content: mustJSON(create),
		RoomVersion: rv.ID, DeviceID: req.DeviceID})

	member := map[string]any{"membership": "join"}
	if err := s.profileContent(ctx, req.UserID, member); err != nil {
		return nil, err
	}
	add("m.room.member", req.UserID, mustJSON(member))

	// Power levels: the old content, with the upgrader raised to the
	// highest level any of it requires if they are below it, so that every
	// copied event passes the auth rules; the old content is restored last.
	oldPL, err := s.store.CurrentStateEvent(ctx, oldRoom, "m.room.power_levels", "")
	if err != nil {
		return nil, err
	}
	var restorePL json.RawMessage
	if oldPL != nil {
		plContent := oldPL.Event.Content()
		var c map[string]json.RawMessage
		if err := json.Unmarshal(plContent, &c); err != nil {
			return nil, fmt.Errorf("upgrade %s: power levels: %w", oldRoom, err)
		}
		need := maxLevel(c)
		users := map[string]json.RawMessage{}
		_ = json.Unmarshal(c["users"], &users)
		if rv.PrivilegedCreators {
			// v12+: the upgrader creates the new room, so their level is
			// infinite and may not be listed (MSC4289).
			if _, listed := users[req.UserID]; listed {
				delete(users, req.UserID)
				c["users"] = mustJSON(users)
				plContent = mustJSON(c)
			}
			need = 0
		}
		var mine int64
		if raw, ok := users[req.UserID]; ok {
			mine = levelOf(raw)
		} else {
			mine = levelOf(c["users_default"])
		}
		if mine < need {
			users[req.UserID] = mustJSON(need)
			c["users"] = mustJSON(users)
			add("m.room.power_levels", "", mustJSON(c))
			restorePL = plContent
		} else {
			add("m.room.power_levels", "", plContent)
		}
	}

	state, err := s.store.CurrentState(ctx, oldRoom)
	if err != nil {
		return nil, err
	}
	for _, typ := range upgradeCopiedState {
		for _, se := range state {
			if se.Event.Type() == typ && se.Event.StateKeyEquals("") && se.RedactedBy == "" {
				add(typ, "", se.Event.Content())
			}
		}
	}
	for _, se := range state {
		ev := se.Event
		switch {
		case ev.Type() == "m.space.child" && se.RedactedBy == "":
			add(ev.Type(), *ev.StateKey(), ev.Content())
		case ev.Type() == "m.room.member" && ev.Membership() == "ban":
			// Bans carry over, so a banned user cannot walk into the
			// new room.
			add(ev.Type(), *ev.StateKey(), mustJSON(map[string]any{"membership": "ban"}))
		}
	}
	if restorePL != nil {
		add("m.room.power_levels", "", restorePL)
	}
	return drafts, nil
}

// levelOf reads a power level that may be an integer or (in old rooms) a
// string holding one.
func levelOf(raw json.RawMessage) int64 {
	var n json.Number
	if json.Unmarshal(raw, &n) != nil {
		var s string
		if json.Unmarshal(raw, &s) != nil {
			return 0
		}
		n = json.Number(s)
	}
	i, err := n.Int64()
	if err != nil {
		f, ferr := n.Float64()
		if ferr != nil {
			return 0
		}
		i = int64(f)
	}
	return i
}

// maxLevel is the highest level a power levels content requires for
// anything (at least 100, the level of m.room.power_levels by default).
func maxLevel(c map[string]json.RawMessage) int64 {
	need := int64(100)
	for _, k := range []string{"ban", "kick", "redact", "invite", "state_default", "events_default"} {
		if raw, ok := c[k]; ok {
			need = max(need, levelOf(raw))
		}
	}
	evs := map[string]json.RawMessage{}
	_ = json.Unmarshal(c["events"], &evs)
	for _, raw := range evs {
		need = max(need, levelOf(raw))
	}
	return need
}

// moveAliases points the old room's local aliases at the new room, moves
// its place in the public directory, and takes the canonical alias off the
// old room (the new room got a copy).
func (s *Service) moveAliases(ctx context.Context, req *accounts.Requester, oldRoom, newRoom string) error {
	if _, err := s.store.db.Exec(ctx, `UPDATE room_aliases SET room_id = $1 WHERE room_id = $2`, newRoom, oldRoom); err != nil {
		return fmt.Errorf("move aliases of %s: %w", oldRoom, err)
	}
	vis, err := s.DirectoryVisibility(ctx, oldRoom)
	if err != nil {
		return err
	}
	if vis == "public" {
		if err := s.setPublished(ctx, newRoom, true); err != nil {
			return err
		}
		if err := s.setPublished(ctx, oldRoom, false); err != nil {
			return err
		}
	}
	cur, err := s.store.CurrentStateEvent(ctx, oldRoom, "m.room.canonical_alias", "")
	if err != nil || cur == nil || string(cur.Event.Content()) == "{}" {
		return err
	}
	empty := ""
	_, err = s.sendOne(ctx, oldRoom, Draft{Type: "m.room.canonical_alias", StateKey: &empty, Sender: req.UserID,
		Content: json.RawMessage("{}"), DeviceID: req.DeviceID})
	if err != nil && !IsNotAllowed(err) {
		return fmt.Errorf("clear the canonical alias of %s: %w", oldRoom, err)
	}
	return nil
}

// restrictOldRoom raises events_default and invite in the old room to 50
// or users_default+1, whichever is higher (spec), so that ordinary members
// stop talking there. The upgrader may lack the power to change power
// levels; the upgrade has happened regardless, so that is only logged.
func (s *Service) restrictOldRoom(ctx context.Context, req *accounts.Requester, roomID string, usersDefault int64) {
	cur, err := s.store.CurrentStateEvent(ctx, roomID, "m.room.power_levels", "")
	if err != nil || cur == nil {
		if err != nil {
			s.log.Warn("upgrade: load old power levels", "room_id", roomID, "err", err)
		}
		return
	}
	var c map[string]json.RawMessage
	if json.Unmarshal(cur.Event.Content(), &c) != nil {
		return
	}
	restricted := max(int64(50), usersDefault+1)
	changed := false
	for _, k := range []string{"events_default", "invite"} {
		if levelOf(c[k]) < restricted {
			c[k] = mustJSON(restricted)
			changed = true
		}
	}
	if !changed {
		return
	}
	empty := ""
	_, err = s.sendOne(ctx, roomID, Draft{Type: "m.room.power_levels", StateKey: &empty, Sender: req.UserID,
		Content: mustJSON(c), DeviceID: req.DeviceID})
	var me *mxhttp.Error
	if err != nil && !errors.As(err, &me) {
		s.log.Warn("upgrade: restrict the old room's power levels", "room_id", roomID, "user_id", req.UserID, "err", err)
	} else if err != nil {
		s.log.Info("upgrade: not allowed to restrict the old room's power levels", "room_id", roomID, "user_id", req.UserID, "err", err)
	}
}
