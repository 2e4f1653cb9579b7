package locks_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"ganglion/internal/locks"
	"ganglion/internal/storage"
	"ganglion/internal/storage/storagetest"
)

// deadline bounds every wait for something that should happen promptly.
const deadline = 20 * time.Second

// fastRenew makes a holder renew often enough that tests see the result of
// its next renewal quickly.
const fastRenew = 10 * time.Millisecond

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *fakeClock { return &fakeClock{now: time.UnixMilli(1_700_000_000_000)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func newLocks(db *storage.DB, instance string, opts locks.Options) *locks.Locks {
	return locks.New(db, instance, opts, slog.New(slog.DiscardHandler))
}

func waitClosed(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(deadline):
		t.Fatalf("timed out waiting for %s", what)
	}
}

func mustAcquire(t *testing.T, ctx context.Context, l *locks.Locks, name, key string) *locks.Lock {
	t.Helper()
	lk, ok, err := l.TryAcquire(ctx, name, key)
	if err != nil || !ok {
		t.Fatalf("TryAcquire(%s, %s) = %v, %v; want acquired", name, key, ok, err)
	}
	return lk
}

func mustNotAcquire(t *testing.T, ctx context.Context, l *locks.Locks, name, key string) {
	t.Helper()
	lk, ok, err := l.TryAcquire(ctx, name, key)
	if err != nil || ok {
		_ = lk.Release(ctx)
		t.Fatalf("TryAcquire(%s, %s) = %v, %v; want not acquired", name, key, ok, err)
	}
}

// lockRow reads the row of (name, key): who holds it and when it was last
// renewed; ok is false if there is none.
func lockRow(t *testing.T, ctx context.Context, db *storage.DB, name, key string) (instance string, renewed int64, ok bool) {
	t.Helper()
	err := db.Reader().QueryRowContext(ctx,
		`SELECT instance_name, last_renewed_ts FROM worker_locks WHERE lock_name = $1 AND lock_key = $2`,
		name, key).Scan(&instance, &renewed)
	if storage.IsNotFound(err) {
		return "", 0, false
	}
	if err != nil {
		t.Fatalf("read lock row: %v", err)
	}
	return instance, renewed, true
}

// race runs perLocks goroutines per Locks, all calling TryAcquire at once,
// and returns the single winner.
func race(t *testing.T, ctx context.Context, fleet []*locks.Locks, perLocks int) *locks.Lock {
	t.Helper()
	start := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var won []*locks.Lock
	var errs []error
	for _, l := range fleet {
		for range perLocks {
			wg.Go(func() {
				<-start
				lk, ok, err := l.TryAcquire(ctx, "race", "k")
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					errs = append(errs, err)
				}
				if ok {
					won = append(won, lk)
				}
			})
		}
	}
	close(start)
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	if len(won) != 1 {
		t.Fatalf("%d holders, want exactly 1", len(won))
	}
	return won[0]
}

// Two instances race from many goroutines for a free lock; then many
// instances race for a free lock and for a stale one, so that the database
// statement itself is raced (goroutines of one Locks are serialised in the
// process). Every round has exactly one winner.
func TestTryAcquireRaceHasOneWinner(t *testing.T) {
	t.Parallel()
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := testCtx(t)
		clock := newClock()
		two := []*locks.Locks{
			newLocks(db, "a", locks.Options{Now: clock.Now}),
			newLocks(db, "b", locks.Options{Now: clock.Now}),
		}
		for range 3 {
			if err := race(t, ctx, two, 12).Release(ctx); err != nil {
				t.Fatal(err)
			}
		}

		var holders []*locks.Lock
		defer func() {
			for _, lk := range holders {
				if err := lk.Release(ctx); err != nil {
					t.Error(err)
				}
			}
		}()
		for round := range 4 {
			// Fresh instance names: the previous holder's instance would
			// rightly take its own lock back.
			var fleet []*locks.Locks
			for i := range 16 {
				fleet = append(fleet, newLocks(db, fmt.Sprintf("r%d-%d", round, i), locks.Options{Now: clock.Now}))
			}
			holders = append(holders, race(t, ctx, fleet, 1))
			// The holders' renewals (every 30 s) do not run during the
			// test, so after this the lock is stale for the next round.
			clock.Advance(locks.DefaultLease + time.Second)
		}
	})
}

// A process restarted under the same instance name takes back its own lock
// at once; the old holder learns on its next renewal. Inside one process a
// lock is not re-entrant.
func TestSameInstanceRetakesOwnLock(t *testing.T) {
	t.Parallel()
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := testCtx(t)
		before := newLocks(db, "main", locks.Options{Renew: fastRenew})
		old := mustAcquire(t, ctx, before, "l", "k")
		mustNotAcquire(t, ctx, before, "l", "k")
		mustNotAcquire(t, ctx, newLocks(db, "worker1", locks.Options{}), "l", "k")

		after := newLocks(db, "main", locks.Options{})
		lk := mustAcquire(t, ctx, after, "l", "k")
		waitClosed(t, old.Lost(), "the old holder's Lost")

		// The old holder's Release must not delete the new holder's row.
		if err := old.Release(ctx); err != nil {
			t.Fatal(err)
		}
		if inst, _, ok := lockRow(t, ctx, db, "l", "k"); !ok || inst != "main" {
			t.Fatalf("row after stale Release: %q, %v; want held by main", inst, ok)
		}
		mustNotAcquire(t, ctx, newLocks(db, "worker1", locks.Options{}), "l", "k")
		select {
		case <-lk.Lost():
			t.Fatal("new holder's Lost closed")
		default:
		}
		if err := lk.Release(ctx); err != nil {
			t.Fatal(err)
		}
	})
}

// A holder that stops renewing (here: its clock stands still, as a hung
// process's writes would) is taken over once a lease has passed, and its
// next renewal closes Lost.
func TestStaleLockTakenOver(t *testing.T) {
	t.Parallel()
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := testCtx(t)
		stuck, other := newClock(), newClock()
		var released atomic.Int32
		holder := newLocks(db, "a", locks.Options{Now: stuck.Now, Renew: fastRenew,
			OnRelease: func(string, string) { released.Add(1) }})
		taker := newLocks(db, "b", locks.Options{Now: other.Now})

		old := mustAcquire(t, ctx, holder, "l", "k")
		other.Advance(locks.DefaultLease - time.Second)
		mustNotAcquire(t, ctx, taker, "l", "k")
		other.Advance(2 * time.Second)
		lk := mustAcquire(t, ctx, taker, "l", "k")
		waitClosed(t, old.Lost(), "the old holder's Lost")

		if err := old.Release(ctx); err != nil {
			t.Fatal(err)
		}
		if n := released.Load(); n != 0 {
			t.Errorf("OnRelease called %d times for a lost lock", n)
		}
		if inst, _, ok := lockRow(t, ctx, db, "l", "k"); !ok || inst != "b" {
			t.Fatalf("row: %q, %v; want held by b", inst, ok)
		}
		// The old holder's process may try again, but b holds it now.
		mustNotAcquire(t, ctx, holder, "l", "k")
		if err := lk.Release(ctx); err != nil {
			t.Fatal(err)
		}
	})
}

// Renewals keep a lock fresh: after a lease has passed on the shared clock,
// another instance still cannot take it.
func TestRenewalKeepsLock(t *testing.T) {
	t.Parallel()
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := testCtx(t)
		clock := newClock()
		holder := newLocks(db, "a", locks.Options{Now: clock.Now, Renew: fastRenew})
		lk := mustAcquire(t, ctx, holder, "l", "k")
		clock.Advance(locks.DefaultLease + time.Second)
		want := clock.Now().UnixMilli()

		// Renewals run on a real 10 ms ticker; wait for one to land.
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		timeout := time.After(deadline)
		for {
			if _, renewed, _ := lockRow(t, ctx, db, "l", "k"); renewed == want {
				break
			}
			select {
			case <-tick.C:
			case <-timeout:
				t.Fatal("timed out waiting for a renewal")
			}
		}
		mustNotAcquire(t, ctx, newLocks(db, "b", locks.Options{Now: clock.Now}), "l", "k")
		if err := lk.Release(ctx); err != nil {
			t.Fatal(err)
		}
	})
}

// Release deletes the row and calls OnRelease; the wiring's LOCK_RELEASED
// then lets another instance acquire immediately, long before any lease.
func TestReleaseLetsOtherAcquire(t *testing.T) {
	t.Parallel()
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := testCtx(t)
		type call struct{ name, key string }
		var calls []call
		a := newLocks(db, "a", locks.Options{OnRelease: func(name, key string) {
			calls = append(calls, call{name, key})
		}})
		b := newLocks(db, "b", locks.Options{})

		lk := mustAcquire(t, ctx, a, "l", "k")
		mustNotAcquire(t, ctx, b, "l", "k")
		// Another key of the same name is a different lock.
		other := mustAcquire(t, ctx, b, "l", "k2")
		if err := lk.Release(ctx); err != nil {
			t.Fatal(err)
		}
		if err := lk.Release(ctx); err != nil {
			t.Fatalf("second Release: %v", err)
		}
		if len(calls) != 1 || calls[0] != (call{"l", "k"}) {
			t.Fatalf("OnRelease calls = %v, want one for l/k", calls)
		}
		select {
		case <-lk.Lost():
			t.Fatal("Lost closed by Release")
		default:
		}
		if _, _, ok := lockRow(t, ctx, db, "l", "k"); ok {
			t.Fatal("row still there after Release")
		}
		b.Released("l", "k") // what the wiring does on LOCK_RELEASED; no waiter: no-op
		lk2 := mustAcquire(t, ctx, b, "l", "k")
		for _, l := range []*locks.Lock{lk2, other} {
			if err := l.Release(ctx); err != nil {
				t.Fatal(err)
			}
		}
		var nilLock *locks.Lock
		if err := nilLock.Release(ctx); err != nil {
			t.Fatalf("Release of nil Lock: %v", err)
		}
	})
}

// When the ctx given at acquire time ends, the lock is released (and Lost
// closed): a holder that never calls Release leaks neither a goroutine nor
// the row.
func TestContextEndReleases(t *testing.T) {
	t.Parallel()
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := testCtx(t)
		released := make(chan string, 1)
		a := newLocks(db, "a", locks.Options{OnRelease: func(name, key string) { released <- name + "/" + key }})
		holdCtx, cancel := context.WithCancel(ctx)
		lk := mustAcquire(t, holdCtx, a, "l", "k")
		cancel()
		waitClosed(t, lk.Lost(), "Lost after the acquire ctx ended")
		select {
		case got := <-released:
			if got != "l/k" {
				t.Fatalf("OnRelease(%s), want l/k", got)
			}
		case <-time.After(deadline):
			t.Fatal("OnRelease not called after the acquire ctx ended")
		}
		if err := lk.Release(ctx); err != nil {
			t.Fatal(err)
		}
		mustAcquire(t, ctx, newLocks(db, "b", locks.Options{}), "l", "k")
	})
}

// Acquire waits while the lock is held and wakes on Released. Its backoff is
// set to an hour, so only Released can wake it within the test's deadline.
func TestAcquireWakesOnReleased(t *testing.T) {
	t.Parallel()
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := testCtx(t)
		b := newLocks(db, "b", locks.Options{})
		locks.SetRetry(b, time.Hour, time.Hour)
		attempts := make(chan bool, 16)
		locks.OnAttempt(b, func(_, _ string, ok bool) { attempts <- ok })
		// a's OnRelease stands in for LOCK_RELEASED over Redis.
		a := newLocks(db, "a", locks.Options{OnRelease: b.Released})

		held := mustAcquire(t, ctx, a, "l", "k")
		type result struct {
			lk  *locks.Lock
			err error
		}
		got := make(chan result, 1)
		go func() {
			lk, err := b.Acquire(ctx, "l", "k")
			got <- result{lk, err}
		}()
		select {
		case ok := <-attempts:
			if ok {
				t.Fatal("Acquire got a held lock")
			}
		case <-time.After(deadline):
			t.Fatal("Acquire made no attempt")
		}
		select {
		case r := <-got:
			t.Fatalf("Acquire returned while the lock was held: %v", r.err)
		default:
		}
		if err := held.Release(ctx); err != nil {
			t.Fatal(err)
		}
		select {
		case r := <-got:
			if r.err != nil {
				t.Fatalf("Acquire: %v", r.err)
			}
			if inst, _, _ := lockRow(t, ctx, db, "l", "k"); inst != "b" {
				t.Fatalf("row held by %q, want b", inst)
			}
			if err := r.lk.Release(ctx); err != nil {
				t.Fatal(err)
			}
		case <-time.After(deadline):
			t.Fatal("Acquire did not wake on Released")
		}
	})
}

// Waiters in the same process are woken by a local Release without any
// OnRelease wiring.
func TestAcquireWakesOnLocalRelease(t *testing.T) {
	t.Parallel()
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := testCtx(t)
		a := newLocks(db, "a", locks.Options{})
		locks.SetRetry(a, time.Hour, time.Hour)
		attempts := make(chan bool, 16)
		locks.OnAttempt(a, func(_, _ string, ok bool) { attempts <- ok })
		held := mustAcquire(t, ctx, a, "l", "k")
		got := make(chan error, 1)
		go func() {
			lk, err := a.Acquire(ctx, "l", "k")
			if err == nil {
				err = lk.Release(ctx)
			}
			got <- err
		}()
		select {
		case <-attempts:
		case <-time.After(deadline):
			t.Fatal("Acquire made no attempt")
		}
		if err := held.Release(ctx); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-got:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(deadline):
			t.Fatal("Acquire did not wake on a local Release")
		}
	})
}

// Acquire gives up with ctx's error when ctx ends while it waits.
func TestAcquireStopsWithContext(t *testing.T) {
	t.Parallel()
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := testCtx(t)
		a := newLocks(db, "a", locks.Options{})
		b := newLocks(db, "b", locks.Options{})
		locks.SetRetry(b, time.Hour, time.Hour)
		attempts := make(chan bool, 16)
		locks.OnAttempt(b, func(_, _ string, ok bool) { attempts <- ok })
		held := mustAcquire(t, ctx, a, "l", "k")
		defer held.Release(ctx)

		waitCtx, cancel := context.WithCancel(ctx)
		got := make(chan error, 1)
		go func() {
			_, err := b.Acquire(waitCtx, "l", "k")
			got <- err
		}()
		<-attempts
		cancel()
		select {
		case err := <-got:
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("Acquire = %v, want context.Canceled", err)
			}
		case <-time.After(deadline):
			t.Fatal("Acquire did not stop with its context")
		}
	})
}

// With the real backoff, Acquire also gets a lock whose release it was
// never told about (a lost LOCK_RELEASED).
func TestAcquireRetriesWithoutReleased(t *testing.T) {
	t.Parallel()
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := testCtx(t)
		a := newLocks(db, "a", locks.Options{})
		b := newLocks(db, "b", locks.Options{})
		var failed atomic.Int32
		firstFail := make(chan struct{})
		locks.OnAttempt(b, func(_, _ string, ok bool) {
			if !ok && failed.Add(1) == 1 {
				close(firstFail)
			}
		})
		held := mustAcquire(t, ctx, a, "l", "k")
		got := make(chan error, 1)
		go func() {
			lk, err := b.Acquire(ctx, "l", "k")
			if err == nil {
				err = lk.Release(ctx)
			}
			got <- err
		}()
		waitClosed(t, firstFail, "a failed attempt")
		if err := held.Release(ctx); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-got:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(deadline):
			t.Fatal("Acquire did not retry")
		}
	})
}

// Many locks held at once by one process are independent.
func TestManyKeys(t *testing.T) {
	t.Parallel()
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := testCtx(t)
		a := newLocks(db, "a", locks.Options{})
		var held []*locks.Lock
		for i := range 5 {
			held = append(held, mustAcquire(t, ctx, a, "l", fmt.Sprint(i)))
		}
		for _, lk := range held {
			if err := lk.Release(ctx); err != nil {
				t.Fatal(err)
			}
		}
		var n int
		if err := db.Reader().QueryRowContext(ctx, `SELECT COUNT(*) FROM worker_locks`).Scan(&n); err != nil || n != 0 {
			t.Fatalf("%d rows left, %v; want 0", n, err)
		}
	})
}
