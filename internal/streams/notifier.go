package streams

import (
	"sync"
)

// Notifier wakes long-polls. A waiter listens on keys ("room:!id",
// "user:@id", …); a write wakes the keys it concerns. A listener's channel
// has a one-slot buffer, so a wake that happens between a waiter's check and
// its select is not lost: the check-then-wait race that polling loops paper
// over does not exist here.
type Notifier struct {
	mu   sync.Mutex
	keys map[string]map[*Listener]struct{}
}

func NewNotifier() *Notifier {
	return &Notifier{keys: map[string]map[*Listener]struct{}{}}
}

// Listener receives a value on C after any of its keys is woken.
type Listener struct {
	C    chan struct{}
	n    *Notifier
	keys []string
}

// RoomKey and UserKey are the key spaces the notifier understands.
func RoomKey(roomID string) string { return "room:" + roomID }
func UserKey(userID string) string { return "user:" + userID }

// Listen registers interest. Call Close when done; a listener holds no
// resources besides its map entries (no goroutine, no DB connection).
func (n *Notifier) Listen(keys ...string) *Listener {
	l := &Listener{C: make(chan struct{}, 1), n: n, keys: keys}
	n.mu.Lock()
	for _, k := range keys {
		set := n.keys[k]
		if set == nil {
			set = map[*Listener]struct{}{}
			n.keys[k] = set
		}
		set[l] = struct{}{}
	}
	n.mu.Unlock()
	return l
}

// Close unregisters the listener.
func (l *Listener) Close() {
	n := l.n
	n.mu.Lock()
	for _, k := range l.keys {
		if set := n.keys[k]; set != nil {
			delete(set, l)
			if len(set) == 0 {
				delete(n.keys, k)
			}
		}
	}
	n.mu.Unlock()
}

// Wake signals every listener on any of keys.
func (n *Notifier) Wake(keys ...string) {
	n.mu.Lock()
	for _, k := range keys {
		for l := range n.keys[k] {
			select {
			case l.C <- struct{}{}:
			default:
			}
		}
	}
	n.mu.Unlock()
}

// Listening reports how many listeners wait on key (metrics and tests).
func (n *Notifier) Listening(key string) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.keys[key])
}
