package locks

import "time"

// Hooks for tests of Acquire, which must tell a wake-up by Released from
// one by the backoff timer without sleeping.

// SetRetry replaces Acquire's backoff bounds. Call before l is used.
func SetRetry(l *Locks, minWait, maxWait time.Duration) { l.retryMin, l.retryMax = minWait, maxWait }

// OnAttempt calls f after each of Acquire's tries. Call before l is used.
func OnAttempt(l *Locks, f func(name, key string, ok bool)) { l.attempted = f }
