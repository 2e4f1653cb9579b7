// Package typing owns the typing stream: who is typing in which room. The
// stream lives only in its writer's memory (DESIGN §2: typing is an
// in-memory stream with a single writer) and resets when the writer
// restarts; nothing about typing is ever written to the database.
//
// Callers hold a Writer. Today the only implementation is the local
// *Service; a process that does not write the stream will get one that
// forwards over HTTP replication, behind the same interface.
package typing

import (
	"container/heap"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"sync"
	"time"

	"ganglion/internal/streams"
)

// Timeouts of a typing notification. The spec leaves both to the server;
// clients re-send every 20–30 s while the user types, so 30 s matches what
// they expect when they omit timeout, and 120 s bounds how long a client
// that vanished can leave a user "typing" (Synapse caps nothing, which lets
// a client pin a typer for hours).
const (
	DefaultTimeout = 30 * time.Second
	MaxTimeout     = 120 * time.Second
)

// Writer changes typing state. The local *Service implements it on the
// stream's writer; other processes will forward to the writer.
type Writer interface {
	// SetTyping marks userID as typing in roomID for timeout (0 means
	// DefaultTimeout; longer than MaxTimeout is capped), or as no longer
	// typing. It does not check membership: the caller does.
	SetTyping(ctx context.Context, roomID, userID string, typing bool, timeout time.Duration) error
}

var _ Writer = (*Service)(nil)

// Row is one typing stream row: the room's full list of typers after a
// change. It replaces whatever a reader knew about the room, so a reader
// that skips rows loses nothing but intermediate states. On the wire it is
// Synapse's `[room_id, [user_ids]]`.
type Row struct {
	RoomID  string
	UserIDs []string
}

// MarshalJSON writes the row as `[room_id, [user_ids]]`.
func (r Row) MarshalJSON() ([]byte, error) {
	ids := r.UserIDs
	if ids == nil {
		ids = []string{}
	}
	return json.Marshal([]any{r.RoomID, ids})
}

// UnmarshalJSON reads `[room_id, [user_ids]]`.
func (r *Row) UnmarshalJSON(b []byte) error {
	var parts []json.RawMessage
	if err := json.Unmarshal(b, &parts); err != nil {
		return fmt.Errorf("typing row: %w", err)
	}
	if len(parts) != 2 {
		return fmt.Errorf("typing row: want 2 elements, got %d", len(parts))
	}
	var out Row
	if err := json.Unmarshal(parts[0], &out.RoomID); err != nil {
		return fmt.Errorf("typing row room id: %w", err)
	}
	if err := json.Unmarshal(parts[1], &out.UserIDs); err != nil {
		return fmt.Errorf("typing row user ids: %w", err)
	}
	*r = out
	return nil
}

// Options tune a Service; the zero value is production behaviour.
type Options struct {
	// Now is the clock (default time.Now).
	Now func() time.Time
	// After returns a channel that receives once d has passed (default
	// time.After). Tests substitute a manual clock for it and Now so that
	// expiry fires exactly when they advance time.
	After func(d time.Duration) <-chan time.Time
	// Start, when set, is the first position (tests); by default positions
	// start from the clock so a restarted writer never reuses old ones.
	Start *int64
}

// Service is the local writer of the typing stream and its read side.
//
// Positions are an in-memory counter: every change to a room's list takes
// the next one, so a reader that has seen position p has seen every room's
// list as of p. After a restart the counter starts again at 0 (see
// Changes for how a reader holding an older, larger position is served).
type Service struct {
	reg   *streams.Registry
	log   *slog.Logger
	now   func() time.Time
	after func(time.Duration) <-chan time.Time
	// kick wakes the expiry loop when a deadline earlier than the one it
	// sleeps towards was added; one slot so a kick is never lost.
	kick chan struct{}

	mu    sync.Mutex
	pos   int64
	rooms map[string]*room
	// changes holds (position, room) in position order, so Changes finds
	// the rooms changed after a position without scanning every room. An
	// entry is current only if it is its room's last change; stale ones are
	// compacted away once they outnumber the rooms.
	changes  []logEntry
	deadline deadlines
}

type room struct {
	typers  map[string]time.Time // user → when their typing expires
	changed int64                // position of the room's last change
}

type logEntry struct {
	pos    int64
	roomID string
}

// NewService builds the typing writer. It refuses to run on a process that
// is not the stream's configured writer: two processes each counting their
// own positions would hand clients tokens that mean different things.
// Call Run for timeouts to expire.
func NewService(reg *streams.Registry, opts Options, log *slog.Logger) (*Service, error) {
	if !reg.IsWriter(streams.Typing) {
		return nil, fmt.Errorf("typing: instance %s is not the writer of the typing stream (writers %v)",
			reg.Instance(), reg.Writers(streams.Typing))
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Service{reg: reg, log: log.With("stream", string(streams.Typing)), now: opts.Now, after: opts.After,
		kick: make(chan struct{}, 1), rooms: map[string]*room{}}
	if s.now == nil {
		s.now = time.Now
	}
	if s.after == nil {
		s.after = time.After
	}
	// Positions live in memory, so a restarted writer must not count again
	// from where an earlier run started: clients hold tokens with the old
	// positions and would miss every change until the counter passed them.
	// Starting from the clock (in 1/1000 ms, room for a thousand changes a
	// millisecond) puts every run above the last one.
	s.pos = s.now().UnixMilli() * 1000
	if opts.Start != nil {
		s.pos = *opts.Start
	}
	reg.Advance(streams.Typing, reg.Instance(), s.pos)
	return s, nil
}

// clampTimeout applies the default and the cap.
func clampTimeout(d time.Duration) time.Duration {
	switch {
	case d <= 0:
		return DefaultTimeout
	case d > MaxTimeout:
		return MaxTimeout
	}
	return d
}

// SetTyping implements Writer. Refreshing a user who is already typing only
// moves their deadline: the list is unchanged, so no stream row is made and
// nobody is woken (clients refresh every few seconds while typing).
func (s *Service) SetTyping(ctx context.Context, roomID, userID string, typing bool, timeout time.Duration) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("set typing of %s in %s: %w", userID, roomID, err)
	}
	if roomID == "" || userID == "" {
		return errors.New("set typing: empty room or user id")
	}
	s.mu.Lock()
	r := s.rooms[roomID]
	var pos int64
	if typing {
		until := s.now().Add(clampTimeout(timeout))
		if r == nil {
			r = &room{typers: map[string]time.Time{}}
			s.rooms[roomID] = r
		}
		_, was := r.typers[userID]
		r.typers[userID] = until
		earliest := len(s.deadline) == 0 || until.Before(s.deadline[0].at)
		heap.Push(&s.deadline, deadline{at: until, roomID: roomID, userID: userID})
		if !was {
			pos = s.changedLocked(roomID, r)
		}
		if earliest {
			select {
			case s.kick <- struct{}{}:
			default:
			}
		}
	} else if r != nil {
		if _, was := r.typers[userID]; was {
			delete(r.typers, userID)
			pos = s.changedLocked(roomID, r)
		}
	}
	s.mu.Unlock()
	if pos > 0 {
		s.publish(pos, roomID)
	}
	return nil
}

// changedLocked gives the room's change the next position.
func (s *Service) changedLocked(roomID string, r *room) int64 {
	s.pos++
	r.changed = s.pos
	s.changes = append(s.changes, logEntry{pos: s.pos, roomID: roomID})
	if len(s.changes) > 2*len(s.rooms)+64 {
		kept := s.changes[:0]
		for _, e := range s.changes {
			if s.rooms[e.roomID].changed == e.pos {
				kept = append(kept, e)
			}
		}
		clear(s.changes[len(kept):])
		s.changes = kept
	}
	return s.pos
}

// publish runs after the change is visible to readers (the mutex is
// released), so a woken reader always finds it. Advances may arrive out of
// order from concurrent changes; the registry keeps the maximum.
func (s *Service) publish(pos int64, roomIDs ...string) {
	s.reg.Advance(streams.Typing, s.reg.Instance(), pos)
	keys := make([]string, len(roomIDs))
	for i, id := range roomIDs {
		keys[i] = streams.RoomKey(id)
	}
	s.reg.Notifier().Wake(keys...)
}

// Typing returns the users currently typing in roomID, sorted.
func (s *Service) Typing(roomID string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.rooms[roomID]
	if r == nil {
		return []string{}
	}
	return sortedTypers(r)
}

func sortedTypers(r *room) []string {
	out := make([]string, 0, len(r.typers))
	for u := range r.typers {
		out = append(out, u)
	}
	slices.Sort(out)
	return out
}

// Position is the stream's current position on this writer.
func (s *Service) Position() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pos
}

// Changes returns one row per room whose list changed after from, each with
// the room's full current list, in order of their last change, and the
// position the rows bring a reader to.
//
// A from beyond the current position can only come from before a restart of
// this writer (positions reset to 0); it is read as 0 so the reader gets
// every room with typers since the restart instead of nothing until the
// counter catches up.
func (s *Service) Changes(from int64) (rows []Row, to int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if from > s.pos {
		from = 0
	}
	for _, e := range s.changedAfterLocked(from) {
		rows = append(rows, Row{RoomID: e, UserIDs: sortedTypers(s.rooms[e])})
	}
	return rows, s.pos
}

// ChangedRooms lists the rooms whose typing changed after from, for sync
// (which then reads each room's list with Typing). A room whose latest
// change is also after to is included: only each room's latest change is
// kept, and handing out a list newer than to is harmless because a typing
// list replaces the previous one; the reader sees it once more next time.
func (s *Service) ChangedRooms(from, to int64) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if from > s.pos {
		from = 0
	}
	if to <= from {
		return nil
	}
	return s.changedAfterLocked(from)
}

func (s *Service) changedAfterLocked(from int64) []string {
	i := sort.Search(len(s.changes), func(i int) bool { return s.changes[i].pos > from })
	var out []string
	for _, e := range s.changes[i:] {
		if s.rooms[e.roomID].changed == e.pos {
			out = append(out, e.roomID)
		}
	}
	return out
}

// Run expires typing notifications until ctx ends. It sleeps until the
// earliest deadline (one timer for all users, no polling) and is woken early
// when an earlier deadline appears. Without Run nobody ever stops typing
// unless their client says so.
func (s *Service) Run(ctx context.Context) error {
	for {
		s.mu.Lock()
		var wait <-chan time.Time
		if len(s.deadline) > 0 {
			d := s.deadline[0].at.Sub(s.now())
			if d <= 0 {
				s.mu.Unlock()
				s.expire()
				continue
			}
			wait = s.after(d)
		}
		s.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil
		case <-s.kick:
		case <-wait:
			s.expire()
		}
	}
}

// expire removes every typer whose deadline has passed; each room that
// changed gets a position and a wake, exactly like a client's "stopped".
func (s *Service) expire() {
	now := s.now()
	s.mu.Lock()
	var changed []string
	var pos int64
	for len(s.deadline) > 0 && !s.deadline[0].at.After(now) {
		d := heap.Pop(&s.deadline).(deadline)
		r := s.rooms[d.roomID]
		if r == nil {
			continue
		}
		// A refresh pushed a later deadline for the same user; this one is
		// stale unless it is still the user's current deadline.
		if until, ok := r.typers[d.userID]; !ok || !until.Equal(d.at) {
			continue
		}
		delete(r.typers, d.userID)
		pos = s.changedLocked(d.roomID, r)
		changed = append(changed, d.roomID)
	}
	s.mu.Unlock()
	if len(changed) > 0 {
		s.log.Debug("typing expired", "rooms", len(changed))
		s.publish(pos, changed...)
	}
}

// deadline is one user's typing expiry; the heap orders them by time.
type deadline struct {
	at             time.Time
	roomID, userID string
}

type deadlines []deadline

func (h deadlines) Len() int           { return len(h) }
func (h deadlines) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h deadlines) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *deadlines) Push(x any)        { *h = append(*h, x.(deadline)) }
func (h *deadlines) Pop() any {
	old := *h
	n := len(old)
	x := old[n-1]
	old[n-1] = deadline{}
	*h = old[:n-1]
	return x
}
