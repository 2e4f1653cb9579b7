package replication

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
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

	// bound reads how far a writer can truthfully be (see Bound).
	bound Bound

	mu        sync.Mutex
	connected map[string]bool                // "stream writer" → a POSITION of that writer was applied on this connection
	batches   map[string][]streams.Row       // "stream writer" → rows waiting for their token
	dropped   map[string]bool                // "stream writer" → a batch row was dropped before connecting
	lastSent  map[streams.Name]int64         // published up to, per stream written here
	published map[streams.Name]chan struct{} // nudges a stream's publisher
	bounds    map[string]int64               // boundKey → highest bound read so far
	applying  map[string]*sync.Mutex         // "stream writer" → held while rows of that writer are applied

	heard heardPositions // for the lag metric
}

// Bound returns the highest position writer can truthfully have reached on
// a stream now, read from the truth rather than from Redis: for table
// streams the stream's id sequence (no writer's position can pass an id
// the sequence has not handed out yet; see streams.SequenceBound), for
// in-memory streams the writer's own answer over HTTP replication.
type Bound func(ctx context.Context, name streams.Name, writer string) (int64, error)

// NewReplicator wires a registry to a bus. Call Run. bound checks every
// position heard on Redis before this process believes it: Redis is an
// untrusted doorbell, and anyone who can publish to it could otherwise
// move every reader (and, through Bump, every writer) to any position.
func NewReplicator(bus *Bus, reg *streams.Registry, bound Bound, log *slog.Logger) *Replicator {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	r := &Replicator{bus: bus, reg: reg, instance: reg.Instance(), processID: hex.EncodeToString(b), log: log, bound: bound,
		connected: map[string]bool{}, batches: map[string][]streams.Row{}, dropped: map[string]bool{}, lastSent: map[streams.Name]int64{},
		published: map[streams.Name]chan struct{}{}, bounds: map[string]int64{}, applying: map[string]*sync.Mutex{}}
	bus.OnCommand(r.handle)
	bus.OnConnect(r.handshake)
	reg.SetCatchUp(r.CatchUpTo)
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
	r.connected = map[string]bool{}
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
	if !r.connected[key] {
		// Until a POSITION of this writer arrives on this connection we do
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

	unlock := r.lockWriter(name, c.Instance)
	defer unlock()
	cur := r.reg.WriterPosition(name, c.Instance)
	if c.Token <= cur {
		return // already have it (caught up from the source)
	}
	if isInMemory(r.reg, name) {
		// The writer is the only truth of an in-memory stream: ask it for
		// the rows (one call, which also checks the token) instead of
		// believing what Redis says they contain.
		if err := r.catchUp(ctx, name, src, c.Instance, cur, c.Token); err != nil {
			r.log.Warn("catch-up failed", "stream", name, "writer", c.Instance, "err", err)
			return
		}
		if got := r.reg.WriterPosition(name, c.Instance); got < c.Token {
			r.log.Warn("ignoring RDATA beyond the writer's rows: Redis may be shared or compromised",
				"stream", name, "writer", c.Instance, "claimed", c.Token, "writer_has", got)
		}
		return
	}
	if !r.believe(ctx, "RDATA", name, c.Instance, c.Token) {
		return
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
// stream follow. token must have been checked (believe) or come from the
// writer over HTTP: the bump makes it this process's own position too, and
// that is saved in stream_positions.
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
	key := c.Stream + " " + c.Instance
	src := r.reg.Source(name)
	unlock := r.lockWriter(name, c.Instance)
	defer unlock()
	cur := r.reg.WriterPosition(name, c.Instance)
	if c.New <= cur {
		// Stale: announced before rows we already applied (a writer's
		// handshake POSITION can be computed before, and published after,
		// its latest RDATA). Also for the in-memory typing stream: its
		// writer seeds positions from the clock, so a restarted writer
		// announces positions above the old ones, never below; treating a
		// lower one as a restart would drop typing state we just applied.
		r.markConnected(key)
		return
	}
	if !r.believe(ctx, "POSITION", name, c.Instance, c.New) {
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
	if src != nil && c.Prev != cur {
		// A gap (prev beyond us), or a prev we never had (below us: a
		// writer's prev is what its last RDATA or POSITION carried, so an
		// honest one never is), which a forged line claiming "nothing
		// happened since 0" would show: read (cur, new] back from the
		// source, so rows that are committed but whose RDATA is still on
		// its way keep their cache invalidations and wake-ups. The honest,
		// continuous case (prev == cur) costs no read.
		if err := r.catchUp(ctx, name, src, c.Instance, cur, c.New); err != nil {
			// Leave the position where it is: the next POSITION retries.
			r.log.Warn("catch-up failed", "stream", name, "writer", c.Instance, "from", cur, "to", c.New, "err", err)
			return
		}
	}
	r.advance(name, c.Instance, c.New, nil)
	r.markConnected(key)
}

func (r *Replicator) markConnected(key string) {
	r.mu.Lock()
	r.connected[key] = true
	r.mu.Unlock()
}

// lockWriter serialises applying one writer's rows of one stream: the
// Redis receive loop and catch-ups for HTTP replication (CatchUpTo) both
// apply them, and rows must land in order.
func (r *Replicator) lockWriter(name streams.Name, writer string) func() {
	key := string(name) + " " + writer
	r.mu.Lock()
	m := r.applying[key]
	if m == nil {
		m = &sync.Mutex{}
		r.applying[key] = m
	}
	r.mu.Unlock()
	m.Lock()
	return m.Unlock
}

// boundTimeout bounds reading a bound, so a slow database or an
// unreachable writer cannot hold up the receive loop for long.
const boundTimeout = 5 * time.Second

// boundKey names a cached bound: per stream for table streams (one
// sequence per stream), per writer for in-memory streams.
func (r *Replicator) boundKey(name streams.Name, writer string) string {
	if isInMemory(r.reg, name) {
		return string(name) + " " + writer
	}
	return string(name)
}

// believe reports whether a position heard on Redis can be true, logging a
// warning when it cannot. The bound is cached and read again only when a
// claim passes it: bounds only grow, and under load the sequence runs
// ahead of commits, so one read covers many rows.
func (r *Replicator) believe(ctx context.Context, what string, name streams.Name, writer string, pos int64) bool {
	bk := r.boundKey(name, writer)
	r.mu.Lock()
	b, ok := r.bounds[bk]
	r.mu.Unlock()
	if ok && pos <= b {
		r.heard.note(name, writer, pos)
		return true
	}
	if r.bound == nil {
		r.log.Warn("ignoring "+what+": no way to check positions", "stream", name, "writer", writer, "claimed", pos)
		return false
	}
	bctx, cancel := context.WithTimeout(ctx, boundTimeout)
	nb, err := r.bound(bctx, name, writer)
	cancel()
	if err != nil {
		// Not believed for now: the next POSITION (writers send one at
		// least every second) tries again.
		r.log.Warn("could not check a replicated position", "command", what, "stream", name, "writer", writer,
			"claimed", pos, "err", err)
		return false
	}
	r.mu.Lock()
	r.bounds[bk] = max(nb, r.bounds[bk])
	r.mu.Unlock()
	if pos > nb {
		r.log.Warn("ignoring "+what+" beyond anything committed: Redis may be shared with another fleet or compromised",
			"stream", name, "writer", writer, "claimed", pos, "bound", nb)
		return false
	}
	r.heard.note(name, writer, pos)
	return true
}

// CatchUpTo brings this process's view of writer up to pos, which the
// writer reported over authenticated HTTP replication: its rows in between
// are read from the source and applied, without waiting for Redis. It is
// the registry's CatchUp in a fleet.
func (r *Replicator) CatchUpTo(ctx context.Context, name streams.Name, writer string, pos int64) error {
	if writer == r.instance || !r.reg.Known(name) {
		return nil // our own positions come only from our own commits
	}
	unlock := r.lockWriter(name, writer)
	defer unlock()
	cur := r.reg.WriterPosition(name, writer)
	if pos <= cur {
		return nil
	}
	if src := r.reg.Source(name); src != nil {
		if err := r.catchUp(ctx, name, src, writer, cur, pos); err != nil {
			return fmt.Errorf("catch up %s of %s to %d: %w", name, writer, pos, err)
		}
	}
	r.advance(name, writer, pos, nil)
	// The writer vouched for pos, so the bound is at least that.
	bk := r.boundKey(name, writer)
	r.mu.Lock()
	r.bounds[bk] = max(r.bounds[bk], pos)
	r.mu.Unlock()
	return nil
}

// catchUp reads rows (from, to] from the stream's source and applies them.
func (r *Replicator) catchUp(ctx context.Context, name streams.Name, src streams.Source, writer string, from, to int64) error {
	timeout := 30 * time.Second
	if isInMemory(r.reg, name) {
		// Rows come from the writer over HTTP; a writer that is down must
		// not hold the receive loop for long.
		timeout = boundTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
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
