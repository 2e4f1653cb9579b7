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

// get returns the cached entries of users and, for the others, the stamps
// a load must present to store its result.
func (c *userCache[T]) get(users []string) (map[string]T, map[string]cacheStamp) {
	c.mu.Lock()
	defer c.mu.Unlock()
	hit := make(map[string]T, len(users))
	var miss map[string]cacheStamp
	for _, u := range users {
		if e, ok := c.entries[u]; ok {
			hit[u] = e
			continue
		}
		if miss == nil {
			miss = map[string]cacheStamp{}
		}
		miss[u] = cacheStamp{c.epoch, c.version[u]}
	}
	return hit, miss
}

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

// of returns users' values, loading the missing ones with one query per
// chunk of users (never one per user): query selects (user_id, raw) rows
// and ends with "user_id IN"; build derives the value from a user's raw
// text ("" when the user has no row).
func (c *userCache[T]) of(ctx context.Context, q storage.Querier, users []string, query string, build func(user, raw string) T) (map[string]T, error) {
	hit, miss := c.get(users)
	if len(miss) == 0 {
		return hit, nil
	}
	ids := make([]string, 0, len(miss))
	for u := range miss {
		ids = append(ids, u)
	}
	raws, err := loadByUser(ctx, q, query, ids)
	if err != nil {
		return nil, err
	}
	for u, st := range miss {
		v := build(u, raws[u])
		hit[u] = v
		c.put(u, st, v)
	}
	return hit, nil
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
