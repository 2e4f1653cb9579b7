package replication

import (
	"container/list"
	"sync"
	"time"
)

// response is an encoded answer, stored so a retried call gets the same
// bytes the first one got.
type response struct {
	status int
	body   []byte
}

type cacheKey struct{ name, txn string }

// cacheEntry is one call by transaction id. While the first request runs
// Handle the entry is in flight (ready open); duplicates wait on ready and
// then send the same response.
type cacheEntry struct {
	key     cacheKey
	ready   chan struct{}
	resp    response // written once, before ready is closed
	expires time.Time
	elem    *list.Element // position in responseCache.done; nil while in flight
}

// responseCache is the server side of idempotency. Only successful
// responses are kept: Synapse's ResponseCache drops failures too, so a
// retry after an error runs the handler again rather than replaying it.
//
// Expiry needs no timers: the TTL is fixed, so completion order is expiry
// order, and every claim first drops expired entries from the front of the
// done list. The done list is also capped, oldest evicted first; in-flight
// entries are never evicted (they are bounded by concurrent requests).
type responseCache struct {
	ttl        time.Duration
	maxEntries int
	now        func() time.Time

	mu      sync.Mutex
	entries map[cacheKey]*cacheEntry
	done    list.List // of *cacheEntry, completed and kept, oldest first
}

func newResponseCache(ttl time.Duration, maxEntries int, now func() time.Time) *responseCache {
	return &responseCache{ttl: ttl, maxEntries: maxEntries, now: now, entries: map[cacheKey]*cacheEntry{}}
}

// claim returns the entry for key. owner is true when the caller created it
// and must run the call and then complete the entry; otherwise the caller
// waits on entry.ready.
func (c *responseCache) claim(key cacheKey) (e *cacheEntry, owner bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.expireLocked(c.now())
	if e, ok := c.entries[key]; ok {
		return e, false
	}
	e = &cacheEntry{key: key, ready: make(chan struct{})}
	c.entries[key] = e
	return e, true
}

// complete publishes the response to waiters; keep says whether later
// retries may replay it.
func (c *responseCache) complete(e *cacheEntry, resp response, keep bool) {
	c.mu.Lock()
	e.resp = resp
	if keep {
		e.expires = c.now().Add(c.ttl)
		e.elem = c.done.PushBack(e)
		for c.done.Len() > c.maxEntries {
			c.removeLocked(c.done.Front().Value.(*cacheEntry))
		}
	} else if c.entries[e.key] == e {
		delete(c.entries, e.key)
	}
	c.mu.Unlock()
	close(e.ready)
}

func (c *responseCache) expireLocked(now time.Time) {
	for f := c.done.Front(); f != nil; f = c.done.Front() {
		e := f.Value.(*cacheEntry)
		if now.Before(e.expires) {
			return
		}
		c.removeLocked(e)
	}
}

func (c *responseCache) removeLocked(e *cacheEntry) {
	c.done.Remove(e.elem)
	e.elem = nil
	if c.entries[e.key] == e {
		delete(c.entries, e.key)
	}
}

// len counts entries, in flight or kept (for tests and metrics).
func (c *responseCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.expireLocked(c.now())
	return len(c.entries)
}
