// Package locks provides database locks that keep a duty from running twice
// across a fleet of processes sharing one database, as Synapse's
// worker_locks do.
//
// A lock is a row in worker_locks keyed by (name, key). Its holder renews it
// every Options.Renew; a row not renewed for Options.Lease is stale and any
// instance may take it over, so a crashed holder blocks the duty for at most
// one lease. An instance may also take back a row held under its own
// instance name: that row can only be left over from an earlier run of this
// instance (a restart), since instance names are unique in a fleet. Within
// one process a lock is not re-entrant: TryAcquire of a lock this *Locks
// already holds reports false.
//
// Waiting is cheap across processes: Release deletes the row and calls
// Options.OnRelease, which the wiring turns into a LOCK_RELEASED replication
// command; every process that receives it calls Released, which makes its
// waiters retry at once instead of at their next backoff.
package locks

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"sync"
	"time"

	"ganglion/internal/storage"
)

const (
	// DefaultLease and DefaultRenew are Synapse's: a holder renews four
	// times per lease, so a few slow or failed renewals do not lose it.
	DefaultLease = 2 * time.Minute
	DefaultRenew = 30 * time.Second

	// Acquire retries from retryMin, doubling to retryMax. The cap bounds
	// how long a waiter sleeps past a release whose LOCK_RELEASED was lost
	// (Redis is a lossy doorbell).
	retryMin = 100 * time.Millisecond
	retryMax = 5 * time.Second

	// releaseTimeout bounds the DELETE of a release, which runs even when
	// the holder's context has ended (see releaseContext).
	releaseTimeout = 10 * time.Second
)

// The acquire statement is one atomic upsert, correct under concurrency on
// both engines. On PostgreSQL, of two racing inserts one waits for the
// other's commit and then takes the ON CONFLICT path; of two racing
// takeovers the second waits for the row lock and re-evaluates the WHERE
// against the row the first wrote, which is no longer stale. On SQLite all
// writes go through one connection. Either way the loser affects 0 rows.
//
// $5 is now and $6 the staleness cutoff (now - lease), both in ms.
const acquireSQL = `INSERT INTO worker_locks (lock_name, lock_key, instance_name, token, last_renewed_ts)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (lock_name, lock_key) DO UPDATE SET
    instance_name = excluded.instance_name,
    token = excluded.token,
    last_renewed_ts = excluded.last_renewed_ts
WHERE worker_locks.last_renewed_ts <= $6 OR worker_locks.instance_name = excluded.instance_name`

const renewSQL = `UPDATE worker_locks SET last_renewed_ts = $1
WHERE lock_name = $2 AND lock_key = $3 AND token = $4`

const releaseSQL = `DELETE FROM worker_locks WHERE lock_name = $1 AND lock_key = $2 AND token = $3`

// Options tunes a Locks; the zero value is Synapse's behaviour.
type Options struct {
	// Now is the clock written to and compared with last_renewed_ts
	// (default time.Now). Renewal timers always use real time.
	Now func() time.Time
	// Lease is how long a lock may go unrenewed before another instance
	// may take it over (default DefaultLease).
	Lease time.Duration
	// Renew is how often a holder renews (default DefaultRenew). It must be
	// well below Lease; a value of Lease or more is replaced by Lease/4.
	Renew time.Duration
	// OnRelease is called after this process released a lock (its row was
	// deleted), so the wiring can publish LOCK_RELEASED to other processes.
	// It runs synchronously in Release and must not block for long.
	OnRelease func(name, key string)
}

type lockID struct{ name, key string }

// waitList is how Released wakes the Acquire calls waiting for one lock:
// each waiter holds the current channel, Released closes it and installs a
// fresh one. Counted so the entry goes away with its last waiter.
type waitList struct {
	ch      chan struct{}
	waiters int
}

// Locks acquires database locks on behalf of one instance. It starts no
// goroutines of its own; each held Lock has one renewal goroutine.
type Locks struct {
	db        *storage.DB
	instance  string
	now       func() time.Time
	lease     time.Duration
	renew     time.Duration
	onRelease func(name, key string)
	log       *slog.Logger

	// Fixed outside tests (export_test.go).
	retryMin, retryMax time.Duration
	attempted          func(name, key string, ok bool)

	mu sync.Mutex
	// held has an entry from the moment TryAcquire claims a lock in this
	// process until the Lock ends: it serialises acquisitions of one lock
	// inside the process, which the database cannot do for us because a
	// same-instance upsert always succeeds.
	held  map[lockID]*Lock
	waits map[lockID]*waitList
}

// New returns the locks of instance (this process's instance name).
func New(db *storage.DB, instance string, opts Options, log *slog.Logger) *Locks {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	l := &Locks{
		db:        db,
		instance:  instance,
		now:       opts.Now,
		lease:     opts.Lease,
		renew:     opts.Renew,
		onRelease: opts.OnRelease,
		log:       log,
		retryMin:  retryMin,
		retryMax:  retryMax,
		held:      map[lockID]*Lock{},
		waits:     map[lockID]*waitList{},
	}
	if l.now == nil {
		l.now = time.Now
	}
	if l.lease <= 0 {
		l.lease = DefaultLease
	}
	if l.renew <= 0 {
		l.renew = DefaultRenew
	}
	if l.renew >= l.lease {
		// Renewing once per lease or less often lets other instances take
		// over a lock whose holder is alive and working.
		log.Warn("lock renew interval must be below the lease; using lease/4",
			"renew", l.renew, "lease", l.lease)
		l.renew = l.lease / 4
	}
	return l
}

// TryAcquire takes the lock (name, key) if nobody holds it, its holder
// stopped renewing it for a lease, or it was held by an earlier run of this
// instance. It reports false, without error, when the lock is held
// elsewhere or already by this process.
//
// The returned Lock lives until Release is called or ctx ends, whichever
// comes first: ctx is the lifetime of the holder's work, not a timeout for
// this call. When ctx ends the lock is released (asynchronously) and Lost
// is closed, so a holder that forgets Release leaks nothing beyond its ctx.
func (l *Locks) TryAcquire(ctx context.Context, name, key string) (*Lock, bool, error) {
	id := lockID{name, key}
	lk := &Lock{
		locks: l,
		name:  name,
		key:   key,
		// 128 random bits: the token alone decides whose row it is.
		token: rand.Text(),
		lost:  make(chan struct{}),
		stop:  make(chan struct{}),
		done:  make(chan struct{}),
	}
	l.mu.Lock()
	if _, busy := l.held[id]; busy {
		l.mu.Unlock()
		return nil, false, nil
	}
	l.held[id] = lk
	l.mu.Unlock()

	now := l.now()
	res, err := l.db.Exec(ctx, acquireSQL, name, key, l.instance, lk.token,
		now.UnixMilli(), now.Add(-l.lease).UnixMilli())
	var n int64
	if err == nil {
		n, err = res.RowsAffected()
	}
	if err != nil || n == 0 {
		l.forget(lk)
		if err != nil {
			return nil, false, fmt.Errorf("acquire lock %s/%s: %w", name, key, err)
		}
		return nil, false, nil
	}
	lk.lastRenewed = now
	l.log.Debug("acquired lock", "instance", l.instance, "lock_name", name, "lock_key", key)
	go lk.keepAlive(ctx)
	return lk, true, nil
}

// Acquire waits until it holds the lock (name, key) or ctx ends. It retries
// with jittered exponential backoff from 100 ms up to 5 s, and at once when
// Released(name, key) is called. A database error ends the wait and is
// returned; the caller decides whether to try again. The Lock's lifetime is
// as for TryAcquire.
func (l *Locks) Acquire(ctx context.Context, name, key string) (*Lock, error) {
	id := lockID{name, key}
	l.mu.Lock()
	w := l.waits[id]
	if w == nil {
		w = &waitList{ch: make(chan struct{})}
		l.waits[id] = w
	}
	w.waiters++
	l.mu.Unlock()
	defer func() {
		l.mu.Lock()
		if w.waiters--; w.waiters == 0 {
			delete(l.waits, id)
		}
		l.mu.Unlock()
	}()

	backoff := l.retryMin
	for {
		// Taken before trying, so a release between a failed try and the
		// wait below still wakes us.
		l.mu.Lock()
		woken := w.ch
		l.mu.Unlock()

		lk, ok, err := l.TryAcquire(ctx, name, key)
		if l.attempted != nil {
			l.attempted(name, key, ok)
		}
		if err != nil {
			return nil, err
		}
		if ok {
			return lk, nil
		}
		// Jitter in [backoff/2, backoff] keeps waiters from retrying in
		// lockstep.
		wait := backoff/2 + mrand.N(backoff/2+1)
		backoff = min(backoff*2, l.retryMax)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("wait for lock %s/%s: %w", name, key, ctx.Err())
		case <-woken:
			t.Stop()
		case <-t.C:
		}
	}
}

// Released wakes this process's Acquire calls waiting for (name, key) so
// they retry at once. The wiring calls it for every LOCK_RELEASED command;
// calling it when nobody waits, or for a lock that is not free after all,
// is harmless.
func (l *Locks) Released(name, key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if w := l.waits[lockID{name, key}]; w != nil {
		close(w.ch)
		w.ch = make(chan struct{})
	}
}

// forget drops lk from the in-process table, if it is still lk's entry.
func (l *Locks) forget(lk *Lock) {
	id := lockID{lk.name, lk.key}
	l.mu.Lock()
	if l.held[id] == lk {
		delete(l.held, id)
	}
	l.mu.Unlock()
}

// release deletes lk's row (only if it still carries lk's token) and tells
// waiters here and, through OnRelease, elsewhere.
func (l *Locks) release(ctx context.Context, lk *Lock) error {
	res, err := l.db.Exec(ctx, releaseSQL, lk.name, lk.key, lk.token)
	var n int64
	if err == nil {
		n, err = res.RowsAffected()
	}
	// Forgotten even if the DELETE failed: the row then goes stale, and
	// this instance may take it back at once anyway.
	l.forget(lk)
	if err != nil {
		return fmt.Errorf("release lock %s/%s: %w", lk.name, lk.key, err)
	}
	l.log.Debug("released lock", "instance", l.instance, "lock_name", lk.name, "lock_key", lk.key)
	l.Released(lk.name, lk.key)
	if n > 0 && l.onRelease != nil {
		// Only when our row was deleted: otherwise another instance
		// took the lock over and nobody can have it yet.
		l.onRelease(lk.name, lk.key)
	}
	return nil
}

// Lock is a held database lock.
type Lock struct {
	locks            *Locks
	name, key, token string

	lost     chan struct{} // closed when the lock ends other than by Release
	stop     chan struct{} // closed by Release to stop keepAlive
	stopOnce sync.Once
	done     chan struct{} // closed when keepAlive has returned

	mu    sync.Mutex
	ended bool // the lock was released or lost; decided exactly once

	// lastRenewed is when the row was last written; only keepAlive reads
	// or writes it once it has started.
	lastRenewed time.Time
}

// Name and Key identify the lock.
func (lk *Lock) Name() string { return lk.name }
func (lk *Lock) Key() string  { return lk.key }

// Lost is closed when this process stops holding the lock without Release
// having been called: a renewal found that another instance took it over,
// renewals failed for a whole lease (another instance may have taken it
// over by now), or the ctx given at acquire time ended. A holder must stop
// the guarded work when it fires.
func (lk *Lock) Lost() <-chan struct{} { return lk.lost }

// Release stops renewing and deletes the lock, then calls Options.OnRelease.
// It is safe to call more than once, on a nil Lock, and after the lock was
// lost (all of which do nothing). The DELETE runs even if ctx has already
// ended, bounded by a short timeout: a release skipped at shutdown would
// keep other instances waiting for a whole lease.
func (lk *Lock) Release(ctx context.Context) error {
	if lk == nil {
		return nil
	}
	lk.stopOnce.Do(func() { close(lk.stop) })
	// No renewal may run after (or race with) the DELETE.
	<-lk.done
	if !lk.end() {
		return nil
	}
	ctx, cancel := releaseContext(ctx)
	defer cancel()
	return lk.locks.release(ctx, lk)
}

func releaseContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
}

// end marks the lock ended and reports whether this call did so: exactly
// one of Release, loss and the end of ctx gets to act on it.
func (lk *Lock) end() bool {
	lk.mu.Lock()
	defer lk.mu.Unlock()
	if lk.ended {
		return false
	}
	lk.ended = true
	return true
}

// markLost ends the lock as lost: it is no longer ours, so there is nothing
// to delete and nobody to wake.
func (lk *Lock) markLost() {
	if lk.end() {
		lk.locks.forget(lk)
		close(lk.lost)
	}
}

// keepAlive renews the lock until Release, loss, or the end of ctx.
func (lk *Lock) keepAlive(ctx context.Context) {
	defer close(lk.done)
	l := lk.locks
	t := time.NewTicker(l.renew)
	defer t.Stop()
	for {
		select {
		case <-lk.stop:
			return
		case <-ctx.Done():
			if lk.end() {
				rctx, cancel := releaseContext(ctx)
				if err := l.release(rctx, lk); err != nil {
					l.log.Warn("could not release lock after its context ended", "instance", l.instance,
						"lock_name", lk.name, "lock_key", lk.key, "err", err)
				}
				cancel()
				close(lk.lost)
			}
			return
		case <-t.C:
			if !lk.renewOnce(ctx) {
				return
			}
		}
	}
}

// renewOnce writes a fresh last_renewed_ts and reports whether the lock is
// still held.
func (lk *Lock) renewOnce(ctx context.Context) bool {
	l := lk.locks
	now := l.now()
	res, err := l.db.Exec(ctx, renewSQL, now.UnixMilli(), lk.name, lk.key, lk.token)
	var n int64
	if err == nil {
		n, err = res.RowsAffected()
	}
	switch {
	case err != nil && ctx.Err() != nil:
		// keepAlive's next select sees ctx and releases.
		return true
	case err != nil:
		if now.Sub(lk.lastRenewed) >= l.lease {
			l.log.Error("lock renewals failed for a whole lease; giving the lock up", "instance", l.instance,
				"lock_name", lk.name, "lock_key", lk.key, "err", err)
			lk.markLost()
			return false
		}
		l.log.Warn("could not renew lock; will retry", "instance", l.instance,
			"lock_name", lk.name, "lock_key", lk.key, "err", err)
		return true
	case n == 0:
		l.log.Warn("lock was taken over by another instance", "instance", l.instance,
			"lock_name", lk.name, "lock_key", lk.key)
		lk.markLost()
		return false
	default:
		lk.lastRenewed = now
		return true
	}
}
