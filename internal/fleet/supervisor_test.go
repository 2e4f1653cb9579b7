package fleet_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"ganglion/internal/testutil"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"ganglion/internal/fleet"
)

// helperEnv makes the test binary act as a supervised child (see
// TestMain): "serve PORT" answers /health and exits 0 on SIGTERM,
// "stubborn PORT" ignores SIGTERM, "exit" exits at once with status 3.
const helperEnv = "GANGLION_FLEET_TEST_HELPER"

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		os.Exit(helperMain(mode, os.Args[1:]))
	}
	os.Exit(m.Run())
}

func helperMain(mode string, args []string) int {
	name := os.Getenv("HELPER_NAME")
	fmt.Printf("hello from %s\n", name)
	fmt.Fprintf(os.Stderr, "partial line from %s", name) // no newline: flushed at exit
	if mode == "exit" {
		return 3
	}
	sigs := make(chan os.Signal, 1)
	if mode == "stubborn" {
		signal.Ignore(syscall.SIGTERM)
	} else {
		signal.Notify(sigs, syscall.SIGTERM)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:"+args[0])
	if err != nil {
		fmt.Fprintln(os.Stderr, "listen:", err)
		return 1
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "OK")
	})}
	go func() { _ = srv.Serve(ln) }()
	<-sigs // never for stubborn: only SIGKILL ends it
	fmt.Println("bye")
	return 0
}

// freePort returns a loopback port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// syncBuffer is a bytes.Buffer safe for the supervisor's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	testutil.Eventually(t, within, what, cond)
}

func healthy(port int) bool {
	c := &http.Client{Timeout: time.Second}
	resp, err := c.Get(fmt.Sprintf("http://127.0.0.1:%d/health", port))
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == 200
}

func alive(pid int) bool {
	return syscall.Kill(pid, 0) == nil
}

// pids returns the pids logged for instance, in order.
func pids(log, instance string) []int {
	re := regexp.MustCompile(`msg="started instance" instance=` + regexp.QuoteMeta(instance) + ` pid=(\d+)`)
	var out []int
	for _, m := range re.FindAllStringSubmatch(log, -1) {
		n, _ := strconv.Atoi(m[1])
		out = append(out, n)
	}
	return out
}

type run struct {
	out, log *syncBuffer
	done     chan error
	cancel   context.CancelFunc
}

func startSupervisor(t *testing.T, o fleet.Options) *run {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	r := &run{out: &syncBuffer{}, log: &syncBuffer{}, done: make(chan error, 1)}
	o.Binary = exe
	o.Out = r.out
	o.Log = slog.New(slog.NewTextHandler(r.log, nil))
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() { r.done <- fleet.Supervise(ctx, o) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-r.done:
		case <-time.After(30 * time.Second):
			t.Error("supervisor did not stop")
		}
		if t.Failed() {
			t.Logf("supervisor log:\n%s\nchildren:\n%s", r.log, r.out)
		}
	})
	return r
}

func (r *run) stop(t *testing.T, within time.Duration) error {
	t.Helper()
	r.cancel()
	select {
	case err := <-r.done:
		r.done <- err // for the cleanup
		return err
	case <-time.After(within):
		t.Fatalf("supervisor did not return within %v", within)
		return nil
	}
}

func helperOptions(mode, name string) []string {
	return append(os.Environ(), helperEnv+"="+mode, "HELPER_NAME="+name)
}

func TestSuperviseRestartsAndStops(t *testing.T) {
	mainPort, workerPort := freePort(t), freePort(t)
	logDir := t.TempDir()
	// Both children share one environment: the mode is per test.
	r := startSupervisor(t, fleet.Options{
		Env: helperOptions("serve", "x"),
		Children: []fleet.Child{
			{Name: "main", Args: []string{strconv.Itoa(mainPort)}, HealthURL: fmt.Sprintf("http://127.0.0.1:%d/health", mainPort),
				LogFile: filepath.Join(logDir, "main.log")},
			{Name: "worker1", Args: []string{strconv.Itoa(workerPort)}},
		},
		MinBackoff: 50 * time.Millisecond, MaxBackoff: time.Second, ResetAfter: time.Minute,
		StartupTimeout: 30 * time.Second, StopTimeout: 10 * time.Second,
	})
	eventually(t, 30*time.Second, "worker1 healthy", func() bool { return healthy(workerPort) })
	mainPID := pids(r.log.String(), "main")
	old := pids(r.log.String(), "worker1")
	if len(mainPID) != 1 || len(old) != 1 {
		t.Fatalf("pids main %v worker1 %v", mainPID, old)
	}
	// The main process was healthy before the worker started.
	log := r.log.String()
	if strings.Index(log, "main process is healthy") > strings.Index(log, "instance=worker1") {
		t.Errorf("worker1 started before main was healthy:\n%s", log)
	}

	if err := syscall.Kill(old[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "worker1 restarted", func() bool {
		return len(pids(r.log.String(), "worker1")) == 2 && healthy(workerPort)
	})
	if !strings.Contains(r.log.String(), `msg="instance exited; restarting" instance=worker1 err="signal: killed"`) {
		t.Errorf("restart not logged:\n%s", r.log)
	}
	if alive(old[0]) {
		t.Errorf("killed worker %d still alive", old[0])
	}

	if err := r.stop(t, 20*time.Second); err != nil {
		t.Fatalf("Supervise: %v", err)
	}
	for _, pid := range append(mainPID, pids(r.log.String(), "worker1")...) {
		if alive(pid) {
			t.Errorf("child %d still running after Supervise returned", pid)
		}
	}
	out := r.out.String()
	for _, want := range []string{"main    | hello from x\n", "worker1 | hello from x\n", "main    | partial line from x\n", "main    | bye\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	file, err := os.ReadFile(filepath.Join(logDir, "main.log"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(file), "hello from x\n") {
		t.Errorf("main.log should hold the unprefixed output:\n%s", file)
	}
}

func TestSuperviseKillsStragglers(t *testing.T) {
	port := freePort(t)
	r := startSupervisor(t, fleet.Options{
		Env:        helperOptions("stubborn", "s"),
		Children:   []fleet.Child{{Name: "main", Args: []string{strconv.Itoa(port)}, HealthURL: fmt.Sprintf("http://127.0.0.1:%d/health", port)}},
		MinBackoff: 50 * time.Millisecond, MaxBackoff: time.Second, ResetAfter: time.Minute,
		StartupTimeout: 30 * time.Second, StopTimeout: 300 * time.Millisecond,
	})
	eventually(t, 30*time.Second, "main healthy", func() bool { return healthy(port) })
	pid := pids(r.log.String(), "main")
	if err := r.stop(t, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(r.log.String(), "did not stop in time; killing it") {
		t.Errorf("no kill logged:\n%s", r.log)
	}
	if len(pid) != 1 || alive(pid[0]) {
		t.Errorf("stubborn child %v still alive", pid)
	}
}

func TestSuperviseBackoff(t *testing.T) {
	r := startSupervisor(t, fleet.Options{
		Env:        helperOptions("exit", "e"),
		Children:   []fleet.Child{{Name: "flappy"}},
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 80 * time.Millisecond, ResetAfter: time.Minute,
		StartupTimeout: 30 * time.Second, StopTimeout: time.Second,
	})
	want := []string{"restart_in=20ms", "restart_in=40ms", "restart_in=80ms", "restart_in=80ms"}
	eventually(t, 30*time.Second, "four restarts", func() bool {
		return strings.Count(r.log.String(), "instance exited; restarting") >= len(want)
	})
	if err := r.stop(t, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, line := range strings.Split(r.log.String(), "\n") {
		if i := strings.Index(line, "restart_in="); i >= 0 {
			got = append(got, line[i:])
		}
	}
	for i, w := range want {
		if i >= len(got) || got[i] != w {
			t.Fatalf("backoff %v, want prefix %v", got, want)
		}
	}
	if !strings.Contains(r.log.String(), `err="exit status 3"`) {
		t.Errorf("exit status not logged:\n%s", r.log)
	}
}

func TestSuperviseMainNeverHealthy(t *testing.T) {
	port := freePort(t) // nothing listens there
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	var log syncBuffer
	err = fleet.Supervise(context.Background(), fleet.Options{
		Binary: exe, Env: helperOptions("exit", "m"), Log: slog.New(slog.NewTextHandler(&log, nil)),
		Children: []fleet.Child{
			{Name: "main", HealthURL: fmt.Sprintf("http://127.0.0.1:%d/health", port)},
			{Name: "worker1"},
		},
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 50 * time.Millisecond, ResetAfter: time.Minute,
		StartupTimeout: 500 * time.Millisecond, StopTimeout: time.Second,
	})
	if err == nil || !strings.Contains(err.Error(), "instance main did not answer") ||
		!errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v", err)
	}
	if strings.Contains(log.String(), "instance=worker1") {
		t.Errorf("worker1 started although main never became healthy:\n%s", log.String())
	}
}
