package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// peakRSSMiB is VmHWM of the processes, summed (for a fleet: an upper
// bound, the peaks need not coincide).
func peakRSSMiB(pids []int) (float64, error) { return statusMiB(pids, "VmHWM") }

// rssMiB is VmRSS of the processes now, summed.
func rssMiB(pids []int) (float64, error) { return statusMiB(pids, "VmRSS") }

// statusMiB sums one kB field of /proc/PID/status over the processes.
func statusMiB(pids []int, field string) (float64, error) {
	var kib int64
	for _, pid := range pids {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			return 0, fmt.Errorf("%s of %d: %w", field, pid, err)
		}
		found := false
		sc := bufio.NewScanner(bytes.NewReader(data))
		for sc.Scan() {
			rest, ok := strings.CutPrefix(sc.Text(), field+":")
			if !ok {
				continue
			}
			f := strings.Fields(rest) // "12345 kB"
			if len(f) < 1 {
				break
			}
			n, err := strconv.ParseInt(f[0], 10, 64)
			if err != nil {
				return 0, fmt.Errorf("%s of %d: %q: %w", field, pid, rest, err)
			}
			kib += n
			found = true
			break
		}
		if !found {
			return 0, fmt.Errorf("%s of %d: not in /proc/%d/status", field, pid, pid)
		}
	}
	return round2(float64(kib) / 1024), nil
}

// resetPeakRSS resets VmHWM of -pid (Linux: "5" to clear_refs) so each
// scenario reports its own peak. It returns the scope the next reading
// has: "scenario", or "process" when the reset was not allowed.
func (r *runner) resetPeakRSS() string {
	if len(r.o.pids) == 0 {
		return ""
	}
	for _, pid := range r.o.pids {
		if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0); err != nil {
			return "process"
		}
	}
	return "scenario"
}

// profileCapture is the CPU profiles of one measured phase, running.
type profileCapture struct {
	r        *runner
	scenario string
	wg       sync.WaitGroup
	mu       sync.Mutex
	files    []string
	errs     []error
}

// startProfiles starts a CPU profile of every -pprof server; it runs for
// -pprof-seconds from now, whatever the phase's length.
func (r *runner) startProfiles(ctx context.Context, scenario string) *profileCapture {
	pc := &profileCapture{r: r, scenario: scenario}
	secs := r.o.pprofSeconds
	for i, base := range r.o.pprofURLs {
		pc.wg.Go(func() {
			pc.fetch(ctx, time.Duration(secs)*time.Second,
				fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", base, secs), pc.path("cpu", i))
		})
	}
	return pc
}

// finish takes the heap profiles (now, at the end of the phase) and waits
// for the CPU profiles.
func (pc *profileCapture) finish(ctx context.Context) ([]string, []error) {
	for i, base := range pc.r.o.pprofURLs {
		pc.fetch(ctx, 0, base+"/debug/pprof/heap", pc.path("heap", i))
	}
	pc.wg.Wait()
	return pc.files, pc.errs
}

// path is DIR/LABEL-SCENARIO-KIND[-i].pprof; the index is there only for
// several servers.
func (pc *profileCapture) path(kind string, i int) string {
	name := labelOr(pc.r.o.label, pc.r.o.prefix) + "-" + pc.scenario + "-" + kind
	if len(pc.r.o.pprofURLs) > 1 {
		name += "-" + strconv.Itoa(i)
	}
	return filepath.Join(pc.r.o.pprofDir, name+".pprof")
}

func (pc *profileCapture) fetch(ctx context.Context, extra time.Duration, url, path string) {
	err := pc.download(ctx, extra, url, path)
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if err != nil {
		pc.errs = append(pc.errs, err)
		return
	}
	pc.files = append(pc.files, path)
}

func (pc *profileCapture) download(ctx context.Context, extra time.Duration, url, path string) error {
	ctx, cancel := context.WithTimeout(ctx, pc.r.o.timeout+extra)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	if err != nil {
		return fmt.Errorf("profile %s: %w", url, err)
	}
	resp, err := pc.r.c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("profile %s: %w", url, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("profile %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("profile %s: HTTP %d: %s (does the listener name the pprof resource?)", url, resp.StatusCode, truncate(data, 120))
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("profile directory: %w", err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		return fmt.Errorf("save profile: %w", err)
	}
	return nil
}
