package background_test

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"ganglion/internal/background"
	"ganglion/internal/locks"
	"ganglion/internal/storage"
	"ganglion/internal/storage/storagetest"
)

// deadline bounds every wait for something that should happen promptly.
const deadline = 20 * time.Second

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

var discard = slog.New(slog.DiscardHandler)

func newRunner(db *storage.DB, instance string, enabled bool, log *slog.Logger) *background.Runner {
	return background.NewRunner(locks.New(db, instance, locks.Options{}, discard), enabled, log, nil)
}

// startRunner runs r until the returned stop is called; stop waits for Run
// to return and fails the test if it does not, or returns an error.
func startRunner(t *testing.T, ctx context.Context, r *background.Runner) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run = %v, want nil", err)
				}
			case <-time.After(deadline):
				t.Error("Run did not return after its context ended")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func waitClosed(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(deadline):
		t.Fatalf("timed out waiting for %s", what)
	}
}

// countJob counts its runs and closes reached when the count hits n.
func countJob(name string, every time.Duration, n int64) (background.Job, *atomic.Int64, <-chan struct{}) {
	var runs atomic.Int64
	reached := make(chan struct{})
	return background.Job{Name: name, Every: every, Run: func(context.Context) error {
		if runs.Add(1) == n {
			close(reached)
		}
		return nil
	}}, &runs, reached
}

func lockRows(t *testing.T, ctx context.Context, db *storage.DB) int {
	t.Helper()
	var n int
	if err := db.Reader().QueryRowContext(ctx, `SELECT COUNT(*) FROM worker_locks`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// A disabled runner runs nothing, over a window in which an enabled runner
// on the same database runs its job many times.
func TestDisabledRunnerNeverRuns(t *testing.T) {
	t.Parallel()
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := testCtx(t)
		disabled := newRunner(db, "worker1", false, discard)
		job, runs, _ := countJob("j", time.Millisecond, -1)
		disabled.Add(job)
		enabled := newRunner(db, "main", true, discard)
		witness, _, reached := countJob("witness", time.Millisecond, 20)
		enabled.Add(witness)

		stopDisabled := startRunner(t, ctx, disabled)
		stopEnabled := startRunner(t, ctx, enabled)
		waitClosed(t, reached, "the enabled runner's 20th run")
		stopEnabled()
		stopDisabled()
		if n := runs.Load(); n != 0 {
			t.Fatalf("disabled runner ran its job %d times", n)
		}
	})
}

// An enabled runner runs a job soon after start, holding and then
// releasing its lock, and stops when its context ends.
func TestEnabledRunnerRunsJob(t *testing.T) {
	t.Parallel()
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := testCtx(t)
		r := newRunner(db, "main", true, discard)
		held := make(chan string, 1)
		r.Add(background.Job{Name: "hourly", Every: time.Hour, Run: func(ctx context.Context) error {
			var inst string
			err := db.Reader().QueryRowContext(ctx,
				`SELECT instance_name FROM worker_locks WHERE lock_name = $1 AND lock_key = $2`,
				background.LockName, "hourly").Scan(&inst)
			if err != nil {
				inst = err.Error()
			}
			held <- inst
			return nil
		}})
		stop := startRunner(t, ctx, r)
		select {
		case inst := <-held:
			if inst != "main" {
				t.Fatalf("during the run the lock is held by %q, want main", inst)
			}
		case <-time.After(deadline):
			t.Fatal("job did not run")
		}
		stop()
		if n := lockRows(t, ctx, db); n != 0 {
			t.Fatalf("%d lock rows after Run returned, want 0", n)
		}
	})
}

// Two instances that both think they run background tasks (a misconfigured
// fleet) never run the same job at the same time.
func TestRunnersNeverOverlap(t *testing.T) {
	t.Parallel()
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := testCtx(t)
		var active, overlaps, total atomic.Int64
		reached := make(chan struct{})
		perInstance := map[string]*atomic.Int64{"main": {}, "worker1": {}}
		var runners []*background.Runner
		for inst, count := range perInstance {
			r := newRunner(db, inst, true, discard)
			r.Add(background.Job{Name: "j", Every: time.Millisecond, Run: func(ctx context.Context) error {
				if active.Add(1) > 1 {
					overlaps.Add(1)
				}
				defer active.Add(-1)
				count.Add(1)
				// Some database round trips, so an unguarded run would
				// have time to overlap with the other instance's.
				for range 3 {
					var n int
					if err := db.Reader().QueryRowContext(ctx, `SELECT COUNT(*) FROM worker_locks`).Scan(&n); err != nil {
						return err
					}
				}
				if total.Add(1) == 60 {
					close(reached)
				}
				return nil
			}})
			runners = append(runners, r)
		}
		var stops []func()
		for _, r := range runners {
			stops = append(stops, startRunner(t, ctx, r))
		}
		waitClosed(t, reached, "60 runs")
		for _, stop := range stops {
			stop()
		}
		if n := overlaps.Load(); n != 0 {
			t.Fatalf("%d runs overlapped another", n)
		}
		t.Logf("runs: main %d, worker1 %d", perInstance["main"].Load(), perInstance["worker1"].Load())
	})
}

// lockedBuffer is a log sink safe for concurrent writes.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// A job that fails or panics is logged and runs again next period.
func TestJobErrorsDoNotStopRunner(t *testing.T) {
	t.Parallel()
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := testCtx(t)
		var logs lockedBuffer
		r := newRunner(db, "main", true, slog.New(slog.NewTextHandler(&logs, nil)))
		var runs atomic.Int64
		reached := make(chan struct{})
		r.Add(background.Job{Name: "flaky", Every: time.Millisecond, Run: func(context.Context) error {
			switch runs.Add(1) {
			case 1:
				panic("boom")
			case 4:
				close(reached)
			}
			return errors.New("flaky failure")
		}})
		stop := startRunner(t, ctx, r)
		waitClosed(t, reached, "a fourth run after failures")
		stop()
		out := logs.String()
		for _, want := range []string{"panic: boom", "flaky failure", "job=flaky"} {
			if !strings.Contains(out, want) {
				t.Errorf("logs lack %q:\n%s", want, out)
			}
		}
	})
}

func TestRunOnce(t *testing.T) {
	t.Parallel()
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := testCtx(t)
		// RunOnce works on an instance without the duty: it is the admin
		// trigger, and the lock still guards it.
		r := newRunner(db, "worker1", false, discard)
		failure := errors.New("failure")
		var runs atomic.Int64
		r.Add(background.Job{Name: "ok", Every: time.Hour, Run: func(context.Context) error { runs.Add(1); return nil }})
		r.Add(background.Job{Name: "fails", Every: time.Hour, Run: func(context.Context) error { return failure }})

		if err := r.RunOnce(ctx, "missing"); !errors.Is(err, background.ErrUnknownJob) {
			t.Errorf("RunOnce(missing) = %v, want ErrUnknownJob", err)
		}
		if err := r.RunOnce(ctx, "fails"); !errors.Is(err, failure) {
			t.Errorf("RunOnce(fails) = %v, want the job's error", err)
		}
		if err := r.RunOnce(ctx, "ok"); err != nil || runs.Load() != 1 {
			t.Fatalf("RunOnce(ok) = %v after %d runs, want one run", err, runs.Load())
		}

		other := locks.New(db, "main", locks.Options{}, discard)
		lk, ok, err := other.TryAcquire(ctx, background.LockName, "ok")
		if err != nil || !ok {
			t.Fatalf("take the job's lock: %v, %v", ok, err)
		}
		if err := r.RunOnce(ctx, "ok"); !errors.Is(err, background.ErrBusy) {
			t.Errorf("RunOnce while another instance holds the lock = %v, want ErrBusy", err)
		}
		if err := lk.Release(ctx); err != nil {
			t.Fatal(err)
		}
		if err := r.RunOnce(ctx, "ok"); err != nil || runs.Load() != 2 {
			t.Fatalf("RunOnce(ok) after release = %v after %d runs, want a second run", err, runs.Load())
		}
	})
}

// A run whose lock is taken over (its instance stopped renewing for a
// lease) has its context cancelled, so two instances never keep running
// the job together.
func TestJobStoppedWhenLockLost(t *testing.T) {
	t.Parallel()
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := testCtx(t)
		// The holder's clock stands still, as a hung process's would;
		// it renews every 10 ms so it notices the takeover quickly.
		stuck := time.UnixMilli(1_700_000_000_000)
		holder := locks.New(db, "main", locks.Options{Now: func() time.Time { return stuck }, Renew: 10 * time.Millisecond}, discard)
		r := background.NewRunner(holder, true, discard, nil)
		started := make(chan struct{})
		r.Add(background.Job{Name: "slow", Every: time.Hour, Run: func(ctx context.Context) error {
			close(started)
			<-ctx.Done()
			return ctx.Err()
		}})
		got := make(chan error, 1)
		go func() { got <- r.RunOnce(ctx, "slow") }()
		waitClosed(t, started, "the job to start")

		later := stuck.Add(locks.DefaultLease + time.Second)
		taker := locks.New(db, "worker1", locks.Options{Now: func() time.Time { return later }}, discard)
		lk, ok, err := taker.TryAcquire(ctx, background.LockName, "slow")
		if err != nil || !ok {
			t.Fatalf("take over the stale lock: %v, %v", ok, err)
		}
		defer lk.Release(ctx)
		select {
		case err := <-got:
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("RunOnce = %v, want the job cancelled", err)
			}
		case <-time.After(deadline):
			t.Fatal("job kept running after its lock was lost")
		}
	})
}

func TestAddRejectsBadJobs(t *testing.T) {
	t.Parallel()
	run := func(context.Context) error { return nil }
	for _, tc := range []struct {
		name string
		jobs []background.Job
	}{
		{"no name", []background.Job{{Every: time.Second, Run: run}}},
		{"no period", []background.Job{{Name: "j", Run: run}}},
		{"negative period", []background.Job{{Name: "j", Every: -time.Second, Run: run}}},
		{"no func", []background.Job{{Name: "j", Every: time.Second}}},
		{"duplicate", []background.Job{{Name: "j", Every: time.Second, Run: run}, {Name: "j", Every: time.Minute, Run: run}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := background.NewRunner(nil, false, discard, nil)
			defer func() {
				if recover() == nil {
					t.Error("Add did not panic")
				}
			}()
			for _, j := range tc.jobs {
				r.Add(j)
			}
		})
	}
}

func TestPruneTableDeletesOnlyOldRows(t *testing.T) {
	t.Parallel()
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := testCtx(t)
		now := time.Now()
		// More old rows than one batch, so several batches run.
		const old, recent = 2500, 10
		err := db.Tx(ctx, func(tx *sql.Tx) error {
			for i := range old + recent {
				ts := now.Add(-2 * time.Hour)
				if i >= old {
					ts = now.Add(-time.Minute)
				}
				if _, err := tx.ExecContext(ctx, `INSERT INTO registration_nonces (nonce, created_ts) VALUES ($1, $2)`,
					fmt.Sprint("n", i), ts.UnixMilli()); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		job, err := background.PruneTable(db, "prune_registration_nonces", "registration_nonces", "created_ts", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if job.Name != "prune_registration_nonces" || job.Every != 30*time.Minute {
			t.Errorf("job = %q every %v, want prune_registration_nonces every 30m", job.Name, job.Every)
		}
		// Through a runner, as wired.
		r := newRunner(db, "main", false, discard)
		r.Add(job)
		if err := r.RunOnce(ctx, job.Name); err != nil {
			t.Fatal(err)
		}
		var n int
		var oldest int64
		if err := db.Reader().QueryRowContext(ctx, `SELECT COUNT(*), MIN(created_ts) FROM registration_nonces`).Scan(&n, &oldest); err != nil {
			t.Fatal(err)
		}
		if n != recent || oldest < now.Add(-time.Hour).UnixMilli() {
			t.Fatalf("%d rows left, oldest %d; want the %d recent ones", n, oldest, recent)
		}
		// Nothing left to prune is not an error.
		if err := job.Run(ctx); err != nil {
			t.Fatal(err)
		}
	})
}

// Identifiers are quoted, so names that are SQL keywords work.
func TestPruneTableQuotesIdentifiers(t *testing.T) {
	t.Parallel()
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := testCtx(t)
		if _, err := db.Exec(ctx, `CREATE TABLE "order" ("user" BIGINT NOT NULL)`); err != nil {
			t.Fatal(err)
		}
		now := time.Now()
		for _, ts := range []time.Time{now.Add(-time.Hour), now} {
			if _, err := db.Exec(ctx, `INSERT INTO "order" ("user") VALUES ($1)`, ts.UnixMilli()); err != nil {
				t.Fatal(err)
			}
		}
		job, err := background.PruneTable(db, "prune_order", "order", "user", time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if job.Every != time.Minute {
			t.Errorf("Every = %v, want the 1 minute floor", job.Every)
		}
		if err := job.Run(ctx); err != nil {
			t.Fatal(err)
		}
		var n int
		if err := db.Reader().QueryRowContext(ctx, `SELECT COUNT(*) FROM "order"`).Scan(&n); err != nil || n != 1 {
			t.Fatalf("%d rows left, %v; want 1", n, err)
		}
	})
}

func TestPruneTableValidates(t *testing.T) {
	t.Parallel()
	db := storagetest.NewDB(t, storage.SQLite)
	for _, tc := range []struct {
		name, table, column string
		maxAge              time.Duration
	}{
		{"", "t", "c", time.Hour},
		{"j", "", "c", time.Hour},
		{"j", "t; DROP TABLE users", "c", time.Hour},
		{"j", `t"`, "c", time.Hour},
		{"j", "Users", "c", time.Hour},
		{"j", "1t", "c", time.Hour},
		{"j", "t", "created_ts--", time.Hour},
		{"j", "t", strings.Repeat("c", 64), time.Hour},
		{"j", "t", "c", 0},
	} {
		if _, err := background.PruneTable(db, tc.name, tc.table, tc.column, tc.maxAge); err == nil {
			t.Errorf("PruneTable(%q, %q, %q, %v) succeeded, want error", tc.name, tc.table, tc.column, tc.maxAge)
		}
	}
	job, err := background.PruneTable(db, "j", "to_device_txns", "created_ts", 48*time.Hour)
	if err != nil || job.Every != time.Hour {
		t.Errorf("PruneTable(48h) = every %v, %v; want the 1 hour cap", job.Every, err)
	}
}
