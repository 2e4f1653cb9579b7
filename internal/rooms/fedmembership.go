package rooms

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"

	"ganglion/internal/accounts"
	"ganglion/internal/eventauth"
	"ganglion/internal/events"
	"ganglion/internal/mxhttp"
)

// maxPrevEvents bounds the prev events of a membership event built outside
// the persister, as Synapse bounds its own events' (10).
const maxPrevEvents = 10

// ForwardExtremities returns the room's forward extremities and the
// greatest depth among them.
func (s *Store) ForwardExtremities(ctx context.Context, roomID string) ([]string, int64, error) {
	rows, err := s.db.Reader().QueryContext(ctx, `SELECT e.event_id, e.depth FROM forward_extremities f
		JOIN events e ON e.event_id = f.event_id WHERE f.room_id = $1 ORDER BY e.depth DESC, e.event_id`, roomID)
	if err != nil {
		return nil, 0, fmt.Errorf("forward extremities of %s: %w", roomID, err)
	}
	defer rows.Close()
	var ids []string
	var depth int64
	for rows.Next() {
		var id string
		var d int64
		if err := rows.Scan(&id, &d); err != nil {
			return nil, 0, fmt.Errorf("forward extremities of %s: %w", roomID, err)
		}
		ids = append(ids, id)
		depth = max(depth, d)
	}
	return ids, depth, rows.Err()
}

// MembershipEvent builds an m.room.member event of target, sent by sender,
// from the room's current state and forward extremities, signed with key,
// and checks it against the auth rules with that state. It is how a server
// that is not the room's persister makes a membership event another server
// must see before it is persisted: the template of a make_join, make_leave
// or make_knock answer (whose signature the caller throws away), or an
// invite of a user of another server, which that server co-signs and the
// caller then persists through RemoteWriter. A concurrent event only makes
// the persisted event one more fork, which the persister's remote path
// resolves. An event the auth rules refuse is a 403.
func (s *Service) MembershipEvent(ctx context.Context, roomID, sender, target string, content json.RawMessage,
	key events.SigningKey, now time.Time) (*events.Event, error) {
	rv, err := s.store.RoomVersion(ctx, roomID)
	if err != nil {
		return nil, err
	}
	state := eventauth.StateMap{}
	get := func(k eventauth.StateKey) (*events.Event, error) {
		if ev, ok := state[k]; ok {
			return ev, nil
		}
		se, err := s.store.CurrentStateEvent(ctx, roomID, k.Type, k.StateKey)
		if err != nil || se == nil {
			return nil, err
		}
		state[k] = se.Event
		return se.Event, nil
	}
	create, err := get(eventauth.StateKey{Type: "m.room.create"})
	if err != nil {
		return nil, err
	}
	if create == nil {
		// Only an out-of-band membership (an invite through another
		// server) is known of this room: there is no state to build on.
		return nil, mxhttp.NotFound("This server has no state of room %s", roomID)
	}
	auth := eventauth.StateMap{}
	if rv.RoomIDFromCreate {
		auth[eventauth.StateKey{Type: "m.room.create"}] = create
	}
	authIDs := []string{}
	for _, k := range eventauth.AuthEventsNeeded("m.room.member", &target, sender, content, rv) {
		ev, err := get(k)
		if err != nil {
			return nil, err
		}
		if ev != nil {
			auth[k] = ev
			authIDs = append(authIDs, ev.EventID())
		}
	}
	prev, depth, err := s.store.ForwardExtremities(ctx, roomID)
	if err != nil {
		return nil, err
	}
	if len(prev) == 0 {
		return nil, mxhttp.NotFound("This server has no timeline of room %s", roomID)
	}
	if len(prev) > maxPrevEvents {
		prev = prev[:maxPrevEvents]
	}
	ev, err := events.Build(events.ProtoEvent{
		RoomID: roomID, Sender: sender, Type: "m.room.member", StateKey: &target, Content: content,
		PrevEvents: prev, AuthEvents: authIDs, Depth: min(depth+1, maxDepth), OriginServerTS: now.UnixMilli(),
	}, rv, key, s.cfg.ServerName)
	if err != nil {
		if errors.Is(err, events.ErrEventTooLarge) {
			return nil, mxhttp.TooLarge("Event too large")
		}
		return nil, mxhttp.BadJSON("Invalid member event: %v", err)
	}
	if err := eventauth.Check(ev, auth); err != nil {
		var na *eventauth.NotAllowedError
		if errors.As(err, &na) {
			return nil, mxhttp.Forbidden("%s", na.Reason)
		}
		return nil, fmt.Errorf("auth check of a member event in %s: %w", roomID, err)
	}
	return ev, nil
}

// RemoteJoinContent is the content of the join template this server, as a
// resident server, offers a user of another server (make_join): in a
// restricted room, the join names a local member who may invite as its
// authoriser (restricted.go). A banned user is refused.
func (s *Service) RemoteJoinContent(ctx context.Context, roomID, userID string) (json.RawMessage, error) {
	m, _, err := s.store.Membership(ctx, roomID, userID)
	if err != nil {
		return nil, err
	}
	if m == "ban" {
		return nil, mxhttp.Forbidden("%s is banned from the room", userID)
	}
	c := map[string]any{"membership": "join"}
	if err := s.authoriseRestrictedJoin(ctx, roomID, userID, c); err != nil {
		return nil, err
	}
	return mustJSON(c), nil
}

// StrippedStateTypes is the state shared with invitees and knockers
// (Synapse's room_prejoin_state defaults): the invite_room_state this
// server sends with an invite and the knock_room_state of a send_knock.
var StrippedStateTypes = []eventauth.StateKey{
	{Type: "m.room.create"}, {Type: "m.room.join_rules"}, {Type: "m.room.name"}, {Type: "m.room.avatar"},
	{Type: "m.room.canonical_alias"}, {Type: "m.room.encryption"}, {Type: "m.room.topic"},
}

// StrippedState is the room's current stripped state (StrippedStateTypes),
// as {type, state_key, sender, content} objects.
func (s *Service) StrippedState(ctx context.Context, roomID string) ([]json.RawMessage, error) {
	out := []json.RawMessage{}
	for _, k := range StrippedStateTypes {
		se, err := s.store.CurrentStateEvent(ctx, roomID, k.Type, k.StateKey)
		if err != nil {
			return nil, err
		}
		if se == nil {
			continue
		}
		out = append(out, mustJSON(map[string]any{"type": se.Event.Type(), "state_key": k.StateKey,
			"sender": se.Event.Sender(), "content": se.Event.Content()}))
	}
	return out, nil
}

// LocalHostInRoom reports whether a user of this server is joined to the
// room: only then can this server build the room's events itself.
func (s *Service) LocalHostInRoom(ctx context.Context, roomID string) (bool, error) {
	// Server names have no LIKE wildcards (%, _ are not in the grammar),
	// so the suffix match is exact but for ASCII case under SQLite, and a
	// user id's server part is everything after its first colon.
	var one int
	err := s.store.db.Reader().QueryRowContext(ctx, `SELECT 1 FROM current_state
		WHERE room_id = $1 AND type = 'm.room.member' AND membership = 'join' AND state_key LIKE $2 LIMIT 1`,
		roomID, "%:"+s.cfg.ServerName).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("local members of %s: %w", roomID, err)
	}
	return true, nil
}

// RemoteMembership performs the membership handshakes with other servers
// for rooms this server cannot build events in itself
// (internal/federation/joins). Each method returns once the resulting
// event is persisted here and readable.
type RemoteMembership interface {
	// Join joins userID to a room this server has no joined user in,
	// through the first of servers that answers (make_join, send_join).
	Join(ctx context.Context, userID, roomID string, servers []string, content json.RawMessage) (string, error)
	// Knock knocks on such a room (make_knock, send_knock).
	Knock(ctx context.Context, userID, roomID string, servers []string, content json.RawMessage) (string, error)
	// Leave leaves such a room, whose membership here (an invite or a
	// knock) came through another server (make_leave, send_leave).
	Leave(ctx context.Context, userID, roomID string, servers []string, content json.RawMessage) (string, error)
	// Invite invites target, a user of another server, to a room this
	// server is in: the invitee's server co-signs the invite first.
	Invite(ctx context.Context, sender, roomID, target string, content json.RawMessage) (string, error)
	// QueryAlias resolves an alias of another server (query/directory):
	// the room id and servers to join it through.
	QueryAlias(ctx context.Context, alias string) (string, []string, error)
}

// SetRemoteMembership lets the membership endpoints reach rooms and users
// of other servers. Without it they answer as a server that does not
// federate.
func (s *Service) SetRemoteMembership(r RemoteMembership) { s.remote = r }

// remoteServers lists the servers to reach a room this server has no
// joined user in through: the hint (the client's via and server_name, an
// alias's servers), then the server of whoever invited userID (or whose
// room userID knocked on), then the room id's server. Ours is left out.
func (s *Service) remoteServers(ctx context.Context, roomID, userID string, hint []string) ([]string, error) {
	var out []string
	add := func(srv string) {
		if srv != "" && srv != s.cfg.ServerName && !slices.Contains(out, srv) {
			out = append(out, srv)
		}
	}
	for _, h := range hint {
		add(h)
	}
	se, err := s.store.CurrentStateEvent(ctx, roomID, "m.room.member", userID)
	if err != nil {
		return nil, err
	}
	if se != nil && se.Event.Sender() != userID {
		_, srv, _ := accounts.SplitUserID(se.Event.Sender())
		add(srv)
	}
	if i := strings.IndexByte(roomID, ':'); i > 0 {
		add(roomID[i+1:])
	}
	return out, nil
}

// remoteTarget decides whether a membership change of userID in roomID
// must go through another server: the room is unknown here, or known
// without any local user joined (only through an invite, or every local
// user left). It returns the servers to try, none meaning "do it locally"
// (or fail as an unknown room).
func (s *Service) remoteTarget(ctx context.Context, roomID, userID string, hint []string) ([]string, error) {
	if s.remote == nil {
		return nil, nil
	}
	exists, err := s.store.RoomExists(ctx, roomID)
	if err != nil {
		return nil, err
	}
	if exists {
		hosted, err := s.LocalHostInRoom(ctx, roomID)
		if err != nil || hosted {
			return nil, err
		}
	}
	return s.remoteServers(ctx, roomID, userID, hint)
}

// leaveRemotely rejects an invite (or withdraws a knock) that came through
// another server, for a room no local user is joined to: the leave must be
// built by a resident server. done is false when the leave is local.
func (s *Service) leaveRemotely(ctx context.Context, userID, roomID string, content map[string]any) (string, bool, error) {
	if s.remote == nil {
		return "", false, nil
	}
	m, _, err := s.store.Membership(ctx, roomID, userID)
	if err != nil || (m != "invite" && m != "knock") {
		return "", false, err
	}
	servers, err := s.remoteTarget(ctx, roomID, userID, nil)
	if err != nil || len(servers) == 0 {
		return "", false, err
	}
	id, err := s.remote.Leave(ctx, userID, roomID, servers, mustJSON(content))
	return id, true, err
}

// joinOrKnockRemotely joins or knocks through another server when the room
// needs it (remoteTarget); done is false when the change is local.
func (s *Service) joinOrKnockRemotely(ctx context.Context, req *accounts.Requester, roomID string, ch MembershipChange,
	hint []string) (string, bool, error) {
	servers, err := s.remoteTarget(ctx, roomID, req.UserID, hint)
	if err != nil || len(servers) == 0 {
		return "", false, err
	}
	if err := s.checkMessageRate(req); err != nil {
		return "", true, err
	}
	if ch.Membership == "join" && !req.RateLimitExempt {
		if err := takeAll(take{s.limits.JoinsRemote, req.UserID, 1}); err != nil {
			return "", true, err
		}
	}
	c, err := s.memberContent(ctx, ch, ch.Membership)
	if err != nil {
		return "", true, err
	}
	var id string
	if ch.Membership == "knock" {
		id, err = s.remote.Knock(ctx, req.UserID, roomID, servers, mustJSON(c))
	} else {
		id, err = s.remote.Join(ctx, req.UserID, roomID, servers, mustJSON(c))
	}
	return id, true, err
}

// viaServers reads the server_name and via query parameters of /join and
// /knock.
func viaServers(q url.Values) []string {
	return slices.Concat(q["via"], q["server_name"])
}
