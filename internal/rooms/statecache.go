package rooms

import "sync"

// stateCache keeps derived views of a room's state history (the history
// visibility settings over time; one user's membership changes) that
// every sync of the room would otherwise read again. The state log is
// append-only, so an entry only goes stale when a new state event for its
// key is persisted; StateChanged is told of each one before readers can
// see its position (by the local persister before its commit becomes
// visible, by replication before the position advances), so a reader that
// has seen position p never gets an entry missing a change at or below p.
//
// A load races with changes: it remembers the key's version before its
// query and stores its result only if no change came meanwhile.
type stateCache struct {
	mu      sync.Mutex
	max     int
	epoch   uint64              // bumped when everything is dropped
	version map[stateKey]uint64 // bumped by each change of the key
	entries map[stateKey]any
}

type stateKey struct{ room, typ, stateKey string }

// stamp identifies what a load saw; the result is stored only if the
// stamp still holds.
type stamp struct{ epoch, version uint64 }

func newStateCache(max int) *stateCache {
	return &stateCache{max: max, version: map[stateKey]uint64{}, entries: map[stateKey]any{}}
}

func (c *stateCache) get(k stateKey) (any, stamp, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v, ok := c.entries[k]
	return v, stamp{c.epoch, c.version[k]}, ok
}

func (c *stateCache) put(k stateKey, st stamp, v any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if st.epoch != c.epoch || st.version != c.version[k] {
		return // changed while loading
	}
	if len(c.entries) >= c.max || len(c.version) >= 4*c.max {
		clear(c.entries)
		clear(c.version)
		c.epoch++
		return
	}
	c.entries[k] = v
}

func (c *stateCache) changed(k stateKey) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.entries, k)
	c.version[k]++
}

// throughCache returns k's value from c, or loads it and stores it unless
// a change to k raced the load. A nil c (cache off) just loads.
func throughCache[T any](c *stateCache, k stateKey, load func() (T, error)) (T, error) {
	if c == nil {
		return load()
	}
	v, st, ok := c.get(k)
	if ok {
		return v.(T), nil
	}
	out, err := load()
	if err == nil {
		c.put(k, st, out)
	}
	return out, err
}
