package typing

import (
	"context"
	"encoding/json"
	"slices"
	"sort"
	"sync"

	"ganglion/internal/streams"
)

// Rows implements streams.Source on the writer: each room whose list last
// changed in (from, to] with its full current list, token = that change.
func (s *Service) Rows(ctx context.Context, writer string, from, to int64, limit int) ([]streams.Row, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if from > s.pos {
		from = 0
	}
	var out []streams.Row
	for _, roomID := range s.changedAfterLocked(from) {
		r := s.rooms[roomID]
		if r.changed > to {
			break // later rooms changed even later: entries are in position order
		}
		data, err := json.Marshal(Row{RoomID: roomID, UserIDs: sortedTypers(r)})
		if err != nil {
			return nil, err
		}
		out = append(out, streams.Row{Token: r.changed, Data: data})
		if len(out) == limit {
			break
		}
	}
	return out, nil
}

// Apply implements streams.Source; the single writer never applies rows
// from elsewhere.
func (s *Service) Apply(ctx context.Context, writer string, row streams.Row) []string { return nil }

var _ streams.Source = (*Service)(nil)

// Replica is the typing stream's read side on processes that do not write
// it: it holds each room's last list as replicated from the writer, and
// fetches rows it missed from the writer over HTTP (the stream lives only
// in the writer's memory).
type Replica struct {
	fetch func(ctx context.Context, from, to int64, limit int) ([]streams.Row, error)

	mu      sync.Mutex
	rooms   map[string][]string
	changed map[string]int64
}

// NewReplica builds a replica; fetch asks the writer for rows in (from, to].
func NewReplica(fetch func(ctx context.Context, from, to int64, limit int) ([]streams.Row, error)) *Replica {
	return &Replica{fetch: fetch, rooms: map[string][]string{}, changed: map[string]int64{}}
}

var (
	_ streams.Source = (*Replica)(nil)
)

// Rows implements streams.Source by asking the writer.
func (r *Replica) Rows(ctx context.Context, writer string, from, to int64, limit int) ([]streams.Row, error) {
	return r.fetch(ctx, from, to, limit)
}

// Apply implements streams.Source: the row replaces the room's list.
func (r *Replica) Apply(ctx context.Context, writer string, row streams.Row) []string {
	var tr Row
	if err := json.Unmarshal(row.Data, &tr); err != nil {
		return nil
	}
	r.mu.Lock()
	if len(tr.UserIDs) == 0 {
		delete(r.rooms, tr.RoomID)
	} else {
		r.rooms[tr.RoomID] = slices.Clone(tr.UserIDs)
	}
	r.changed[tr.RoomID] = row.Token
	r.mu.Unlock()
	return []string{streams.RoomKey(tr.RoomID)}
}

// Reset forgets everything: the writer restarted and its positions and
// lists start from nothing.
func (r *Replica) Reset(writer string) {
	r.mu.Lock()
	r.rooms = map[string][]string{}
	r.changed = map[string]int64{}
	r.mu.Unlock()
}

// Typing is the room's current typers as last replicated.
func (r *Replica) Typing(roomID string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.rooms[roomID])
}

// ChangedRooms lists rooms whose list changed after from.
func (r *Replica) ChangedRooms(from, to int64) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for room, pos := range r.changed {
		if pos > from {
			out = append(out, room)
		}
	}
	sort.Strings(out)
	return out
}
