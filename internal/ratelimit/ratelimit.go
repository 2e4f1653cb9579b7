// Package ratelimit implements Synapse's rc_* limits: a token bucket per key
// (user, IP address, account) refilled at per_second with capacity burst_count.
package ratelimit

import (
	"math"
	"sync"
	"time"
)

// Rule is one rc_* setting.
type Rule struct {
	PerSecond  float64
	BurstCount float64
}

// Limiter holds the buckets of one rule. Buckets are in memory, per
// process: with several workers each enforces the limit for the requests it
// serves, as Synapse does.
type Limiter struct {
	rule    Rule
	now     func() time.Time
	mu      sync.Mutex
	buckets map[string]*bucket
	sweeps  int
}

type bucket struct {
	tokens float64
	last   time.Time
}

// New returns a limiter; a rule with PerSecond <= 0 disables limiting.
func New(rule Rule, now func() time.Time) *Limiter {
	if now == nil {
		now = time.Now
	}
	return &Limiter{rule: rule, now: now, buckets: map[string]*bucket{}}
}

// Allow takes one action for key. When refused it returns how long until an
// action would be allowed.
func (l *Limiter) Allow(key string) (bool, time.Duration) {
	return l.AllowN(key, 1)
}

// AllowN takes n actions at once (createRoom inviting n users), all or
// none. n larger than the burst can never pass; the wait returned is then
// the time to refill the whole bucket.
func (l *Limiter) AllowN(key string, n int) (bool, time.Duration) {
	if l == nil || l.rule.PerSecond <= 0 || n <= 0 {
		return true, 0
	}
	now := l.now()
	burst := math.Max(l.rule.BurstCount, 1)
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[key]
	if b == nil {
		b = &bucket{tokens: burst, last: now}
		l.buckets[key] = b
	}
	b.tokens = math.Min(burst, b.tokens+now.Sub(b.last).Seconds()*l.rule.PerSecond)
	b.last = now
	l.sweep(now, burst)
	if b.tokens >= float64(n) {
		b.tokens -= float64(n)
		return true, 0
	}
	return false, l.wait(b.tokens, n, burst)
}

// sweep drops full buckets now and then so idle keys do not accumulate.
func (l *Limiter) sweep(now time.Time, burst float64) {
	l.sweeps++
	if l.sweeps < 1024 {
		return
	}
	l.sweeps = 0
	for k, b := range l.buckets {
		if b.tokens+now.Sub(b.last).Seconds()*l.rule.PerSecond >= burst {
			delete(l.buckets, k)
		}
	}
}

// Peek reports whether an action would be allowed now, without taking it:
// failed-login limits only count failures but must refuse before checking.
func (l *Limiter) Peek(key string) (bool, time.Duration) {
	return l.PeekN(key, 1)
}

// PeekN reports whether n actions would be allowed now, without taking
// them, so a request checked against several limits takes from none when
// one of them refuses.
func (l *Limiter) PeekN(key string, n int) (bool, time.Duration) {
	if l == nil || l.rule.PerSecond <= 0 || n <= 0 {
		return true, 0
	}
	now := l.now()
	burst := math.Max(l.rule.BurstCount, 1)
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[key]
	if b == nil {
		b = &bucket{tokens: burst, last: now}
	}
	tokens := math.Min(burst, b.tokens+now.Sub(b.last).Seconds()*l.rule.PerSecond)
	if tokens >= float64(n) {
		return true, 0
	}
	return false, l.wait(tokens, n, burst)
}

// wait is how long until n actions fit in a bucket holding tokens. More
// than the burst never fits; the client is told to wait a whole refill
// rather than retry at once.
func (l *Limiter) wait(tokens float64, n int, burst float64) time.Duration {
	need := float64(n)
	if need > burst {
		need, tokens = burst, 0
	}
	return time.Duration((need - tokens) / l.rule.PerSecond * float64(time.Second))
}
