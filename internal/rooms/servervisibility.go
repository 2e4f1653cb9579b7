package rooms

import (
	"context"
	"fmt"
	"sort"
	"strings"
)

// ServerVisibility decides which of a room's events another server may
// read over federation (Synapse's filter_events_for_server): an event
// whose history visibility (in the state at the event, the event
// included) is "shared" or "world_readable" is visible to any server
// allowed into the room at all; under "invited" or "joined" the server
// needs a user who, in that state, is joined (or, for "invited", invited).
// Events a server may not see are served to it redacted.
//
// The state at an event includes the event itself, as Synapse's state
// group of an event does: a server's own user's join is visible to it.
type ServerVisibility struct {
	server string
	hv     []hvChange
	// members holds, per user of the server, every membership change in
	// the room, oldest first.
	members map[string][]stateChange
}

// ServerVisibilityFor loads what deciding visibility for server needs in
// roomID: the history visibility settings and the membership history of
// the server's users, each in one query. It reads the database, not the
// sync state cache: federation reads are not bounded by this process's
// stream positions.
func (s *Service) ServerVisibilityFor(ctx context.Context, roomID, server string) (*ServerVisibility, error) {
	v := &ServerVisibility{server: server}
	var err error
	if v.hv, err = s.historyVisibility(ctx, nil, roomID); err != nil {
		return nil, err
	}
	if v.members, err = s.store.serverMemberHistory(ctx, roomID, server); err != nil {
		return nil, err
	}
	return v, nil
}

// serverMemberHistory returns every membership change of the server's
// users in the room, per user, oldest first.
func (s *Store) serverMemberHistory(ctx context.Context, roomID, server string) (map[string][]stateChange, error) {
	// A suffix LIKE narrows the room's member rows; the exact domain is
	// checked below (SQLite's LIKE ignores ASCII case).
	pattern := "%:" + escapeLike(server)
	rows, err := s.db.Reader().QueryContext(ctx, `SELECT state_key, stream_ordering, event_id, membership FROM state_log
		WHERE room_id = $1 AND type = 'm.room.member' AND state_key LIKE $2 ESCAPE '\'
		ORDER BY stream_ordering`, roomID, pattern)
	if err != nil {
		return nil, fmt.Errorf("members of %s in %s: %w", server, roomID, err)
	}
	defer rows.Close()
	out := map[string][]stateChange{}
	for rows.Next() {
		var user string
		var c stateChange
		var m *string
		if err := rows.Scan(&user, &c.pos, &c.eventID, &m); err != nil {
			return nil, fmt.Errorf("members of %s in %s: %w", server, roomID, err)
		}
		if i := strings.IndexByte(user, ':'); i < 0 || user[i+1:] != server {
			continue
		}
		if m != nil {
			c.membership = *m
		}
		out[user] = append(out[user], c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("members of %s in %s: %w", server, roomID, err)
	}
	return out, nil
}

func escapeLike(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`)
	return r.Replace(s)
}

// EverJoined reports whether a user of the server has ever been joined to
// the room. A server that never had one has no business reading it.
func (v *ServerVisibility) EverJoined() bool {
	for _, changes := range v.members {
		for _, c := range changes {
			if c.membership == "join" {
				return true
			}
		}
	}
	return false
}

// historyVisibilityAfter is the setting in the state after the event at
// pos ("shared", the spec's default, before any is set).
func (v *ServerVisibility) historyVisibilityAfter(pos int64) string {
	i := sort.Search(len(v.hv), func(i int) bool { return v.hv[i].pos > pos })
	if i == 0 {
		return "shared"
	}
	return v.hv[i-1].value
}

// CanSee reports whether the server may see the event unredacted.
func (v *ServerVisibility) CanSee(se *StoredEvent) bool {
	pos := se.StreamOrdering
	hv := v.historyVisibilityAfter(pos)
	if hv != "invited" && hv != "joined" {
		return true
	}
	for _, changes := range v.members {
		i := sort.Search(len(changes), func(i int) bool { return changes[i].pos > pos })
		if i == 0 {
			continue
		}
		switch changes[i-1].membership {
		case "join":
			return true
		case "invite":
			if hv == "invited" {
				return true
			}
		}
	}
	return false
}

// ResolveAliasAsking returns the room a local alias points to ("" if
// none), asking the application service whose namespace holds an unknown
// alias first, as the client directory lookup does.
func (s *Service) ResolveAliasAsking(ctx context.Context, alias string) (string, error) {
	return s.resolveAliasAsking(ctx, alias)
}
