package main

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"ganglion/internal/storage/storagetest"
	"ganglion/internal/testutil"
)

// envTestRedis names the Redis the fleet tests use (redis://host:port/db).
const envTestRedis = "GANGLION_TEST_REDIS"

func testRedisURL(t *testing.T) string {
	t.Helper()
	u := os.Getenv(envTestRedis)
	if u != "" {
		return u
	}
	msg := envTestRedis + " is not set: no Redis to run a fleet against (scripts/test starts one)"
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// buildGanglion builds this command into a temporary directory. The
// caller's go test already holds any build lock, so none is taken here.
func buildGanglion(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "ganglion")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

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
	return resp.StatusCode == http.StatusOK
}

func startedPIDs(log, instance string) []int {
	re := regexp.MustCompile(`msg="started instance" instance=` + regexp.QuoteMeta(instance) + ` pid=(\d+)`)
	var out []int
	for _, m := range re.FindAllStringSubmatch(log, -1) {
		n, _ := strconv.Atoi(m[1])
		out = append(out, n)
	}
	return out
}

// TestUpRunsAndSupervisesAFleet runs `ganglion up` for real: main, one
// worker and a router against PostgreSQL and Redis, client traffic through
// the router to the worker, `ganglion status`, a worker killed with
// SIGKILL and restarted (the router fails over to main meanwhile and back
// after), and a clean SIGTERM shutdown.
func TestUpRunsAndSupervisesAFleet(t *testing.T) {
	redisURL := testRedisURL(t)
	dbURL := storagetest.NewPostgresDatabase(t)
	bin := buildGanglion(t)

	dir := t.TempDir()
	var rnd [4]byte
	_, _ = rand.Read(rnd[:])
	// The server name is the Redis channel: unique, so parallel runs on one
	// Redis do not hear each other.
	serverName := "up-" + hex.EncodeToString(rnd[:]) + ".test"
	shared := fmt.Sprintf(`server_name: %s
database: {name: psycopg2, args: {host: placeholder.invalid, database: overridden_by_env}}
redis: {enabled: true}
worker_replication_secret: up-test-secret
signing_key_path: signing.key
bcrypt_rounds: 4
`, serverName)
	mainClient, mainRepl, workerClient, workerRepl := freePort(t), freePort(t), freePort(t), freePort(t)
	routerPort, routerMetrics := freePort(t), freePort(t)
	deployment := fmt.Sprintf(`config: [homeserver.yaml]
instances:
  - name: main
    listeners: [{port: %d, resources: [client]}, {port: %d, resources: [replication, metrics]}]
  - name: worker1
    app: synapse.app.generic_worker
    listeners: [{port: %d, resources: [client, federation]}, {port: %d, resources: [replication, metrics]}]
    stream_writers: [typing]
  - name: router
    app: router
    listeners: [{port: %d, resources: [client]}, {port: %d, resources: [metrics]}]
restart: {min_backoff: 100ms, max_backoff: 1s}
startup_timeout: 90s
stop_timeout: 15s
`, mainClient, mainRepl, workerClient, workerRepl, routerPort, routerMetrics)
	for name, data := range map[string]string{"homeserver.yaml": shared, "deployment.yaml": deployment} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	depPath := filepath.Join(dir, "deployment.yaml")
	env := append(os.Environ(), "GANGLION_DATABASE_URL="+dbURL, "GANGLION_REDIS_URL="+redisURL)

	var stdout, stderr syncBuffer
	up := exec.Command(bin, "up", "-c", depPath)
	up.Env, up.Stdout, up.Stderr = env, &stdout, &stderr
	if err := up.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- up.Wait() }()
	t.Cleanup(func() {
		select {
		case <-exited:
		default:
			_ = up.Process.Signal(syscall.SIGTERM)
			select {
			case <-exited:
			case <-time.After(30 * time.Second):
				_ = up.Process.Kill()
				<-exited
			}
		}
		if t.Failed() {
			t.Logf("ganglion up stderr:\n%s\nstdout:\n%s", stderr.String(), stdout.String())
		}
	})

	eventually(t, 120*time.Second, "main, worker1 and the router healthy", func() bool {
		return healthy(mainRepl) && healthy(workerClient) && healthy(workerRepl) && healthy(routerPort)
	})

	// Through the router: the client API answers, from worker1 (the
	// generated pools send client traffic to client-facing workers).
	routerGet := func(path string) (int, string) {
		c := &http.Client{Timeout: 5 * time.Second}
		resp, err := c.Get(fmt.Sprintf("http://127.0.0.1:%d%s", routerPort, path))
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	backendRequests := func(backend string) int {
		c := &http.Client{Timeout: 5 * time.Second}
		resp, err := c.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", routerMetrics))
		if err != nil {
			return -1
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		body := string(b)
		n := 0
		re := regexp.MustCompile(`(?m)^ganglion_router_requests_total\{[^}]*backend="` + backend + `"[^}]*\} (\d+)$`)
		for _, m := range re.FindAllStringSubmatch(body, -1) {
			k, _ := strconv.Atoi(m[1])
			n += k
		}
		return n
	}
	eventually(t, 30*time.Second, "the router serves /versions from worker1", func() bool {
		code, body := routerGet("/_matrix/client/versions")
		return code == 200 && strings.Contains(body, `"versions"`) && backendRequests("worker1") > 0
	})

	// Other servers' requests too: the generated federation pools are the
	// workers with a federation listener.
	fedBefore := backendRequests("worker1")
	eventually(t, 30*time.Second, "the router serves the federation API from worker1", func() bool {
		code, body := routerGet("/_matrix/federation/v1/version")
		return code == 200 && strings.Contains(body, `"server"`) && backendRequests("worker1") > fedBefore
	})

	// status, from the deployment file: both up, as JSON and as a table.
	statusCmd := func(args ...string) (string, error) {
		cmd := exec.Command(bin, append([]string{"status", "-c", depPath}, args...)...)
		cmd.Env = env
		out, err := cmd.Output()
		return string(out), err
	}
	var reports []struct {
		Instance string `json:"instance"`
		Up       bool   `json:"up"`
		Status   struct {
			Role        string   `json:"role"`
			WrittenHere []string `json:"written_here"`
		} `json:"status"`
	}
	eventually(t, 30*time.Second, "status reports both up", func() bool {
		out, err := statusCmd("--json")
		if err != nil {
			return false
		}
		if err := json.Unmarshal([]byte(out), &reports); err != nil {
			t.Fatalf("status --json: %v\n%s", err, out)
		}
		return len(reports) == 3 && reports[0].Up && reports[1].Up && reports[2].Up
	})
	if reports[0].Instance != "main" || reports[0].Status.Role != "main" || reports[1].Instance != "worker1" ||
		reports[1].Status.Role != "generic_worker" || !strings.Contains(strings.Join(reports[1].Status.WrittenHere, ","), "typing") {
		t.Errorf("status reports %+v", reports)
	}
	table, err := statusCmd()
	if err != nil {
		t.Fatalf("status: %v\n%s", err, table)
	}
	if !regexp.MustCompile(`(?m)^worker1\s+generic_worker\s+up\s`).MatchString(table) ||
		!regexp.MustCompile(`(?m)^typing\s+worker1\s`).MatchString(table) {
		t.Errorf("status table:\n%s", table)
	}
	// worker1 answered the /versions requests above: a rate since start.
	if !regexp.MustCompile(`(?m)^worker1\s+\d+\.\d\s+\S+\s+[1-9]\d*\s+since start$`).MatchString(table) {
		t.Errorf("status table has no request rate for worker1:\n%s", table)
	}
	sampled, err := statusCmd("--sample", "300ms")
	if err != nil {
		t.Fatalf("status --sample: %v\n%s", err, sampled)
	}
	if !regexp.MustCompile(`(?m)^worker1\s+\d+\.\d\s+\S+\s+\d+\s+last 3\d\d`).MatchString(sampled) {
		t.Errorf("status --sample 300ms has no rate over the window for worker1:\n%s", sampled)
	}

	// Kill the worker; the supervisor must bring it back.
	mainPIDs, workerPIDs := startedPIDs(stderr.String(), "main"), startedPIDs(stderr.String(), "worker1")
	routerPIDs := startedPIDs(stderr.String(), "router")
	if len(mainPIDs) != 1 || len(workerPIDs) != 1 || len(routerPIDs) != 1 {
		t.Fatalf("pids: main %v worker1 %v router %v", mainPIDs, workerPIDs, routerPIDs)
	}
	if err := syscall.Kill(workerPIDs[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// Meanwhile the router fails over to main for worker1's classes.
	eventually(t, 30*time.Second, "the router answers while worker1 is down or restarting", func() bool {
		code, _ := routerGet("/_matrix/client/versions")
		return code == 200
	})
	eventually(t, 60*time.Second, "worker1 restarted and healthy", func() bool {
		return len(startedPIDs(stderr.String(), "worker1")) == 2 && healthy(workerClient)
	})
	before := backendRequests("worker1")
	eventually(t, 30*time.Second, "the router sends traffic to the restarted worker1 again", func() bool {
		code, _ := routerGet("/_matrix/client/versions")
		return code == 200 && backendRequests("worker1") > before
	})
	if !strings.Contains(stderr.String(), `msg="instance exited; restarting" instance=worker1 err="signal: killed"`) {
		t.Errorf("restart not logged")
	}
	for _, want := range []string{"main    | ", "worker1 | "} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("stdout has no line prefixed %q", want)
		}
	}

	// SIGTERM: every child stops, up exits 0.
	if err := up.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		exited <- err // for the cleanup
		if err != nil {
			t.Fatalf("ganglion up exited with %v", err)
		}
	case <-time.After(45 * time.Second):
		t.Fatal("ganglion up did not exit after SIGTERM")
	}
	for _, pid := range append(append(mainPIDs, routerPIDs...), startedPIDs(stderr.String(), "worker1")...) {
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("child %d still running after up exited (kill 0: %v)", pid, err)
		}
	}
	if healthy(mainRepl) || healthy(workerClient) || healthy(routerPort) {
		t.Error("a listener still answers after up exited")
	}
	// With the fleet gone, status says so and fails.
	out, err := statusCmd("--timeout", "300ms")
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || !regexp.MustCompile(`(?m)^main\s+main\s+down`).MatchString(out) {
		t.Errorf("status of a stopped fleet: %v\n%s", err, out)
	}
}
