package fleet

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Child is one supervised process.
type Child struct {
	Name string
	// Args follow the binary on the command line.
	Args []string
	// HealthURL is polled for the first child before the others start.
	HealthURL string
	// LogFile, if set, receives the child's output too (appended, without
	// the prefix).
	LogFile string
}

// Options configure Supervise.
type Options struct {
	// Binary is the program every child runs.
	Binary string
	// Children are started in order. The first (the main process) must
	// answer its HealthURL within StartupTimeout before the others start:
	// it migrates the database they wait for.
	Children []Child
	// Out receives every line a child writes, prefixed "name | ".
	Out io.Writer
	Log *slog.Logger
	// Env is the children's environment; nil inherits this process's.
	Env []string

	MinBackoff, MaxBackoff time.Duration
	// ResetAfter: a child that stayed up this long restarts after
	// MinBackoff again.
	ResetAfter     time.Duration
	StartupTimeout time.Duration
	// StopTimeout bounds the wait after SIGTERM; stragglers get SIGKILL.
	StopTimeout time.Duration
}

// Supervise runs the children until ctx ends, restarting any that exits
// with exponential backoff. When ctx ends it sends every child SIGTERM,
// waits up to StopTimeout, kills the rest, waits for them and returns nil.
// It returns an error, after stopping everything, if the first child does
// not become healthy within StartupTimeout.
func Supervise(ctx context.Context, o Options) error {
	if len(o.Children) == 0 {
		return errors.New("supervise: no instances")
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
	width := 0
	for _, c := range o.Children {
		width = max(width, len(c.Name))
	}
	out := &lockedWriter{w: o.Out}

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	start := func(c Child) error {
		var logFile *os.File
		if c.LogFile != "" {
			f, err := os.OpenFile(c.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
			if err != nil {
				return fmt.Errorf("open log of %s: %w", c.Name, err)
			}
			logFile = f
		}
		prefix := fmt.Sprintf("%-*s | ", width, c.Name)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if logFile != nil {
				defer logFile.Close()
			}
			s := &supervised{o: &o, c: c, out: out, prefix: prefix, file: logFile}
			s.run(runCtx)
		}()
		return nil
	}
	stopAll := func() {
		cancel()
		wg.Wait()
	}

	first := o.Children[0]
	if err := start(first); err != nil {
		stopAll()
		return err
	}
	if first.HealthURL != "" {
		o.Log.Info("waiting for the main process to become healthy", "instance", first.Name, "url", first.HealthURL,
			"timeout", o.StartupTimeout)
		if err := waitHealthy(runCtx, first.HealthURL, o.StartupTimeout); err != nil {
			if ctx.Err() != nil {
				o.Log.Info("stopping before the fleet was up")
				stopAll()
				return nil
			}
			stopAll()
			return fmt.Errorf("instance %s did not answer %s within %v (see its log above): %w",
				first.Name, first.HealthURL, o.StartupTimeout, err)
		}
		o.Log.Info("main process is healthy; starting the others", "instance", first.Name)
	}
	for _, c := range o.Children[1:] {
		if err := start(c); err != nil {
			stopAll()
			return err
		}
	}
	<-ctx.Done()
	o.Log.Info("stopping every instance", "timeout", o.StopTimeout)
	stopAll()
	o.Log.Info("all instances stopped")
	return nil
}

// supervised is one child's restart loop.
type supervised struct {
	o      *Options
	c      Child
	out    *lockedWriter
	prefix string
	file   *os.File
}

func (s *supervised) run(ctx context.Context) {
	log := s.o.Log.With("instance", s.c.Name)
	delay := s.o.MinBackoff
	for restarts := 0; ; restarts++ {
		if ctx.Err() != nil {
			return
		}
		started := time.Now()
		err := s.runOnce(ctx, log, restarts)
		if ctx.Err() != nil {
			return
		}
		up := time.Since(started)
		if up >= s.o.ResetAfter {
			delay = s.o.MinBackoff
		}
		log.Warn("instance exited; restarting", "err", err, "uptime", up.Round(time.Millisecond),
			"restart_in", delay)
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		delay = min(2*delay, s.o.MaxBackoff)
	}
}

// runOnce starts the child and waits until it exits or ctx ends; in the
// latter case it stops the child (SIGTERM, then SIGKILL after
// StopTimeout). The error describes how the child ended.
func (s *supervised) runOnce(ctx context.Context, log *slog.Logger, restarts int) error {
	stdout := &prefixWriter{out: s.out, file: s.file, prefix: s.prefix}
	stderr := &prefixWriter{out: s.out, file: s.file, prefix: s.prefix}
	defer stdout.flush()
	defer stderr.flush()
	// Not exec.CommandContext: its cancel kills at once, and shutdown must
	// be graceful first.
	cmd := exec.Command(s.o.Binary, s.c.Args...)
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.Env = s.o.Env
	cmd.SysProcAttr = sysProcAttr()
	// A grandchild holding the output pipes must not block Wait forever.
	cmd.WaitDelay = 2 * time.Second
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", s.o.Binary, err)
	}
	log.Info("started instance", "pid", cmd.Process.Pid, "restarts", restarts)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err == nil {
			return errors.New("exited with status 0")
		}
		return err
	case <-ctx.Done():
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		log.Warn("could not send SIGTERM", "err", err)
	}
	t := time.NewTimer(s.o.StopTimeout)
	defer t.Stop()
	select {
	case err := <-done:
		log.Info("instance stopped", "exit", exitDescription(err))
		return nil
	case <-t.C:
	}
	log.Warn("instance did not stop in time; killing it", "pid", cmd.Process.Pid, "waited", s.o.StopTimeout)
	if err := cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		log.Error("could not kill instance", "pid", cmd.Process.Pid, "err", err)
	}
	<-done
	return nil
}

func exitDescription(err error) string {
	if err == nil {
		return "status 0"
	}
	return err.Error()
}

// waitHealthy polls url until it answers 200, ctx ends or timeout passes.
func waitHealthy(ctx context.Context, url string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	hc := &http.Client{Timeout: time.Second, Transport: &http.Transport{Proxy: nil}}
	defer hc.CloseIdleConnections()
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		last = probe(ctx, hc, url)
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last attempt: %w)", ctx.Err(), last)
		case <-tick.C:
		}
	}
}

func probe(ctx context.Context, hc *http.Client, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<10))
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s answered %s", url, resp.Status)
	}
	return nil
}

// lockedWriter serialises whole lines from every child onto one output.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

// prefixWriter splits a child's output into lines and writes each,
// prefixed, to out, and unprefixed to file. exec.Cmd copies each of the
// child's streams from one goroutine, so buf needs no lock.
type prefixWriter struct {
	out    *lockedWriter
	file   io.Writer
	prefix string
	buf    []byte
}

// maxLine bounds a partial line held back waiting for its newline.
const maxLine = 64 << 10

func (w *prefixWriter) Write(p []byte) (int, error) {
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		w.emit(w.buf[:i])
		w.buf = w.buf[i+1:]
	}
	if len(w.buf) > maxLine {
		w.emit(w.buf)
		w.buf = w.buf[:0]
	}
	return len(p), nil
}

func (w *prefixWriter) flush() {
	if len(w.buf) > 0 {
		w.emit(w.buf)
		w.buf = nil
	}
}

// emit writes one line. Output errors are dropped: a closed stdout must not
// stop the fleet.
func (w *prefixWriter) emit(line []byte) {
	line = bytes.TrimSuffix(line, []byte("\r"))
	var b strings.Builder
	b.Grow(len(w.prefix) + len(line) + 1)
	b.WriteString(w.prefix)
	b.Write(line)
	b.WriteByte('\n')
	full := b.String()
	w.out.mu.Lock()
	defer w.out.mu.Unlock()
	_, _ = io.WriteString(w.out.w, full)
	if w.file != nil {
		_, _ = io.WriteString(w.file, full[len(w.prefix):])
	}
}
