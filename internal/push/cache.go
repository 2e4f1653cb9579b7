package push

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"ganglion/internal/storage"
)

// userCache keeps one derived value per user (compiled rules, ignored
// users) for evaluation. An entry goes stale only when the user's source
// data changes, which every process hears of after the change commits
// (Changed). A load races with changes: it remembers the user's version
// before its query and stores its result only if no change came meanwhile.
type userCache[T any] struct {
	mu      sync.Mutex
	max     int
	epoch   uint64
	version map[string]uint64
	entries map[string]T
}

func newUserCache[T any](max int) *userCache[T] {
	return &userCache[T]{max: max, version: map[string]uint64{}, entries: map[string]T{}}
}

// Changed drops users' entries (nil: everyone's).
func (c *userCache[T]) Changed(users ...string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if users == nil {
		clear(c.entries)
		clear(c.version)
		c.epoch++
		return
	}
	for _, u := range users {
		delete(c.entries, u)
		c.version[u]++
	}
}

type cacheStamp struct{ epoch, version uint64 }

func (c *userCache[T]) put(userID string, st cacheStamp, v T) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if st.epoch != c.epoch || st.version != c.version[userID] {
		return
	}
	if len(c.entries) >= c.max || len(c.version) >= 4*c.max {
		clear(c.entries)
		clear(c.version)
		c.epoch++
		return
	}
	c.entries[userID] = v
}

// into sets dst[i] to users[i]'s value, loading the missing ones with one
// query per chunk of users (never one per user): query selects (user_id,
// raw) rows and ends with "user_id IN"; build derives the value from a
// user's raw text ("" when the user has no row). It builds no maps: the
// hook asks for a whole room's members at every event.
func (c *userCache[T]) into(ctx context.Context, q storage.Querier, users []string, dst []T, query string, build func(user, raw string) T) error {
	var miss []int
	var stamps []cacheStamp
	c.mu.Lock()
	for i, u := range users {
		if e, ok := c.entries[u]; ok {
			dst[i] = e
			continue
		}
		miss = append(miss, i)
		stamps = append(stamps, cacheStamp{c.epoch, c.version[u]})
	}
	c.mu.Unlock()
	if len(miss) == 0 {
		return nil
	}
	ids := make([]string, len(miss))
	for k, i := range miss {
		ids[k] = users[i]
	}
	raws, err := loadByUser(ctx, q, query, ids)
	if err != nil {
		return err
	}
	for k, i := range miss {
		v := build(users[i], raws[users[i]])
		dst[i] = v
		c.put(users[i], stamps[k], v)
	}
	return nil
}

func loadByUser(ctx context.Context, q storage.Querier, query string, ids []string) (map[string]string, error) {
	out := make(map[string]string, len(ids))
	const chunk = 500
	for lo := 0; lo < len(ids); lo += chunk {
		part := ids[lo:min(lo+chunk, len(ids))]
		var in strings.Builder
		args := make([]any, len(part))
		for i, u := range part {
			if i > 0 {
				in.WriteString(", ")
			}
			fmt.Fprintf(&in, "$%d", i+1)
			args[i] = u
		}
		rows, err := q.QueryContext(ctx, query+` (`+in.String()+`)`, args...)
		if err != nil {
			return nil, fmt.Errorf("load per-user push data of %d users: %w", len(part), err)
		}
		for rows.Next() {
			var u, raw string
			if err := rows.Scan(&u, &raw); err != nil {
				rows.Close()
				return nil, fmt.Errorf("load per-user push data: %w", err)
			}
			out[u] = raw
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return nil, fmt.Errorf("load per-user push data: %w", err)
		}
	}
	return out, nil
}

type cachedRules struct {
	ruleset  Ruleset
	compiled *Compiled
}

const rulesQuery = `SELECT user_id, rules FROM push_rules_users WHERE user_id IN`

func buildRules(user, raw string) *cachedRules {
	rs := parseUserRules(raw).ruleset(user)
	return &cachedRules{ruleset: rs, compiled: Compile(rs)}
}
