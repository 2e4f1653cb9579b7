// Package rooms owns rooms and their events: creating rooms, membership,
// sending messages and state, redaction, reading timelines and state with
// history visibility, aliases and the public room directory. Every event
// goes through an EventWriter to the room's persister.
package rooms

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net/http"
	"strings"
	"time"

	"ganglion/internal/accounts"
	"ganglion/internal/canonicaljson"
	"ganglion/internal/eventauth"
	"ganglion/internal/events"
	"ganglion/internal/mxhttp"
	"ganglion/internal/ratelimit"
	"ganglion/internal/streams"
)

// MaxEventContent is the spec's limit on an event (we check content early
// so clients get M_TOO_LARGE before any work is done).
const MaxEventContent = 65536

// Config holds the room settings from the homeserver config.
type Config struct {
	ServerName         string
	DefaultRoomVersion string
}

// Service is the rooms domain for one process.
type Service struct {
	cfg      Config
	store    *Store
	writer   EventWriter
	accounts *accounts.Service
	reg      *streams.Registry
	log      *slog.Logger
	msgLimit *ratelimit.Limiter
	limits   Limits // the other rc_* limits (ratelimits.go)
	// appservices, when set, guards exclusive alias namespaces and asks
	// services about unknown aliases (appservices.go).
	appservices Appservices
	// noticeRooms, when set, guards server notices rooms (notices.go).
	noticeRooms NoticeRooms
	// backfiller, when set, fetches history older than what is stored
	// from other servers in the room (/messages at the start of what we
	// have).
	backfiller Backfiller
	// remote, when set, does the membership handshakes with other
	// servers (fedmembership.go).
	remote RemoteMembership
	// remoteAliases, when set, resolves other servers' aliases over
	// federation (remotealias.go).
	remoteAliases RemoteDirectory
	now           func() time.Time
}

// Backfiller fetches a room's history from other servers: at most about
// limit events older than the oldest stored, stored by the room's
// persister before it returns. It reports how many it stored.
type Backfiller interface {
	Backfill(ctx context.Context, roomID string, limit int) (int, error)
}

// SetBackfiller installs the backfiller. Call before serving.
func (s *Service) SetBackfiller(b Backfiller) { s.backfiller = b }

func NewService(cfg Config, store *Store, writer EventWriter, acc *accounts.Service, reg *streams.Registry,
	msgLimit *ratelimit.Limiter, log *slog.Logger) *Service {
	if cfg.DefaultRoomVersion == "" {
		cfg.DefaultRoomVersion = events.DefaultRoomVersion
	}
	return &Service{cfg: cfg, store: store, writer: writer, accounts: acc, reg: reg, log: log, msgLimit: msgLimit, now: time.Now}
}

// Store exposes the read side to other domains (sync).
func (s *Service) Store() *Store { return s.store }

var _ accounts.RoomHooks = (*Service)(nil)

func randomID(n int) string {
	const letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
	b := make([]byte, n)
	for i := range b {
		v, err := rand.Int(rand.Reader, big.NewInt(int64(len(letters))))
		if err != nil {
			panic("crypto/rand failed: " + err.Error())
		}
		b[i] = letters[v.Int64()]
	}
	return string(b)
}

func strPtr(s string) *string { return &s }

func mustJSON(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("marshal %T: %v", v, err)) // only called on our own maps
	}
	return b
}

func (s *Service) send(ctx context.Context, roomID string, drafts ...Draft) ([]Persisted, error) {
	res, err := s.writer.SendEvents(ctx, roomID, drafts)
	if err != nil {
		return nil, err
	}
	return res, nil
}

func (s *Service) sendOne(ctx context.Context, roomID string, d Draft) (string, error) {
	res, err := s.send(ctx, roomID, d)
	if err != nil {
		return "", err
	}
	return res[0].EventID, nil
}

func (s *Service) checkMessageRate(req *accounts.Requester) error {
	if req.Admin || req.RateLimitExempt {
		return nil
	}
	if ok, wait := s.msgLimit.Allow(req.UserID); !ok {
		return mxhttp.LimitExceeded(wait.Milliseconds() + 1)
	}
	return nil
}

func (s *Service) requireRoom(ctx context.Context, roomID string) error {
	if !validRoomID(roomID) {
		return mxhttp.InvalidParam("Invalid room id %q", roomID)
	}
	ok, err := s.store.RoomExists(ctx, roomID)
	if err != nil {
		return err
	}
	if !ok {
		// 403, as Synapse answers: a non-member must not learn whether a
		// room exists.
		return mxhttp.Forbidden("Unknown room %s, or you are not in it", roomID)
	}
	return nil
}

// validRoomID accepts "!opaque:server" and, from room version 12, "!" and
// the create event's hash in unpadded URL-safe base64 (no server part).
func validRoomID(id string) bool {
	if len(id) > 255 || len(id) < 2 || id[0] != '!' {
		return false
	}
	if strings.Contains(id, ":") {
		return len(id) > 3
	}
	if len(id) != 44 {
		return false
	}
	for _, c := range id[1:] {
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

func validUserID(id string) bool {
	_, server, ok := accounts.SplitUserID(id)
	return ok && server != "" && len(id) <= 255
}

// checkContent validates a client-supplied content object.
func checkContent(content json.RawMessage) error {
	if len(content) > MaxEventContent {
		return mxhttp.TooLarge("Event content too large (%d bytes; at most %d)", len(content), MaxEventContent)
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(content, &obj); err != nil {
		return mxhttp.BadJSON("Event content must be a JSON object")
	}
	return nil
}

// Send sends a message-like event.
func (s *Service) Send(ctx context.Context, req *accounts.Requester, roomID, evType, txnID string, content json.RawMessage) (string, error) {
	if err := s.requireRoom(ctx, roomID); err != nil {
		return "", err
	}
	if err := checkContent(content); err != nil {
		return "", err
	}
	if err := s.checkEventRate(req, evType); err != nil {
		return "", err
	}
	if err := s.checkThreadRoot(ctx, content); err != nil {
		return "", err
	}
	d := Draft{Type: evType, Sender: req.UserID, Content: content, TxnID: txnID, TxnScope: "send/" + evType, DeviceID: req.DeviceID}
	if evType == "m.room.redaction" {
		var c struct {
			Redacts string `json:"redacts"`
		}
		_ = json.Unmarshal(content, &c)
		if err := s.checkRedaction(ctx, req, roomID, c.Redacts); err != nil {
			return "", err
		}
		d.Redacts = c.Redacts
	}
	return s.sendOne(ctx, roomID, d)
}

// SetState sends a state event. Setting a state key to the content it
// already has from the same sender is a no-op returning the existing event,
// as Synapse does, so clients that re-send state do not spam the timeline.
func (s *Service) SetState(ctx context.Context, req *accounts.Requester, roomID, evType, stateKey string, content json.RawMessage) (string, error) {
	if err := s.requireRoom(ctx, roomID); err != nil {
		return "", err
	}
	if err := checkContent(content); err != nil {
		return "", err
	}
	if err := s.checkMessageRate(req); err != nil {
		return "", err
	}
	switch evType {
	case "m.room.member":
		var c struct {
			Membership string `json:"membership"`
		}
		if json.Unmarshal(content, &c) != nil || c.Membership == "" {
			return "", mxhttp.BadJSON("m.room.member content needs a membership")
		}
		if !validUserID(stateKey) {
			return "", mxhttp.BadJSON("m.room.member state key must be a user id")
		}
		if c.Membership == "leave" && stateKey == req.UserID {
			if err := s.checkNoticeLeave(ctx, roomID, req.UserID); err != nil {
				return "", err
			}
		}
	case "m.room.canonical_alias":
		if err := s.checkCanonicalAlias(ctx, roomID, content); err != nil {
			return "", err
		}
	case "m.room.create":
		return "", mxhttp.Forbidden("Cannot send m.room.create")
	}
	if cur, err := s.store.CurrentStateEvent(ctx, roomID, evType, stateKey); err != nil {
		return "", err
	} else if cur != nil && cur.Event.Sender() == req.UserID && cur.RedactedBy == "" && jsonEqual(cur.Event.Content(), content) {
		return cur.Event.EventID(), nil
	}
	return s.sendOne(ctx, roomID, Draft{Type: evType, StateKey: &stateKey, Sender: req.UserID, Content: content, DeviceID: req.DeviceID})
}

// jsonEqual compares two JSON values by their canonical encodings, which
// tell apart everything an event's content can tell apart (100 and "100",
// null and a missing key) and nothing else (key order, whitespace).
func jsonEqual(a, b json.RawMessage) bool {
	x, err := canonicaljson.Canonicalize(a, false)
	if err != nil {
		return false
	}
	y, err := canonicaljson.Canonicalize(b, false)
	return err == nil && bytes.Equal(x, y)
}

// checkRedaction enforces what the auth rules leave to the server from room
// version 3 on: a user may redact their own events, or others' with the
// redact power level; the target must be in the same room.
func (s *Service) checkRedaction(ctx context.Context, req *accounts.Requester, roomID, target string) error {
	if target == "" {
		return mxhttp.BadJSON("Missing redacts")
	}
	se, err := s.store.Event(ctx, target)
	if err != nil {
		return err
	}
	if se == nil || se.Event.RoomID() != roomID {
		return mxhttp.NotFound("Event not found")
	}
	if se.Event.Sender() == req.UserID {
		return nil
	}
	pl, err := s.powerLevels(ctx, roomID)
	if err != nil {
		return err
	}
	if pl.UserLevel(req.UserID) < pl.Redact {
		return mxhttp.Forbidden("You don't have permission to redact events")
	}
	return nil
}

// Redact redacts an event.
func (s *Service) Redact(ctx context.Context, req *accounts.Requester, roomID, target, txnID, reason string) (string, error) {
	if err := s.requireRoom(ctx, roomID); err != nil {
		return "", err
	}
	if err := s.checkRedaction(ctx, req, roomID, target); err != nil {
		return "", err
	}
	if err := s.checkEventRate(req, "m.room.redaction"); err != nil {
		return "", err
	}
	rv, err := s.store.RoomVersion(ctx, roomID)
	if err != nil {
		return "", err
	}
	c := map[string]any{}
	if reason != "" {
		c["reason"] = reason
	}
	if rv.RedactsInContent {
		c["redacts"] = target
	}
	return s.sendOne(ctx, roomID, Draft{Type: "m.room.redaction", Sender: req.UserID, Content: mustJSON(c), Redacts: target,
		TxnID: txnID, TxnScope: "redact/" + target, DeviceID: req.DeviceID})
}

func (s *Service) powerLevels(ctx context.Context, roomID string) (eventauth.PowerLevels, error) {
	rv, err := s.store.RoomVersion(ctx, roomID)
	if err != nil {
		return eventauth.PowerLevels{}, err
	}
	pl, err := s.store.CurrentStateEvent(ctx, roomID, "m.room.power_levels", "")
	if err != nil {
		return eventauth.PowerLevels{}, err
	}
	if pl != nil && !rv.PrivilegedCreators {
		return eventauth.ParsePowerLevels(pl.Event.Content(), rv)
	}
	create, err := s.store.CurrentStateEvent(ctx, roomID, "m.room.create", "")
	if err != nil || create == nil {
		return eventauth.PowerLevels{}, fmt.Errorf("room %s has no create event: %w", roomID, err)
	}
	if pl != nil {
		// v12+: the creators' level comes from the create event.
		levels, err := eventauth.ParsePowerLevels(pl.Event.Content(), rv)
		if err != nil {
			return eventauth.PowerLevels{}, err
		}
		return levels.WithCreators(create.Event), nil
	}
	return eventauth.DefaultPowerLevels(create.Event), nil
}

// profileContent builds the displayname/avatar part of a member event.
func (s *Service) profileContent(ctx context.Context, userID string, c map[string]any) error {
	if _, server, _ := accounts.SplitUserID(userID); server != s.cfg.ServerName {
		return nil
	}
	p, err := s.accounts.GetProfile(ctx, userID)
	if err != nil || p == nil {
		return err
	}
	if p.DisplayName != nil {
		c["displayname"] = *p.DisplayName
	}
	if p.AvatarURL != nil {
		c["avatar_url"] = *p.AvatarURL
	}
	return nil
}

// MembershipChange is a client's request to change someone's membership.
type MembershipChange struct {
	Target string
	// Membership is join, leave, invite, ban or knock, or kick (a leave
	// of another user that requires them to be in the room; unban is a
	// leave of a banned user).
	Membership string
	Reason     string
	IsDirect   bool
	// Content, for joins, holds the keys of the request body to copy into
	// the member event, as Synapse does for /join/{roomIdOrAlias}: a
	// per-room displayname or avatar_url, or keys of the client's own.
	Content map[string]json.RawMessage
}

// Limits on per-room profile fields, as Synapse's.
const (
	maxDisplayNameLen = 256
	maxAvatarURLLen   = 1000
)

// memberContent builds a member event's content: the copied request keys,
// the membership, the reason, and the target's profile where the request
// set none.
func (s *Service) memberContent(ctx context.Context, ch MembershipChange, membership string) (map[string]any, error) {
	c := map[string]any{}
	for k, v := range ch.Content {
		switch k {
		case "membership", "reason":
			// Set below from the request's own fields.
		case "join_authorised_via_users_server":
			// Only a resident server may name the authorising user, in a
			// restricted join it signs; a client cannot.
		case "third_party_signed":
			// A proof for the server (third-party invites), not content.
		case "displayname", "avatar_url":
			var str *string
			if err := json.Unmarshal(v, &str); err != nil {
				return nil, mxhttp.BadJSON("%s must be a string", k)
			}
			if str == nil {
				continue
			}
			limit := maxDisplayNameLen
			if k == "avatar_url" {
				limit = maxAvatarURLLen
			}
			if len(*str) > limit {
				return nil, mxhttp.BadJSON("%s is too long (at most %d bytes)", k, limit)
			}
			c[k] = *str
		default:
			c[k] = v
		}
	}
	c["membership"] = membership
	if ch.Reason != "" {
		c["reason"] = ch.Reason
	}
	switch membership {
	case "join", "invite", "knock":
		p := map[string]any{}
		if err := s.profileContent(ctx, ch.Target, p); err != nil {
			return nil, err
		}
		for k, v := range p {
			if _, set := c[k]; !set {
				c[k] = v
			}
		}
	}
	if membership == "invite" && ch.IsDirect {
		c["is_direct"] = true
	}
	return c, nil
}

// ChangeMembership sends a membership event for req.
func (s *Service) ChangeMembership(ctx context.Context, req *accounts.Requester, roomID string, ch MembershipChange) (string, error) {
	if err := s.requireRoom(ctx, roomID); err != nil {
		return "", err
	}
	if !validUserID(ch.Target) {
		return "", mxhttp.InvalidParam("Invalid user id %q", ch.Target)
	}
	if err := s.checkMessageRate(req); err != nil {
		return "", err
	}
	if err := s.checkMembershipRate(ctx, req, roomID, ch); err != nil {
		return "", err
	}
	membership := ch.Membership
	if membership == "kick" {
		membership = "leave"
	}
	if membership == "leave" && ch.Target == req.UserID {
		if err := s.checkNoticeLeave(ctx, roomID, req.UserID); err != nil {
			return "", err
		}
	}
	c, err := s.memberContent(ctx, ch, membership)
	if err != nil {
		return "", err
	}
	if membership == "join" {
		if err := s.authoriseRestrictedJoin(ctx, roomID, ch.Target, c); err != nil {
			return "", err
		}
	}
	if membership == "invite" {
		if _, server, _ := accounts.SplitUserID(ch.Target); server == s.cfg.ServerName {
			exists, err := s.accounts.KnownUser(ctx, ch.Target)
			if err != nil {
				return "", err
			}
			if !exists {
				return "", mxhttp.NotFound("Unknown user %s", ch.Target)
			}
		} else if s.remote == nil {
			return "", mxhttp.Forbidden("Inviting users on other servers needs federation, which this server does not run")
		} else {
			// The invitee's server co-signs the invite before it is
			// persisted (fedmembership.go).
			return s.remote.Invite(ctx, req.UserID, roomID, ch.Target, mustJSON(c))
		}
	}
	if membership == "leave" && ch.Target == req.UserID {
		if id, done, err := s.leaveRemotely(ctx, req.UserID, roomID, c); done || err != nil {
			return id, err
		}
	}
	content := mustJSON(c)
	if ch.Membership == "kick" || membership == "join" {
		cur, err := s.store.CurrentStateEvent(ctx, roomID, "m.room.member", ch.Target)
		if err != nil {
			return "", err
		}
		var curMembership string
		if cur != nil {
			curMembership = cur.Event.Membership()
		}
		switch {
		case ch.Membership == "kick" && (curMembership == "" || curMembership == "leave" || curMembership == "ban"):
			// The auth rules would let a moderator "kick" someone who is
			// not there, writing a pointless leave; Synapse refuses.
			return "", mxhttp.Forbidden("The target user is not in the room")
		case membership == "join" && curMembership == "ban":
			return "", mxhttp.Forbidden("You are banned from this room")
		case membership == "join" && curMembership == "join" && cur.Event.Sender() == req.UserID && cur.RedactedBy == "" &&
			jsonEqual(cur.Event.Content(), content):
			// Joining again with the same content changes nothing: answer
			// with the join in place, as Synapse does, instead of a new
			// event. A join with new content (a new per-room profile) is
			// a new event.
			return cur.Event.EventID(), nil
		}
	}
	return s.sendOne(ctx, roomID, Draft{Type: "m.room.member", StateKey: &ch.Target, Sender: req.UserID,
		Content: content, DeviceID: req.DeviceID})
}

// ProfileChanged implements accounts.RoomHooks: the new profile goes into a
// fresh join event in every joined room.
func (s *Service) ProfileChanged(ctx context.Context, userID string, p accounts.Profile) error {
	rooms, err := s.store.RoomsForUser(ctx, userID, "join")
	if err != nil {
		return err
	}
	for _, roomID := range rooms {
		c := map[string]any{"membership": "join"}
		if p.DisplayName != nil {
			c["displayname"] = *p.DisplayName
		}
		if p.AvatarURL != nil {
			c["avatar_url"] = *p.AvatarURL
		}
		if _, err := s.sendOne(ctx, roomID, Draft{Type: "m.room.member", StateKey: &userID, Sender: userID, Content: mustJSON(c)}); err != nil {
			// One room refusing (e.g. power levels) must not stop the others.
			s.log.Warn("could not update member event with new profile", "room_id", roomID, "user_id", userID, "err", err)
		}
	}
	return nil
}

// LeaveAllRooms implements accounts.RoomHooks for deactivation.
func (s *Service) LeaveAllRooms(ctx context.Context, userID string) error {
	rooms, err := s.store.RoomsForUser(ctx, userID, "join", "invite", "knock")
	if err != nil {
		return err
	}
	for _, roomID := range rooms {
		_, err := s.sendOne(ctx, roomID, Draft{Type: "m.room.member", StateKey: &userID, Sender: userID,
			Content: mustJSON(map[string]any{"membership": "leave"})})
		if err != nil {
			return fmt.Errorf("leave %s: %w", roomID, err)
		}
	}
	return nil
}

// Forget hides a room the user has left from their room lists.
func (s *Service) Forget(ctx context.Context, req *accounts.Requester, roomID string) error {
	if err := s.requireRoom(ctx, roomID); err != nil {
		return err
	}
	m, _, err := s.store.Membership(ctx, roomID, req.UserID)
	if err != nil {
		return err
	}
	if m == "join" || m == "invite" || m == "knock" {
		return mxhttp.WithCode(http.StatusBadRequest, "M_UNKNOWN", "User %s is in room %s", req.UserID, roomID)
	}
	if m == "" {
		return mxhttp.NotFound("User %s has never been in room %s", req.UserID, roomID)
	}
	_, err = s.store.db.Exec(ctx, `INSERT INTO forgotten_rooms (user_id, room_id) VALUES ($1, $2)
		ON CONFLICT (user_id, room_id) DO NOTHING`, req.UserID, roomID)
	if err != nil {
		return fmt.Errorf("forget room: %w", err)
	}
	return nil
}

// errNotInRoom is what reads answer when the user may not see the room.
func errNotInRoom(userID, roomID string) error {
	return mxhttp.Forbidden("User %s not in room %s, and room previews are disabled", userID, roomID)
}

var errNotFoundEvent = mxhttp.NotFound("Event not found")

// Event returns one event if the user may see it. Everything else is 404,
// as the spec asks ("not found or you do not have permission to read
// this event"): an unknown room, an event of another room, an event the
// user may not see, in a room they are in or not, all look the same.
func (s *Service) Event(ctx context.Context, req *accounts.Requester, roomID, eventID string) (*ClientEvent, error) {
	if !validRoomID(roomID) {
		return nil, mxhttp.InvalidParam("Invalid room id %q", roomID)
	}
	se, err := s.store.Event(ctx, eventID)
	if err != nil {
		return nil, err
	}
	if se == nil || se.Event.RoomID() != roomID {
		return nil, errNotFoundEvent
	}
	v, err := s.VisibilityFor(ctx, roomID, req.UserID)
	if err != nil {
		return nil, err
	}
	if !v.CanSee(se) {
		return nil, errNotFoundEvent
	}
	out, err := s.Formatter(req.UserID, req.DeviceID).Format(ctx, []*StoredEvent{se})
	if err != nil {
		return nil, err
	}
	return &out[0], nil
}

// readPosition decides up to which stream position the user may read the
// room's state: now if joined (or the room is world readable), the
// position of their leave/ban if they were once a member.
func (s *Service) readPosition(ctx context.Context, req *accounts.Requester, roomID string) (int64, bool, error) {
	m, pos, err := s.store.Membership(ctx, roomID, req.UserID)
	if err != nil {
		return 0, false, err
	}
	if m == "join" {
		return 0, true, nil
	}
	v, err := s.VisibilityFor(ctx, roomID, req.UserID)
	if err != nil {
		return 0, false, err
	}
	if v.WorldReadableNow() {
		return 0, true, nil
	}
	if m == "leave" || m == "ban" {
		// Only if they were joined before: a rejected invite shows nothing.
		for _, c := range v.members {
			if c.membership == "join" {
				return pos, false, nil
			}
		}
	}
	return 0, false, errNotInRoom(req.UserID, roomID)
}

// State returns the room state the user may see.
func (s *Service) State(ctx context.Context, req *accounts.Requester, roomID string) ([]ClientEvent, error) {
	if err := s.requireRoom(ctx, roomID); err != nil {
		return nil, err
	}
	pos, current, err := s.readPosition(ctx, req, roomID)
	if err != nil {
		return nil, err
	}
	var evs []*StoredEvent
	if current {
		evs, err = s.store.CurrentState(ctx, roomID)
	} else {
		evs, err = s.store.StateAt(ctx, roomID, pos, nil)
	}
	if err != nil {
		return nil, err
	}
	return s.Formatter(req.UserID, req.DeviceID).Format(ctx, evs)
}

// StateEvent returns one state event's content.
func (s *Service) StateEvent(ctx context.Context, req *accounts.Requester, roomID, evType, stateKey string) (*ClientEvent, error) {
	if err := s.requireRoom(ctx, roomID); err != nil {
		return nil, err
	}
	pos, current, err := s.readPosition(ctx, req, roomID)
	if err != nil {
		return nil, err
	}
	var se *StoredEvent
	if current {
		se, err = s.store.CurrentStateEvent(ctx, roomID, evType, stateKey)
	} else {
		var evs []*StoredEvent
		evs, err = s.store.StateAt(ctx, roomID, pos, []eventauth.StateKey{{Type: evType, StateKey: stateKey}})
		if len(evs) > 0 {
			se = evs[0]
		}
	}
	if err != nil {
		return nil, err
	}
	if se == nil {
		return nil, mxhttp.NotFound("Event not found")
	}
	out, err := s.Formatter(req.UserID, req.DeviceID).Format(ctx, []*StoredEvent{se})
	if err != nil {
		return nil, err
	}
	return &out[0], nil
}

// JoinedRooms lists the rooms the user is joined to.
func (s *Service) JoinedRooms(ctx context.Context, userID string) ([]string, error) {
	return s.store.RoomsForUser(ctx, userID, "join")
}

// Member is a joined_members entry.
type Member struct {
	DisplayName *string `json:"display_name"`
	AvatarURL   *string `json:"avatar_url"`
}

// JoinedMembers is /joined_members: only for joined users.
func (s *Service) JoinedMembers(ctx context.Context, req *accounts.Requester, roomID string) (map[string]Member, error) {
	if err := s.requireRoom(ctx, roomID); err != nil {
		return nil, err
	}
	m, _, err := s.store.Membership(ctx, roomID, req.UserID)
	if err != nil {
		return nil, err
	}
	if m != "join" {
		return nil, errNotInRoom(req.UserID, roomID)
	}
	evs, err := s.store.StateAt(ctx, roomID, 1<<62, []eventauth.StateKey{{Type: "m.room.member", StateKey: "*"}})
	if err != nil {
		return nil, err
	}
	out := map[string]Member{}
	for _, se := range evs {
		if se.Event.Membership() != "join" {
			continue
		}
		var c struct {
			DisplayName *string `json:"displayname"`
			AvatarURL   *string `json:"avatar_url"`
		}
		_ = json.Unmarshal(se.Event.Content(), &c)
		out[*se.Event.StateKey()] = Member{DisplayName: c.DisplayName, AvatarURL: c.AvatarURL}
	}
	return out, nil
}

// MembersQuery is /members' query: at (a pagination or sync token),
// membership and not_membership, as given.
type MembersQuery struct {
	At, Membership, NotMembership string
}

// Members is /members. The query is judged only once the user is known to
// be allowed to read the room's members.
func (s *Service) Members(ctx context.Context, req *accounts.Requester, roomID string, q MembersQuery) ([]ClientEvent, error) {
	if err := s.requireRoom(ctx, roomID); err != nil {
		return nil, err
	}
	pos, current, err := s.readPosition(ctx, req, roomID)
	if err != nil {
		return nil, err
	}
	var at int64
	if q.At != "" {
		if at, err = s.roomPosition(roomID, q.At); err != nil {
			return nil, err
		}
	}
	for _, p := range [][2]string{{"membership", q.Membership}, {"not_membership", q.NotMembership}} {
		switch p[1] {
		case "", "join", "invite", "leave", "ban", "knock":
		default:
			return nil, mxhttp.InvalidParam("Invalid %s", p[0])
		}
	}
	if current {
		pos = 1 << 62
	}
	if at > 0 && at < pos {
		pos = at
	}
	evs, err := s.store.StateAt(ctx, roomID, pos, []eventauth.StateKey{{Type: "m.room.member", StateKey: "*"}})
	if err != nil {
		return nil, err
	}
	kept := evs[:0]
	for _, se := range evs {
		m := se.Event.Membership()
		if q.Membership != "" && m != q.Membership {
			continue
		}
		if q.NotMembership != "" && m == q.NotMembership {
			continue
		}
		kept = append(kept, se)
	}
	return s.Formatter(req.UserID, req.DeviceID).Format(ctx, kept)
}

// IsNotAllowed reports whether err is an auth-rule refusal.
func IsNotAllowed(err error) bool {
	var me *mxhttp.Error
	return errors.As(err, &me) && me.Code == "M_FORBIDDEN"
}
