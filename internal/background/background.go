// Package background runs the periodic duties of the instance named by
// run_background_tasks_on (by default main): pruning expired rows and the
// like.
//
// Config is supposed to give the duty to exactly one instance, but nothing
// enforces that (Synapse does not either), so every run of a job also holds
// the database lock ("background_job", job name): two instances that both
// believe they have the duty never run the same job at the same time. They
// may still each run it once per period; jobs must therefore be idempotent,
// which pruning is.
package background

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime/debug"
	"sync"
	"time"

	"ganglion/internal/locks"
)

// LockName is the lock name every job run holds, keyed by the job's name.
const LockName = "background_job"

// startSpread bounds the delay before a job's first run. Jobs start at a
// random point within it so a process does not fire all of them in the
// same instant it starts serving.
const startSpread = time.Second

var (
	// ErrUnknownJob: RunOnce was given a name no job was added under.
	ErrUnknownJob = errors.New("unknown background job")
	// ErrBusy: the job's lock is held, by another instance or by a run
	// already in progress here.
	ErrBusy = errors.New("background job is already running")
)

// Job is a periodic duty.
type Job struct {
	// Name identifies the job in logs, in RunOnce and in its lock key.
	Name string
	// Every is the pause between the end of one run and the start of the
	// next.
	Every time.Duration
	// Run does the work. Its ctx ends at shutdown or when the job's lock
	// is lost to another instance; Run must then stop promptly.
	Run func(ctx context.Context) error
}

// Runner runs the jobs added to it on the instance that has the duty.
type Runner struct {
	locks   *locks.Locks
	enabled bool
	log     *slog.Logger
	now     func() time.Time

	mu      sync.Mutex
	jobs    map[string]Job
	order   []string // Add order, so start-up is deterministic in logs
	started bool
}

// NewRunner returns a runner. enabled says whether this instance runs
// background tasks (config's run_background_tasks_on names it); a disabled
// runner's Run only waits. now times the runs for logs (default time.Now).
func NewRunner(locks *locks.Locks, enabled bool, log *slog.Logger, now func() time.Time) *Runner {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if now == nil {
		now = time.Now
	}
	return &Runner{locks: locks, enabled: enabled, log: log, now: now, jobs: map[string]Job{}}
}

// Add registers a job. It is wiring, done before Run: it panics on a job
// without a name, period or function, on a duplicate name, and after Run
// has started, as each is a programming error.
func (r *Runner) Add(j Job) {
	if j.Name == "" || j.Every <= 0 || j.Run == nil {
		panic(fmt.Sprintf("background: invalid job %q (every %v, run set: %v)", j.Name, j.Every, j.Run != nil))
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.started {
		panic(fmt.Sprintf("background: job %q added after Run started", j.Name))
	}
	if _, dup := r.jobs[j.Name]; dup {
		panic(fmt.Sprintf("background: job %q added twice", j.Name))
	}
	r.jobs[j.Name] = j
	r.order = append(r.order, j.Name)
}

// Run runs every job periodically until ctx ends, then returns nil once all
// runs in progress have finished (and released their locks). On an
// instance without the duty it just waits for ctx. A job's errors are
// logged and it runs again next period; they never stop the runner.
func (r *Runner) Run(ctx context.Context) error {
	r.mu.Lock()
	if r.started {
		r.mu.Unlock()
		return errors.New("background: Run called twice")
	}
	r.started = true
	jobs := make([]Job, 0, len(r.order))
	for _, name := range r.order {
		jobs = append(jobs, r.jobs[name])
	}
	r.mu.Unlock()

	if !r.enabled {
		r.log.Debug("background tasks run on another instance")
		<-ctx.Done()
		return nil
	}
	r.log.Info("running background tasks", "jobs", len(jobs))
	var wg sync.WaitGroup
	for _, j := range jobs {
		wg.Go(func() { r.loop(ctx, j) })
	}
	wg.Wait()
	return nil
}

// loop runs j until ctx ends. The next run is timed from the end of the
// previous one, so a slow run is never overlapped or followed by a burst of
// catch-up runs.
func (r *Runner) loop(ctx context.Context, j Job) {
	t := time.NewTimer(rand.N(min(j.Every, startSpread)))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		err := r.run(ctx, j)
		switch {
		case ctx.Err() != nil:
			return
		case errors.Is(err, ErrBusy):
			r.log.Debug("background job skipped: running elsewhere", "job", j.Name)
		case err != nil:
			r.log.Error("background job failed", "job", j.Name, "err", err)
		}
		t.Reset(j.Every)
	}
}

// RunOnce runs the job called name now, under its lock, and returns its
// error; ErrBusy (wrapped) if the job is running here or on another
// instance, ErrUnknownJob if there is no such job. It works whether or not
// this instance has the duty, so tests and an admin trigger can use it on
// any instance; the lock still keeps runs from overlapping.
func (r *Runner) RunOnce(ctx context.Context, name string) error {
	r.mu.Lock()
	j, ok := r.jobs[name]
	r.mu.Unlock()
	if !ok {
		return fmt.Errorf("run background job %q: %w", name, ErrUnknownJob)
	}
	return r.run(ctx, j)
}

func (r *Runner) run(ctx context.Context, j Job) error {
	lk, ok, err := r.locks.TryAcquire(ctx, LockName, j.Name)
	if err != nil {
		return fmt.Errorf("run background job %s: %w", j.Name, err)
	}
	if !ok {
		return fmt.Errorf("run background job %s: %w", j.Name, ErrBusy)
	}
	defer func() {
		if err := lk.Release(ctx); err != nil {
			r.log.Warn("could not release background job lock", "job", j.Name, "err", err)
		}
	}()

	// Losing the lock means another instance may start this job now: stop
	// ours rather than run two at once.
	jobCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-lk.Lost():
			cancel()
		case <-jobCtx.Done():
		}
	}()

	start := r.now()
	err = call(jobCtx, j)
	took := r.now().Sub(start)
	select {
	case <-lk.Lost():
		if ctx.Err() == nil {
			r.log.Warn("background job lost its lock and was stopped", "job", j.Name, "took", took)
		}
	default:
	}
	if err != nil {
		return fmt.Errorf("run background job %s: %w", j.Name, err)
	}
	r.log.Debug("background job done", "job", j.Name, "took", took)
	return nil
}

// call runs j, turning a panic into an error: a bug in one periodic job
// must not take down the process serving clients.
func call(ctx context.Context, j Job) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("panic: %v\n%s", p, debug.Stack())
		}
	}()
	return j.Run(ctx)
}
