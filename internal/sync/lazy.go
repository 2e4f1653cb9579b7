package sync

import gosync "sync"

// lazyCache remembers, per device and room, which member events a client
// already received, so lazy-loading sends each member once (unless
// include_redundant_members). It is per process and bounded; losing it only
// means a member event is sent again, which clients tolerate.
type lazyCache struct {
	mu      gosync.Mutex
	devices map[string]map[string]map[string]string // device → room → user → member event id
	max     int
}

func newLazyCache(maxDevices int) *lazyCache {
	return &lazyCache{devices: map[string]map[string]map[string]string{}, max: maxDevices}
}

func deviceKey(userID, deviceID string) string { return userID + "|" + deviceID }

func (c *lazyCache) sent(userID, deviceID, roomID, member, eventID string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.devices[deviceKey(userID, deviceID)][roomID][member] == eventID
}

func (c *lazyCache) remember(userID, deviceID, roomID, member, eventID string) {
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
		d = map[string]map[string]string{}
		c.devices[k] = d
	}
	r := d[roomID]
	if r == nil {
		r = map[string]string{}
		d[roomID] = r
	}
	r[member] = eventID
}

// reset forgets a device's state: an initial sync starts from scratch.
func (c *lazyCache) reset(userID, deviceID string) {
	c.mu.Lock()
	delete(c.devices, deviceKey(userID, deviceID))
	c.mu.Unlock()
}
