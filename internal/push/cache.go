package push

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"ganglion/internal/storage"
)

// rulesCache keeps users' compiled rulesets for evaluation. An entry goes
// stale only when the user's rules change, which every process hears of:
// the writer after its commit, the others when they apply the push_rules
// row (before the stream position advances). A load races with changes:
// it stores its result only if no change of the user came meanwhile.
type rulesCache struct {
	mu      sync.Mutex
	max     int
	epoch   uint64
	version map[string]uint64
	entries map[string]*cachedRules
}

type cachedRules struct {
	ruleset  Ruleset
	compiled *Compiled
}

func newRulesCache(max int) *rulesCache {
	return &rulesCache{max: max, version: map[string]uint64{}, entries: map[string]*cachedRules{}}
}

// Changed drops a user's entry.
func (c *rulesCache) Changed(userID string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.entries, userID)
	c.version[userID]++
}

type cacheStamp struct{ epoch, version uint64 }

// get returns the cached entries of users and, for the others, the stamps
// a load must present to store its result.
func (c *rulesCache) get(users []string) (map[string]*cachedRules, map[string]cacheStamp) {
	c.mu.Lock()
	defer c.mu.Unlock()
	hit := make(map[string]*cachedRules, len(users))
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

func (c *rulesCache) put(userID string, st cacheStamp, e *cachedRules) {
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
	c.entries[userID] = e
}

// rulesOf returns users' rules, loading those not cached with one query
// per chunk of users (never one per user).
func (c *rulesCache) rulesOf(ctx context.Context, q storage.Querier, users []string) (map[string]*cachedRules, error) {
	hit, miss := c.get(users)
	if len(miss) == 0 {
		return hit, nil
	}
	docs := make(map[string]string, len(miss))
	ids := make([]string, 0, len(miss))
	for u := range miss {
		ids = append(ids, u)
	}
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
		rows, err := q.QueryContext(ctx, `SELECT user_id, rules FROM push_rules_users WHERE user_id IN (`+in.String()+`)`, args...)
		if err != nil {
			return nil, fmt.Errorf("load push rules of %d users: %w", len(part), err)
		}
		for rows.Next() {
			var u, raw string
			if err := rows.Scan(&u, &raw); err != nil {
				rows.Close()
				return nil, fmt.Errorf("load push rules: %w", err)
			}
			docs[u] = raw
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return nil, fmt.Errorf("load push rules: %w", err)
		}
	}
	for u, st := range miss {
		rs := parseUserRules(docs[u]).ruleset(u)
		e := &cachedRules{ruleset: rs, compiled: Compile(rs)}
		hit[u] = e
		c.put(u, st, e)
	}
	return hit, nil
}
