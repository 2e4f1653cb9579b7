package accounts

import (
	"context"
	"slices"
	"sync"
	"time"
)

// TokenCacheName is the caches-stream name of the access token cache; its
// keys are user ids (all of a user's tokens are dropped together).
const TokenCacheName = "access_tokens_by_user"

// Invalidator publishes cache invalidations to every process (the caches
// stream). The monolith's is local too: the same code path everywhere.
type Invalidator interface {
	Invalidate(ctx context.Context, cache string, keys []string) error
}

// tokenCache keeps recent access-token lookups: every authenticated
// request would otherwise hit the database. Entries expire after a while
// and are dropped at once when the user's devices or password change,
// here and, through the caches stream, on every other process.
type tokenCache struct {
	mu      sync.Mutex
	entries map[string]tokenEntry // token hash → requester
	ttl     time.Duration
	max     int
}

type tokenEntry struct {
	req     Requester
	expires time.Time
}

func newTokenCache() *tokenCache {
	return &tokenCache{entries: map[string]tokenEntry{}, ttl: 5 * time.Minute, max: 100000}
}

func (c *tokenCache) get(hash string, now time.Time) (*Requester, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[hash]
	if !ok || !now.Before(e.expires) {
		return nil, false
	}
	r := e.req
	return &r, true
}

// put caches r until the cache's ttl or, if sooner, validUntilMS (the
// token's own expiry; 0 = none): an expired token must miss the cache so
// the lookup answers soft logout, on every process without any message.
func (c *tokenCache) put(hash string, r Requester, now time.Time, validUntilMS int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.entries) >= c.max {
		for k, e := range c.entries {
			if now.After(e.expires) || len(c.entries) >= c.max {
				delete(c.entries, k)
			}
			if len(c.entries) < c.max*9/10 {
				break
			}
		}
	}
	expires := now.Add(c.ttl)
	if until := time.UnixMilli(validUntilMS); validUntilMS > 0 && until.Before(expires) {
		expires = until
	}
	c.entries[hash] = tokenEntry{req: r, expires: expires}
}

// dropUsers removes every entry of the users (nil: everything).
func (c *tokenCache) dropUsers(users []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if users == nil {
		clear(c.entries)
		return
	}
	for k, e := range c.entries {
		if slices.Contains(users, e.req.UserID) {
			delete(c.entries, k)
		}
	}
}

// DropCachedTokens is the caches-stream handler for TokenCacheName.
func (s *Service) DropCachedTokens(users []string) { s.tokens.dropUsers(users) }

// SetInvalidator wires the caches stream in.
func (s *Service) SetInvalidator(v Invalidator) { s.invalidator = v }

// tokensChanged drops the user's cached tokens everywhere.
func (s *Service) tokensChanged(ctx context.Context, userID string) {
	s.tokens.dropUsers([]string{userID})
	if s.invalidator == nil {
		return
	}
	if err := s.invalidator.Invalidate(ctx, TokenCacheName, []string{userID}); err != nil {
		s.log.Warn("could not publish token cache invalidation", "user_id", userID, "err", err)
	}
}
