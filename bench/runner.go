package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// runner runs scenarios one after another against the servers.
type runner struct {
	o      *options
	c      *client
	stderr io.Writer
	txn    atomic.Int64 // transaction ids, unique for the run
}

func newRunner(o *options, stderr io.Writer) *runner {
	return &runner{o: o, c: newClient(o.timeout), stderr: stderr}
}

// base is the URL client i talks to.
func (r *runner) base(i int) string { return r.o.urls[i%len(r.o.urls)] }

// scenarioRun is one scenario in progress: its result, counted errors and
// progress line.
type scenarioRun struct {
	*runner
	res      *Result
	errs     *errorLog
	prog     *progress
	start    time.Time
	measured bool
}

var scenarioFuncs = map[string]func(*scenarioRun, context.Context) error{
	scSend:        (*scenarioRun).send,
	scFanout:      (*scenarioRun).fanout,
	scInitialSync: (*scenarioRun).initialSync,
	scJoin:        (*scenarioRun).join,
	scMessages:    (*scenarioRun).messages,
	scRegister:    (*scenarioRun).registerLogin,
	scPushSend:    (*scenarioRun).pushSend,
	scKeysQuery:   (*scenarioRun).keysQuery,
	scKeysClaim:   (*scenarioRun).keysClaim,
	scMedia:       (*scenarioRun).media,
	scSearch:      (*scenarioRun).search,
	scUserdir:     (*scenarioRun).userdir,
	scFederation:  (*scenarioRun).federation,
}

// runScenario runs one scenario, bounded by -scenario-timeout. A setup
// failure ends it with Fatal set; failed requests of the measured phase are
// counted in Errors.
func (r *runner) runScenario(ctx context.Context, name string) *Result {
	s := &scenarioRun{
		runner: r,
		res: &Result{
			Scenario: name, Label: r.o.label, URLs: r.o.urls, Prefix: r.o.prefix,
			Started: time.Now().UTC().Truncate(time.Second), Params: map[string]any{}, Extra: map[string]any{},
		},
		errs:  &errorLog{},
		start: time.Now(),
	}
	s.prog = startProgress(r.stderr, r.o.progress, labelOr(r.o.label, "run")+" "+name, s.errs)
	rssScope := r.resetPeakRSS()
	ctx, cancel := context.WithTimeout(ctx, r.o.scenarioTime)
	err := scenarioFuncs[name](s, ctx)
	cancel()
	s.prog.close()
	if err != nil {
		s.res.Fatal = err.Error()
		if !s.measured {
			s.res.Fatal = "setup: " + s.res.Fatal
			s.res.SetupS = seconds(time.Since(s.start))
		}
	}
	s.res.Errors, s.res.ErrorSamples = s.errs.snapshot()
	if len(r.o.pids) > 0 {
		if mib, err := peakRSSMiB(r.o.pids); err != nil {
			s.res.Extra["rss_error"] = err.Error()
		} else {
			s.res.PeakRSSMiB, s.res.RSSScope = mib, rssScope
		}
	}
	return s.res
}

// measure runs the measured phase: profiles (with -pprof) cover it, and
// its wall time is returned. Everything before the first call is setup.
func (s *scenarioRun) measure(ctx context.Context, phase string, total int, fn func(ctx context.Context)) time.Duration {
	if !s.measured {
		s.measured = true
		s.res.SetupS = seconds(time.Since(s.start))
	}
	pc := s.startProfiles(ctx, s.res.Scenario)
	s.prog.phase(phase, total)
	start := time.Now()
	fn(ctx)
	d := time.Since(start)
	files, errs := pc.finish(ctx)
	s.res.Profiles = append(s.res.Profiles, files...)
	for _, err := range errs {
		s.errs.add(err)
	}
	return d
}

// setResult fills the headline figures: ops completed in d, as a rate in
// unit, and the latency distribution of the samples.
func (s *scenarioRun) setResult(ops int, d time.Duration, unit string, samples []time.Duration) {
	s.res.Ops = ops
	s.res.DurationS = seconds(d)
	s.res.Unit = unit
	if d > 0 {
		s.res.Rate = round2(float64(ops) / d.Seconds())
	}
	s.res.LatencyMS = percentiles(samples)
}

// users registers n fresh users for the scenario, spreading them over the
// URLs, concurrently.
func (s *scenarioRun) users(ctx context.Context, n int) ([]*user, error) {
	return s.usersWith(ctx, n, s.o.concurrency)
}

// usersWith is users with workers registrations in flight.
func (s *scenarioRun) usersWith(ctx context.Context, n, workers int) ([]*user, error) {
	out := make([]*user, n)
	s.prog.phase("setup: register users", n)
	err := forEach(ctx, n, workers, func(ctx context.Context, i int) error {
		u, err := s.register(ctx, s.base(i), fmt.Sprintf("%s-%s-%d", s.o.prefix, s.res.Scenario, i))
		if err != nil {
			return err
		}
		out[i] = u
		s.prog.add(1)
		return nil
	})
	return out, err
}

// forEach calls fn(i) for every i in [0, n) on at most workers goroutines.
// After the first error it starts no more calls and returns that error.
func forEach(ctx context.Context, n, workers int, fn func(ctx context.Context, i int) error) error {
	inner, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		next  atomic.Int64
		once  sync.Once
		first error
		wg    sync.WaitGroup
	)
	for range min(workers, n) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n || inner.Err() != nil {
					return
				}
				if err := fn(inner, i); err != nil {
					once.Do(func() { first = err; cancel() })
					return
				}
			}
		})
	}
	wg.Wait()
	if first != nil {
		return first
	}
	return ctx.Err()
}

// errorLog counts the failed requests of a measured phase, keeping the
// first few messages.
type errorLog struct {
	mu      sync.Mutex
	n       int
	samples []string
}

const errorSamples = 5

func (e *errorLog) add(err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.n++
	if len(e.samples) < errorSamples {
		e.samples = append(e.samples, err.Error())
	}
}

func (e *errorLog) snapshot() (int, []string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.n, append([]string(nil), e.samples...)
}

// progress prints "scenario phase: done/total, errors, elapsed" on stderr
// every interval until closed.
type progress struct {
	w     io.Writer
	name  string
	errs  *errorLog
	start time.Time
	done  atomic.Int64

	mu    sync.Mutex
	label string
	total int

	stop    chan struct{}
	stopped chan struct{}
}

func startProgress(w io.Writer, every time.Duration, name string, errs *errorLog) *progress {
	p := &progress{w: w, name: name, errs: errs, start: time.Now(), stop: make(chan struct{}), stopped: make(chan struct{})}
	if every <= 0 {
		close(p.stopped)
		return p
	}
	go func() {
		defer close(p.stopped)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-p.stop:
				return
			case <-t.C:
				p.print()
			}
		}
	}()
	return p
}

func (p *progress) phase(label string, total int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.label, p.total = label, total
	p.done.Store(0)
}

func (p *progress) add(n int) { p.done.Add(int64(n)) }

func (p *progress) print() {
	p.mu.Lock()
	label, total := p.label, p.total
	p.mu.Unlock()
	n, _ := p.errs.snapshot()
	done := p.done.Load()
	pct := ""
	if total > 0 {
		pct = fmt.Sprintf(" (%d%%)", done*100/int64(total))
	}
	fmt.Fprintf(p.w, "bench: %s %s: %d/%d%s, %d errors, %.0fs\n", p.name, label, done, total, pct, n, time.Since(p.start).Seconds())
}

func (p *progress) close() {
	select {
	case <-p.stop:
	default:
		close(p.stop)
	}
	<-p.stopped
}

// waitOrDone waits for ch, d or ctx, whichever comes first, and reports
// whether ch was closed.
func waitOrDone(ctx context.Context, ch <-chan struct{}, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ch:
		return true
	case <-t.C:
	case <-ctx.Done():
	}
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// pause waits d unless ctx ends first: the back-off between retries of a
// failed long-poll, so a dead server is not hammered.
func pause(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// isCanceled reports whether err is the end of the scenario's own context
// rather than a server failure.
func isCanceled(ctx context.Context, err error) bool {
	return ctx.Err() != nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded))
}
