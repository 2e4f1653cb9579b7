package sync

import gosync "sync"

// lazyCache remembers, per device and room, which member events a client
// already has, so lazy-loading sends each member once (unless
// include_redundant_members). It is per process and bounded; losing it only
// means a member event is sent again, which clients tolerate.
//
// A client has a member event once it acknowledged the response that
// carried it, by presenting that response's next_batch as since. Until
// then the event is pending: a client that lost a response and retries
// with the same since gets the member events again, rather than never.
type lazyCache struct {
	mu      gosync.Mutex
	devices map[string]*lazyDevice
	max     int
}

type lazyDevice struct {
	acked map[string]map[string]string // room → user → member event id the client has
	// pending holds, per next_batch handed out, the member events that
	// response carried; order lists those tokens oldest first.
	pending map[string][]lazyEntry
	order   []string
}

// lazyEntry is one member event sent in a response.
type lazyEntry struct{ roomID, userID, eventID string }

// maxPending bounds the unacknowledged responses remembered per device
// (more than one only when a device syncs concurrently or retries).
const maxPending = 4

func newLazyCache(maxDevices int) *lazyCache {
	return &lazyCache{devices: map[string]*lazyDevice{}, max: maxDevices}
}

func deviceKey(userID, deviceID string) string { return userID + "|" + deviceID }

// sent reports whether the device has acknowledged member event eventID.
func (c *lazyCache) sent(userID, deviceID, roomID, member, eventID string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	d := c.devices[deviceKey(userID, deviceID)]
	return d != nil && d.acked[roomID][member] == eventID
}

// record notes the member events of the response whose next_batch is
// nextBatch.
func (c *lazyCache) record(userID, deviceID, nextBatch string, entries []lazyEntry) {
	if len(entries) == 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	k := deviceKey(userID, deviceID)
	d := c.devices[k]
	if d == nil {
		if len(c.devices) >= c.max {
			for victim := range c.devices {
				delete(c.devices, victim)
				break
			}
		}
		d = &lazyDevice{acked: map[string]map[string]string{}, pending: map[string][]lazyEntry{}}
		c.devices[k] = d
	}
	if _, ok := d.pending[nextBatch]; !ok {
		d.order = append(d.order, nextBatch)
		if len(d.order) > maxPending {
			delete(d.pending, d.order[0])
			d.order = d.order[1:]
		}
	}
	d.pending[nextBatch] = append(d.pending[nextBatch], entries...)
}

// ack marks what the response with next_batch since carried as received.
func (c *lazyCache) ack(userID, deviceID, since string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	d := c.devices[deviceKey(userID, deviceID)]
	if d == nil {
		return
	}
	entries, ok := d.pending[since]
	if !ok {
		return
	}
	for _, e := range entries {
		r := d.acked[e.roomID]
		if r == nil {
			r = map[string]string{}
			d.acked[e.roomID] = r
		}
		r[e.userID] = e.eventID
	}
	delete(d.pending, since)
	for i, tok := range d.order {
		if tok == since {
			d.order = append(d.order[:i], d.order[i+1:]...)
			break
		}
	}
}

// reset forgets a device's state: an initial sync starts from scratch.
func (c *lazyCache) reset(userID, deviceID string) {
	c.mu.Lock()
	delete(c.devices, deviceKey(userID, deviceID))
	c.mu.Unlock()
}
