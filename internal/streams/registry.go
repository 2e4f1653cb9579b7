package streams

import (
	"context"
	"fmt"
	"slices"
	"sync"
)

// Name is a stream's wire name.
type Name string

// The streams that exist. Their order is the order of sync tokens'
// components (see Token).
const (
	Events      Name = "events"
	Presence    Name = "presence"
	Typing      Name = "typing"
	Receipts    Name = "receipts"
	AccountData Name = "account_data"
	PushRules   Name = "push_rules"
	ToDevice    Name = "to_device"
	DeviceLists Name = "device_lists"
	Caches      Name = "caches"
)

// Storage says where a stream's rows live.
type Storage int

const (
	// InTable streams are read back from the database after a gap.
	InTable Storage = iota
	// InMemory streams (typing) live only in the writer's memory and reset
	// when it restarts; readers catch up from the writer over HTTP.
	InMemory
)

// Def declares one stream.
type Def struct {
	Name    Name
	Storage Storage
	// MultiWriter streams may have several writers; their current position
	// for a reader is the minimum over writers.
	MultiWriter bool
	// PerWriterReads streams are read per writer (each room's events come
	// from one persister), so a row is readable as soon as its own writer
	// has passed it: wake-ups are not held for the minimum.
	PerWriterReads bool
}

// Registry is the one place streams are declared and their positions kept.
// Every process has one; positions advance from local commits (via a
// Tracker) and, in a fleet, from replication.
type Registry struct {
	instance string
	mu       sync.Mutex
	streams  map[Name]*stream
	notifier *Notifier
	ids      map[string]int // events writer → id in vector tokens
	names    map[int]string
	catchUp  CatchUpFunc
}

type stream struct {
	def      Def
	writers  []string
	pos      map[string]int64 // writer → latest known position
	changed  chan struct{}    // closed and replaced on every advance
	trackers map[string]*Tracker
	source   Source
	// pending holds wake-ups for positions beyond the stream's current
	// (minimum) position: on a multi-writer stream a row from one writer is
	// not readable until every writer has passed it, so waking its
	// listeners earlier would let them read nothing and sleep again.
	pending []pendingWake
}

type pendingWake struct {
	writer string // for PerWriterReads streams: whose position must reach token
	token  int64
	keys   []string
}

// NewRegistry builds the registry for one process. writers maps each stream
// to its configured writer instances; a stream missing from it is written by
// "main".
func NewRegistry(instance string, defs []Def, writers map[Name][]string, notifier *Notifier) (*Registry, error) {
	r := &Registry{instance: instance, streams: map[Name]*stream{}, notifier: notifier}
	for _, d := range defs {
		w := writers[d.Name]
		if len(w) == 0 {
			w = []string{"main"}
		}
		if len(w) > 1 && !d.MultiWriter {
			return nil, fmt.Errorf("stream %s: only one writer allowed, got %d", d.Name, len(w))
		}
		s := &stream{def: d, writers: slices.Clone(w), pos: map[string]int64{}, changed: make(chan struct{}),
			trackers: map[string]*Tracker{}}
		r.streams[d.Name] = s
	}
	return r, nil
}

// Notifier returns the process's notifier.
func (r *Registry) Notifier() *Notifier { return r.notifier }

// Instance is this process's instance name.
func (r *Registry) Instance() string { return r.instance }

func (r *Registry) get(name Name) *stream {
	s, ok := r.streams[name]
	if !ok {
		panic(fmt.Sprintf("streams: unknown stream %q", name)) // a programming error, caught by tests
	}
	return s
}

// Writers lists a stream's writers in configured order.
func (r *Registry) Writers(name Name) []string { return r.get(name).writers }

// IsWriter reports whether this process writes the stream.
func (r *Registry) IsWriter(name Name) bool {
	return slices.Contains(r.get(name).writers, r.instance)
}

// LocalTracker creates the tracker for this process's writes to a stream,
// starting at pos. Advances of the tracker advance the registry.
func (r *Registry) LocalTracker(name Name, pos int64) *Tracker {
	s := r.get(name)
	t := NewTracker(pos, func(p int64) { r.Advance(name, r.instance, p) })
	r.mu.Lock()
	s.trackers[r.instance] = t
	r.mu.Unlock()
	r.Advance(name, r.instance, pos)
	return t
}

// Advance records that writer has reached pos on the stream (from a local
// commit or from replication) and wakes position waiters. Positions never
// move backwards, except for in-memory streams, which the caller resets with
// Reset when their writer restarts.
func (r *Registry) Advance(name Name, writer string, pos int64) {
	s := r.get(name)
	r.mu.Lock()
	if pos <= s.pos[writer] {
		r.mu.Unlock()
		return
	}
	s.pos[writer] = pos
	close(s.changed)
	s.changed = make(chan struct{})
	ready := s.releaseLocked()
	r.mu.Unlock()
	if len(ready) > 0 {
		r.notifier.Wake(ready...)
	}
}

// releaseLocked takes the pending wake-ups the current position covers.
func (s *stream) releaseLocked() []string {
	if len(s.pending) == 0 {
		return nil
	}
	cur := s.currentLocked()
	var keys []string
	kept := s.pending[:0]
	for _, p := range s.pending {
		if p.token <= cur || (p.writer != "" && p.token <= s.pos[p.writer]) {
			keys = append(keys, p.keys...)
		} else {
			kept = append(kept, p)
		}
	}
	s.pending = kept
	return keys
}

// WakeAt wakes keys once the stream's current position reaches token: at
// once if it has, else when the lagging writers catch up.
func (r *Registry) WakeAt(name Name, token int64, keys ...string) {
	if len(keys) == 0 {
		return
	}
	r.WakeAtWriter(name, "", token, keys...)
}

// WakeAtWriter is WakeAt for a row of one writer: on streams read per
// writer (PerWriterReads), the keys wake once that writer's own position
// reaches token, which may be before the stream's minimum does. A local
// writer's position can lag its own commit (an earlier id of the same
// writer still in flight), and waking before it covers the row would
// have the reader find nothing and sleep through it.
func (r *Registry) WakeAtWriter(name Name, writer string, token int64, keys ...string) {
	if len(keys) == 0 {
		return
	}
	s := r.get(name)
	if !s.def.PerWriterReads {
		writer = ""
	}
	r.mu.Lock()
	if s.currentLocked() >= token || (writer != "" && s.pos[writer] >= token) {
		r.mu.Unlock()
		r.notifier.Wake(keys...)
		return
	}
	s.pending = append(s.pending, pendingWake{writer: writer, token: token, keys: keys})
	r.mu.Unlock()
}

// BumpLocal tells this process's tracker of a multi-writer stream that
// another writer reached pos (see Tracker.Bump).
func (r *Registry) BumpLocal(name Name, pos int64) {
	s := r.get(name)
	if !s.def.MultiWriter {
		return
	}
	r.mu.Lock()
	t := s.trackers[r.instance]
	r.mu.Unlock()
	if t != nil {
		t.Bump(pos)
	}
}

// Reset sets a writer's position even if it goes backwards (in-memory
// streams whose writer restarted).
func (r *Registry) Reset(name Name, writer string, pos int64) {
	s := r.get(name)
	r.mu.Lock()
	s.pos[writer] = pos
	close(s.changed)
	s.changed = make(chan struct{})
	ready := s.releaseLocked()
	r.mu.Unlock()
	if len(ready) > 0 {
		r.notifier.Wake(ready...)
	}
}

// Current is the position a reader may read up to: the minimum over the
// stream's writers, since rows below a lagging writer's position may still
// be committing.
func (r *Registry) Current(name Name) int64 {
	s := r.get(name)
	r.mu.Lock()
	defer r.mu.Unlock()
	return s.currentLocked()
}

func (s *stream) currentLocked() int64 {
	first := true
	var m int64
	for _, w := range s.writers {
		p := s.pos[w]
		if first || p < m {
			m, first = p, false
		}
	}
	return m
}

// WriterPosition is the latest known position of one writer.
func (r *Registry) WriterPosition(name Name, writer string) int64 {
	s := r.get(name)
	r.mu.Lock()
	defer r.mu.Unlock()
	return s.pos[writer]
}

// Vector returns the current minimum and every writer's position.
func (r *Registry) Vector(name Name) (min int64, writers map[string]int64) {
	s := r.get(name)
	r.mu.Lock()
	defer r.mu.Unlock()
	writers = make(map[string]int64, len(s.writers))
	for _, w := range s.writers {
		writers[w] = s.pos[w]
	}
	return s.currentLocked(), writers
}

// WaitForWriter blocks until writer's position on the stream reaches pos or
// ctx ends. Used for read-your-writes across processes.
func (r *Registry) WaitForWriter(ctx context.Context, name Name, writer string, pos int64) error {
	s := r.get(name)
	for {
		r.mu.Lock()
		reached := s.pos[writer] >= pos
		ch := s.changed
		r.mu.Unlock()
		if reached {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("wait for %s position %d of %s: %w", name, pos, writer, ctx.Err())
		}
	}
}

// WaitForCurrent blocks until the stream's current (minimum) position
// reaches pos or ctx ends.
func (r *Registry) WaitForCurrent(ctx context.Context, name Name, pos int64) error {
	s := r.get(name)
	for {
		r.mu.Lock()
		reached := s.currentLocked() >= pos
		ch := s.changed
		r.mu.Unlock()
		if reached {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("wait for %s to reach %d: %w", name, pos, ctx.Err())
		}
	}
}

// WaitForToken waits until every stream of t is readable here: a client
// whose last sync was served by a process further ahead must not see time
// go backwards on this one.
func (r *Registry) WaitForToken(ctx context.Context, t Token) error {
	for i, f := range t.fields() {
		name := tokenStreams[i]
		if d, _ := r.Def(name); d.Storage == InMemory {
			continue // in-memory positions reset with their writer; sync copes
		}
		if name == Events {
			// Per writer: a dead persister stalls only its own rooms.
			for _, w := range r.Writers(Events) {
				if err := r.WaitForWriter(ctx, Events, w, t.EventsFor(w)); err != nil {
					return err
				}
			}
			continue
		}
		if err := r.WaitForCurrent(ctx, name, *f); err != nil {
			return err
		}
	}
	return nil
}

// Changed returns a channel closed at the stream's next advance.
func (r *Registry) Changed(name Name) <-chan struct{} {
	s := r.get(name)
	r.mu.Lock()
	defer r.mu.Unlock()
	return s.changed
}

// Defs lists the declared streams.
func (r *Registry) Defs() []Def {
	out := make([]Def, 0, len(r.streams))
	for _, s := range r.streams {
		out = append(out, s.def)
	}
	slices.SortFunc(out, func(a, b Def) int {
		if a.Name < b.Name {
			return -1
		}
		if a.Name > b.Name {
			return 1
		}
		return 0
	})
	return out
}

// AllDefs is every stream Ganglion knows, with its storage and writer model.
func AllDefs() []Def {
	return []Def{
		{Name: Events, Storage: InTable, MultiWriter: true, PerWriterReads: true},
		{Name: Presence, Storage: InTable},
		{Name: Typing, Storage: InMemory},
		{Name: Receipts, Storage: InTable, MultiWriter: true},
		{Name: AccountData, Storage: InTable},
		{Name: PushRules, Storage: InTable},
		{Name: ToDevice, Storage: InTable},
		{Name: DeviceLists, Storage: InTable, MultiWriter: true},
		{Name: Caches, Storage: InTable, MultiWriter: true},
	}
}

// AllDefsByName is AllDefs keyed by stream name.
func AllDefsByName() map[Name]Def {
	out := map[Name]Def{}
	for _, d := range AllDefs() {
		out[d.Name] = d
	}
	return out
}
