package sync

import (
	"container/list"
	gosync "sync"
)

// ignoredCache remembers each user's ignored-users list and the account
// data position it is known to be current at. A sync that reads the
// user's account data changes for (since, now] anyway learns whether the
// list changed: if not, and the entry was current at since, it is current
// at now too, so a stream of incremental syncs reads the list once.
type ignoredCache struct {
	mu    gosync.Mutex
	max   int
	order *list.List // front = most recently used; values are *ignoredEntry
	byKey map[string]*list.Element
}

type ignoredEntry struct {
	user    string
	ignored map[string]bool
	at      int64 // account data position the list is current at
}

func newIgnoredCache(max int) *ignoredCache {
	return &ignoredCache{max: max, order: list.New(), byKey: map[string]*list.Element{}}
}

// get returns the list if it is known current at some position ≥ from.
func (c *ignoredCache) get(user string, from int64) (map[string]bool, int64, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.byKey[user]
	if !ok {
		return nil, 0, false
	}
	e := el.Value.(*ignoredEntry)
	if e.at < from {
		return nil, 0, false
	}
	c.order.MoveToFront(el)
	return e.ignored, e.at, true
}

// put records the list as current at pos (never moving an entry back).
func (c *ignoredCache) put(user string, ignored map[string]bool, pos int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.byKey[user]; ok {
		e := el.Value.(*ignoredEntry)
		if pos >= e.at {
			e.ignored, e.at = ignored, pos
		}
		c.order.MoveToFront(el)
		return
	}
	c.byKey[user] = c.order.PushFront(&ignoredEntry{user: user, ignored: ignored, at: pos})
	for c.order.Len() > c.max {
		old := c.order.Back()
		c.order.Remove(old)
		delete(c.byKey, old.Value.(*ignoredEntry).user)
	}
}

// forget drops the user's entry (their list changed).
func (c *ignoredCache) forget(user string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.byKey[user]; ok {
		c.order.Remove(el)
		delete(c.byKey, user)
	}
}
