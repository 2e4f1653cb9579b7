package replication

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"sync"
	"time"

	"ganglion/internal/streams"
)

// Resetter is implemented by sources of in-memory streams whose positions
// restart when their writer restarts (typing): the receiver drops what it
// held for that writer before catching up again.
type Resetter interface {
	Reset(writer string)
}

// Replicator connects a process's stream registry to the bus: it publishes
// the rows of the streams this process writes (RDATA, then POSITION) and
// applies other processes' rows and positions, catching up from the source
// (database or writer) whenever a POSITION shows it missed something.
type Replicator struct {
	bus       *Bus
	reg       *streams.Registry
	instance  string
	processID string
	log       *slog.Logger

	// Hooks for commands other domains act on; nil means ignore.
	OnUserSync      func(ctx context.Context, c UserSync)
	OnClearUserSync func(ctx context.Context, processID string)
	OnLockReleased  func(name, key string)
	// SyncingUsers lists this process's syncing users, re-announced to
	// the presence writer after every reconnect.
	SyncingUsers func() []UserSync

	mu        sync.Mutex
	connected map[streams.Name]bool          // a POSITION for the stream was applied on this connection
	batches   map[string][]streams.Row       // "stream writer" → rows waiting for their token
	dropped   map[string]bool                // "stream writer" → a batch row was dropped before connecting
	lastSent  map[streams.Name]int64         // published up to, per stream written here
	published map[streams.Name]chan struct{} // nudges a stream's publisher
}

// NewReplicator wires a registry to a bus. Call Run.
func NewReplicator(bus *Bus, reg *streams.Registry, log *slog.Logger) *Replicator {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	r := &Replicator{bus: bus, reg: reg, instance: reg.Instance(), processID: hex.EncodeToString(b), log: log,
		connected: map[streams.Name]bool{}, batches: map[string][]streams.Row{}, dropped: map[string]bool{}, lastSent: map[streams.Name]int64{},
		published: map[streams.Name]chan struct{}{}}
	bus.OnCommand(r.handle)
	bus.OnConnect(r.handshake)
	return r
}

// ProcessID is the random id of this process in USER_SYNC commands.
func (r *Replicator) ProcessID() string { return r.processID }

// Bus returns the underlying bus (for publishing other commands).
func (r *Replicator) Bus() *Bus { return r.bus }

// Run runs the bus and one publisher per stream written here.
func (r *Replicator) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	for _, name := range r.reg.WrittenHere() {
		if r.reg.Source(name) == nil {
			continue // the stream's feature is not wired in this process
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.publishLoop(ctx, name)
		}()
	}
	err := r.bus.Run(ctx)
	wg.Wait()
	return err
}

// handshake runs after every (re)subscription: forget per-connection
// state, re-announce syncing users, ask writers for their positions and
// announce ours (peers that never saw us reconnect learn them too).
func (r *Replicator) handshake(ctx context.Context) []Command {
	r.mu.Lock()
	r.connected = map[streams.Name]bool{}
	r.batches = map[string][]streams.Row{}
	r.dropped = map[string]bool{}
	r.mu.Unlock()
	var cmds []Command
	if r.SyncingUsers != nil {
		for _, u := range r.SyncingUsers() {
			cmds = append(cmds, u)
		}
	}
	cmds = append(cmds, Replicate{})
	return append(cmds, r.positions()...)
}

// positions announces every stream written here at its current position.
func (r *Replicator) positions() []Command {
	var cmds []Command
	for _, name := range r.reg.WrittenHere() {
		if r.reg.Source(name) == nil {
			continue
		}
		pos := r.reg.WriterPosition(name, r.instance)
		cmds = append(cmds, Position{Stream: string(name), Instance: r.instance, Prev: pos, New: pos})
	}
	return cmds
}

// keepalive is how often an idle writer re-announces its positions, so a
// process that joined mid-stream becomes "connected" for every stream and
// lagging readers notice gaps.
const keepalive = time.Second

// publishLoop publishes one stream's new rows whenever its position here
// moves, and its position periodically.
func (r *Replicator) publishLoop(ctx context.Context, name streams.Name) {
	src := r.reg.Source(name)
	r.mu.Lock()
	last := r.reg.WriterPosition(name, r.instance)
	r.lastSent[name] = last
	r.mu.Unlock()
	t := time.NewTicker(keepalive)
	defer t.Stop()
	for {
		changed := r.reg.Changed(name)
		cur := r.reg.WriterPosition(name, r.instance)
		if cur > last && r.bus.Connected() {
			if sent, err := r.publishRows(ctx, name, src, last, cur); err != nil {
				r.log.Warn("could not publish stream rows", "stream", name, "err", err)
			} else {
				last = sent
				r.mu.Lock()
				r.lastSent[name] = last
				r.mu.Unlock()
			}
		} else if cur < last && isInMemory(r.reg, name) {
			last = cur // our in-memory stream restarted
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-t.C:
			if r.bus.Connected() && last >= cur {
				_ = r.bus.Publish(ctx, Position{Stream: string(name), Instance: r.instance, Prev: last, New: last})
			}
		}
	}
}

func isInMemory(reg *streams.Registry, name streams.Name) bool {
	d, _ := reg.Def(name)
	return d.Storage == streams.InMemory
}

const batchRows = 100

// publishRows sends RDATA for rows in (from, to] and a POSITION covering
// any stretch without rows; it returns how far it published.
func (r *Replicator) publishRows(ctx context.Context, name streams.Name, src streams.Source, from, to int64) (int64, error) {
	pos := from
	for {
		rows, err := src.Rows(ctx, r.instance, pos, to, batchRows)
		if err != nil {
			return pos, err
		}
		for i, row := range rows {
			// Rows sharing a token: all but the last say "batch".
			batch := i+1 < len(rows) && rows[i+1].Token == row.Token
			if err := r.bus.Publish(ctx, RData{Stream: string(name), Instance: r.instance, Token: row.Token, Batch: batch, Row: row.Data}); err != nil {
				return pos, err
			}
			if !batch {
				pos = row.Token
			}
		}
		if len(rows) < batchRows {
			break
		}
	}
	if pos < to {
		if err := r.bus.Publish(ctx, Position{Stream: string(name), Instance: r.instance, Prev: pos, New: to}); err != nil {
			return pos, err
		}
		pos = to
	}
	return pos, nil
}

// handle applies one command from another process. Commands arrive on one
// goroutine, so rows are applied in order per stream and writer.
func (r *Replicator) handle(ctx context.Context, c Command) {
	switch c := c.(type) {
	case RData:
		if c.Instance != r.instance {
			r.onRData(ctx, c)
		}
	case Position:
		if c.Instance != r.instance {
			r.onPosition(ctx, c)
		}
	case Replicate:
		for _, p := range r.positions() {
			_ = r.bus.Publish(ctx, p)
		}
	case UserSync:
		if r.OnUserSync != nil && c.InstanceID != r.processID {
			r.OnUserSync(ctx, c)
		}
	case ClearUserSync:
		if r.OnClearUserSync != nil && c.InstanceID != r.processID {
			r.OnClearUserSync(ctx, c.InstanceID)
		}
	case LockReleased:
		if r.OnLockReleased != nil && c.Instance != r.instance {
			r.OnLockReleased(c.LockName, c.LockKey)
		}
	}
}

func (r *Replicator) onRData(ctx context.Context, c RData) {
	name := streams.Name(c.Stream)
	if !r.reg.Known(name) {
		return
	}
	src := r.reg.Source(name)
	if src == nil {
		return
	}
	key := c.Stream + " " + c.Instance
	r.mu.Lock()
	if !r.connected[name] {
		// Until a POSITION for the stream arrives on this connection we do
		// not know what we missed; that POSITION will catch us up. A
		// dropped batch row is remembered: the batch's last row may arrive
		// after the POSITION, and applying it alone would lose the rest.
		if c.Batch {
			r.dropped[key] = true
		}
		r.mu.Unlock()
		return
	}
	if c.Batch {
		r.batches[key] = append(r.batches[key], streams.Row{Data: c.Row})
		r.mu.Unlock()
		return
	}
	rows := append(r.batches[key], streams.Row{Data: c.Row})
	delete(r.batches, key)
	partial := r.dropped[key]
	delete(r.dropped, key)
	r.mu.Unlock()
	cur := r.reg.WriterPosition(name, c.Instance)
	if c.Token <= cur {
		return // already have it (caught up from the source)
	}
	if partial {
		if err := r.catchUp(ctx, name, src, c.Instance, cur, c.Token); err != nil {
			r.log.Warn("catch-up failed", "stream", name, "writer", c.Instance, "err", err)
		}
		return
	}
	var keys []string
	for _, row := range rows {
		row.Token = c.Token
		keys = append(keys, src.Apply(ctx, c.Instance, row)...)
	}
	r.advance(name, c.Instance, c.Token, keys)
}

// advance records a writer's new position, wakes listeners once the
// stream's minimum covers it, and lets our own writer of a multi-writer
// stream follow.
func (r *Replicator) advance(name streams.Name, writer string, token int64, keys []string) {
	r.reg.Advance(name, writer, token)
	r.reg.WakeAtWriter(name, writer, token, keys...)
	r.reg.BumpLocal(name, token)
}

func (r *Replicator) onPosition(ctx context.Context, c Position) {
	name := streams.Name(c.Stream)
	if !r.reg.Known(name) {
		return
	}
	src := r.reg.Source(name)
	cur := r.reg.WriterPosition(name, c.Instance)
	if c.New < cur {
		// Stale: announced before rows we already applied (a writer's
		// handshake POSITION can be computed before, and published after,
		// its latest RDATA). Also for the in-memory typing stream: its
		// writer seeds positions from the clock, so a restarted writer
		// announces positions above the old ones, never below; treating a
		// lower one as a restart would drop typing state we just applied.
		r.markConnected(name)
		return
	}
	if c.Prev > cur && src != nil && isInMemory(r.reg, name) && cur > 0 {
		// A gap in an in-memory stream: the writer may have restarted and
		// lost state we still hold, so start over from its full state.
		if rs, ok := src.(Resetter); ok {
			rs.Reset(c.Instance)
		}
		r.reg.Reset(name, c.Instance, 0)
		cur = 0
	}
	if c.Prev > cur && src != nil {
		if err := r.catchUp(ctx, name, src, c.Instance, cur, c.New); err != nil {
			// Leave the position where it is: the next POSITION retries.
			r.log.Warn("catch-up failed", "stream", name, "writer", c.Instance, "from", cur, "to", c.New, "err", err)
			return
		}
	}
	r.advance(name, c.Instance, c.New, nil)
	r.markConnected(name)
}

func (r *Replicator) markConnected(name streams.Name) {
	r.mu.Lock()
	r.connected[name] = true
	r.mu.Unlock()
}

// catchUp reads rows (from, to] from the stream's source and applies them.
func (r *Replicator) catchUp(ctx context.Context, name streams.Name, src streams.Source, writer string, from, to int64) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	pos := from
	for pos < to {
		rows, err := src.Rows(ctx, writer, pos, to, batchRows)
		if err != nil {
			return err
		}
		// Apply per token so a batch of rows sharing one token lands
		// together.
		for i := 0; i < len(rows); {
			j := i
			var keys []string
			for j < len(rows) && rows[j].Token == rows[i].Token {
				keys = append(keys, src.Apply(ctx, writer, rows[j])...)
				j++
			}
			r.advance(name, writer, rows[i].Token, keys)
			pos = rows[i].Token
			i = j
		}
		if len(rows) < batchRows {
			break
		}
	}
	return nil
}

// Connected reports whether the Redis link is up.
func (r *Replicator) Connected() bool { return r.bus.Connected() }
