package streams

import (
	"context"
	"encoding/json"
)

// Row is one replicated row of a stream: its position and its wire form
// (Synapse's row arrays, e.g. ["ev", [...]] for events).
type Row struct {
	Token int64
	Data  json.RawMessage
}

// Source is how a stream's rows are read back and applied elsewhere: the
// writer's streamer reads rows to publish them, and a receiver that missed
// some (a gap in POSITION) reads them the same way before applying newer
// ones. Table streams read the database; in-memory streams (typing) read
// the writer's memory, over HTTP from other processes.
type Source interface {
	// Rows returns rows that writer wrote with positions in (from, to], in
	// position order, at most limit. Fewer than limit means no more.
	Rows(ctx context.Context, writer string, from, to int64, limit int) ([]Row, error)
	// Apply takes a row from another process into this one (updating any
	// local replica or cache) and returns the notifier keys it wakes.
	Apply(ctx context.Context, writer string, row Row) []string
}

// SetSource registers a stream's Source. Wiring calls it once per stream.
func (r *Registry) SetSource(name Name, src Source) {
	s := r.get(name)
	r.mu.Lock()
	s.source = src
	r.mu.Unlock()
}

// Source returns the stream's Source (nil if none is wired, e.g. a stream
// whose feature does not exist yet).
func (r *Registry) Source(name Name) Source {
	s := r.get(name)
	r.mu.Lock()
	defer r.mu.Unlock()
	return s.source
}

// Def returns a stream's declaration.
func (r *Registry) Def(name Name) (Def, bool) {
	s, ok := r.streams[name]
	if !ok {
		return Def{}, false
	}
	return s.def, true
}

// Known reports whether the stream is declared.
func (r *Registry) Known(name Name) bool {
	_, ok := r.streams[name]
	return ok
}

// Positions snapshots every writer's known position of every stream, for
// status reports and metrics.
func (r *Registry) Positions() map[Name]map[string]int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[Name]map[string]int64, len(r.streams))
	for name, s := range r.streams {
		m := make(map[string]int64, len(s.pos))
		// Every configured writer, heard from or not: a reader that has
		// not heard from a writer yet lags it (position 0), and must show.
		for _, w := range s.writers {
			m[w] = 0
		}
		for w, p := range s.pos {
			m[w] = p
		}
		out[name] = m
	}
	return out
}

// WrittenHere lists the streams this process writes.
func (r *Registry) WrittenHere() []Name {
	var out []Name
	for _, d := range r.Defs() {
		if r.IsWriter(d.Name) {
			out = append(out, d.Name)
		}
	}
	return out
}

// CatchUpFunc brings this process's view of a writer's position on a
// stream up to pos, reading the rows in between from where they live. pos
// must come from the writer itself over authenticated HTTP replication
// (a response or a request carrying its positions), never from Redis.
type CatchUpFunc func(ctx context.Context, name Name, writer string, pos int64) error

// SetCatchUp installs the fleet's catch-up (the replicator's); without one
// (a monolith) CatchUp does nothing and waits rely on local advances.
func (r *Registry) SetCatchUp(f CatchUpFunc) {
	r.mu.Lock()
	r.catchUp = f
	r.mu.Unlock()
}

// CatchUp brings writer's position here to pos without waiting for the
// Redis doorbell: read-your-writes across processes must not depend on the
// bus being up. See CatchUpFunc for where pos may come from.
func (r *Registry) CatchUp(ctx context.Context, name Name, writer string, pos int64) error {
	r.mu.Lock()
	f := r.catchUp
	r.mu.Unlock()
	if f == nil || writer == r.instance || r.WriterPosition(name, writer) >= pos {
		return nil
	}
	return f(ctx, name, writer, pos)
}
