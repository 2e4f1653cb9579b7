// Package backfill fetches a room's history from other servers when a
// client pages back past the oldest event stored here (a room joined
// through another server starts at the join): GET /backfill from a server
// in the room, each event checked (content hash, signatures, auth events)
// and stored below the timeline by the room's persister.
package backfill

import (
	"cmp"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"ganglion/internal/events"
	"ganglion/internal/rooms"
	"ganglion/internal/storage"
)

// Fetcher is the signed federation client (/backfill and /event_auth
// need X-Matrix authentication).
type Fetcher interface {
	SignedGetJSON(ctx context.Context, destination, path string, out any) error
}

// Verifier checks event signatures (the keyring).
type Verifier interface {
	VerifyEventSignatures(ctx context.Context, ev *events.Event) error
}

// Backfiller implements rooms.Backfiller.
type Backfiller struct {
	ServerName string
	DB         *storage.DB
	Client     Fetcher
	Keys       Verifier
	Writer     rooms.RemoteWriter
	Log        *slog.Logger
}

var _ rooms.Backfiller = (*Backfiller)(nil)

// Limits: events asked per request (the spec leaves it to the server;
// Synapse asks 100 at most) and servers tried.
const (
	maxBackfill = 100
	maxServers  = 3
	// maxAuthFetches bounds the /event_auth requests one page makes.
	maxAuthFetches = 5
)

// Backfill implements rooms.Backfiller.
func (b *Backfiller) Backfill(ctx context.Context, roomID string, limit int) (int, error) {
	var oldest, typ, version string
	err := b.DB.Reader().QueryRowContext(ctx, `SELECT e.event_id, e.type, r.room_version FROM events e JOIN rooms r ON r.room_id = e.room_id
		WHERE e.room_id = $1 AND NOT e.outlier ORDER BY e.stream_ordering ASC LIMIT 1`, roomID).Scan(&oldest, &typ, &version)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("find the oldest event of %s: %w", roomID, err)
	}
	if typ == "m.room.create" {
		return 0, nil // the whole history is here
	}
	rv, ok := events.LookupRoomVersion(version)
	if !ok {
		return 0, fmt.Errorf("room %s has unknown version %q", roomID, version)
	}
	servers, err := b.servers(ctx, roomID)
	if err != nil {
		return 0, err
	}
	n := min(max(limit, 10)+1, maxBackfill) // v itself comes back too
	var lastErr error
	for _, server := range servers {
		stored, err := b.from(ctx, server, roomID, rv, oldest, n)
		if err == nil {
			return stored, nil
		}
		lastErr = err
		b.Log.Info("backfill from a server failed", "room_id", roomID, "server", server, "err", err)
	}
	return 0, lastErr
}

// servers lists the other servers with users joined to the room, the
// room id's own server first (it created the room, so it likely has the
// oldest history).
func (b *Backfiller) servers(ctx context.Context, roomID string) ([]string, error) {
	rows, err := b.DB.Reader().QueryContext(ctx, `SELECT state_key FROM current_state
		WHERE room_id = $1 AND type = 'm.room.member' AND membership = 'join'`, roomID)
	if err != nil {
		return nil, fmt.Errorf("list servers of %s: %w", roomID, err)
	}
	defer rows.Close()
	seen := map[string]bool{b.ServerName: true}
	var out []string
	for rows.Next() {
		var user string
		if err := rows.Scan(&user); err != nil {
			return nil, fmt.Errorf("list servers of %s: %w", roomID, err)
		}
		if s := serverOf(user); s != "" && !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list servers of %s: %w", roomID, err)
	}
	slices.Sort(out)
	if home := serverOf(roomID); home != "" {
		if i := slices.Index(out, home); i > 0 {
			out = append([]string{home}, slices.Delete(out, i, i+1)...)
		}
	}
	return out[:min(len(out), maxServers)], nil
}

func serverOf(id string) string {
	if i := strings.IndexByte(id, ':'); i >= 0 {
		return id[i+1:]
	}
	return ""
}

type pduList struct {
	PDUs []json.RawMessage `json:"pdus"`
}

// from backfills from one server.
func (b *Backfiller) from(ctx context.Context, server, roomID string, rv *events.RoomVersion, oldest string, n int) (int, error) {
	var resp pduList
	path := "/_matrix/federation/v1/backfill/" + url.PathEscape(roomID) + "?v=" + url.QueryEscape(oldest) + "&limit=" + strconv.Itoa(n)
	if err := b.Client.SignedGetJSON(ctx, server, path, &resp); err != nil {
		return 0, err
	}
	pdus := ancestors(b.check(ctx, roomID, rv, resp.PDUs, n), oldest)
	if len(pdus) == 0 {
		return 0, nil
	}
	res, err := b.Writer.PersistRemote(ctx, roomID, rooms.RemoteBatch{Backfill: true, PDUs: pdus})
	if err != nil {
		return 0, err
	}
	// Events whose auth events are not stored here: fetch those events'
	// auth chains from the same server and try them again.
	var retry []rooms.RemotePDU
	var outliers []json.RawMessage
	stored, fetches := 0, 0
	for i, r := range res {
		switch r.Outcome {
		case rooms.RemotePersisted:
			stored++
		case rooms.RemoteMissingPrev:
			if fetches++; fetches > maxAuthFetches {
				continue
			}
			var chain struct {
				AuthChain []json.RawMessage `json:"auth_chain"`
			}
			p := "/_matrix/federation/v1/event_auth/" + url.PathEscape(roomID) + "/" + url.PathEscape(r.EventID)
			if err := b.Client.SignedGetJSON(ctx, server, p, &chain); err != nil {
				b.Log.Info("could not fetch the auth chain of a backfilled event", "event_id", r.EventID, "err", err)
				continue
			}
			for _, c := range b.check(ctx, roomID, rv, chain.AuthChain, maxBackfill) {
				outliers = append(outliers, c.raw)
			}
			retry = append(retry, pdus[i])
		}
	}
	if len(retry) > 0 {
		res, err := b.Writer.PersistRemote(ctx, roomID, rooms.RemoteBatch{Backfill: true, Outliers: outliers, PDUs: retry})
		if err != nil {
			return stored, err
		}
		for _, r := range res[len(outliers):] {
			if r.Outcome == rooms.RemotePersisted {
				stored++
			}
		}
	}
	return stored, nil
}

// ancestors keeps the events of an answer that are v or reachable from
// it through prev_events within the answer (a server sends history, not
// events of its choosing), newest first.
func ancestors(evs []checkedEvent, v string) []rooms.RemotePDU {
	order := slices.Clone(evs)
	slices.SortStableFunc(order, func(a, b checkedEvent) int { return cmp.Compare(b.ev.Depth(), a.ev.Depth()) })
	reach := map[string]bool{v: true}
	var out []rooms.RemotePDU
	// An event's prev events are older: one pass in descending depth
	// reaches every ancestor.
	for _, c := range order {
		if !reach[c.ev.EventID()] {
			continue
		}
		out = append(out, rooms.RemotePDU{Event: c.raw})
		for _, p := range c.ev.PrevEventIDs() {
			reach[p] = true
		}
	}
	return out
}

// checkedEvent is an event of an answer that passed check: raw is what to
// store (redacted when its content hash did not match).
type checkedEvent struct {
	ev  *events.Event
	raw json.RawMessage
}

// check parses the events of another server's answer and keeps those of
// the room with valid signatures; an event whose content hash does not
// match is kept redacted, as the spec asks.
func (b *Backfiller) check(ctx context.Context, roomID string, rv *events.RoomVersion, raws []json.RawMessage, n int) []checkedEvent {
	var out []checkedEvent
	for _, raw := range raws[:min(len(raws), n)] {
		ev, err := events.Parse(raw, rv)
		if err != nil || ev.RoomID() != roomID {
			continue
		}
		if err := b.Keys.VerifyEventSignatures(ctx, ev); err != nil {
			b.Log.Info("dropping a backfilled event with bad signatures", "event_id", ev.EventID(), "err", err)
			continue
		}
		if events.CheckContentHash(ev) != nil {
			red, err := events.Redact(ev.JSON(), rv)
			if err != nil {
				continue
			}
			raw = red
		}
		out = append(out, checkedEvent{ev: ev, raw: raw})
	}
	return out
}
