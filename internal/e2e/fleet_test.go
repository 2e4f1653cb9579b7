package e2e_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"ganglion/internal/routes"
)

// engineFleet is forEachEngine's third deployment: real `ganglion serve`
// processes on PostgreSQL and Redis, laid out as a small production fleet.
const engineFleet = "fleet"

// fleetSecret is worker_replication_secret of every fleet.
const fleetSecret = "e2e-replication-secret-not-for-production"

// Instance names of a fleet.
const (
	instMain       = "main"
	instWorker1    = "worker1"
	instWorker2    = "worker2"
	instPersister1 = "persister1"
	instPersister2 = "persister2"
	instWriter     = "writer1"
	instMedia      = "media1" // the media_repository worker
)

// fleetInstances lists a fleet's processes, main first: main migrates the
// database, so it starts (and becomes healthy) before the others.
func fleetInstances() []string {
	return []string{instMain, instWorker1, instWorker2, instPersister1, instPersister2, instWriter, instMedia}
}

// clientWorkers are the generic workers that clients talk to, in the order
// new clients are spread over them.
func clientWorkers() []string { return []string{instWorker1, instWorker2} }

// fleetReadyTimeout bounds a fleet's (or one process's) start-up.
const fleetReadyTimeout = 30 * time.Second

// fleetStopTimeout is how long a process may take to exit after SIGTERM
// before it is killed (and the test fails).
const fleetStopTimeout = 20 * time.Second

// fleet is a set of `ganglion serve` processes sharing one PostgreSQL
// database and one Redis.
type fleet struct {
	bin    string
	dir    string
	shared string // path of shared.yaml
	redis  *redisServer
	procs  []*fleetProc // in fleetInstances order
	probe  *http.Client
	// next spreads new clients over clientWorkers, so that in every test
	// the sender and the receiver talk to different processes.
	next atomic.Uint64
	// front, if set, is the router or nginx all requests go through.
	front *front
	// routerPools are pools the front's router section gets on top of
	// the usual ones (the federation suites send federation traffic to
	// the generic workers).
	routerPools map[string][]string
	// db is the database section every process shares.
	db map[string]any
	// lastSettle is what the last settle check saw (stream positions per
	// instance), logged when a test fails.
	settleMu   sync.Mutex
	lastSettle []string
}

// fleetProc is one instance of a fleet and its current OS process.
type fleetProc struct {
	name       string
	clientPort int    // 0: no client listener (a pusher or federation sender worker)
	app        string // worker_app of a worker without a client listener
	replPort   int    // replication + metrics listener, the instance_map port
	args       []string
	logs       *syncBuffer
	starts     int

	mu  sync.Mutex
	run *child // nil when not running
}

func (p *fleetProc) current() *child {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.run
}

// child is one run of an OS process.
type child struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited
	err  error         // its exit status, valid once done is closed
}

// startChild starts bin with args, output to out. Children die with the
// test process (see setDeathSignal) so a crashed or timed-out test run
// leaves no servers behind.
func startChild(bin string, args []string, dir string, out io.Writer) (*child, error) {
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Env = childEnv()
	cmd.Stdout, cmd.Stderr = out, out
	setDeathSignal(cmd)
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	c := &child{cmd: cmd, done: make(chan struct{})}
	go func() {
		c.err = cmd.Wait()
		close(c.done)
	}()
	return c, nil
}

func (c *child) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// terminate sends SIGTERM and waits up to timeout, then kills. It reports
// whether the process exited on its own, and its exit error.
func (c *child) terminate(timeout time.Duration) (clean bool, err error) {
	if c.exited() {
		return true, c.err
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
		return true, c.err
	case <-time.After(timeout):
	}
	_ = c.cmd.Process.Kill()
	<-c.done
	return false, c.err
}

// kill sends SIGKILL and waits for the process to be gone.
func (c *child) kill() {
	_ = c.cmd.Process.Kill()
	<-c.done
}

// prefixWriter writes each line with a prefix, buffering a partial line.
// exec calls Write from one goroutine at a time when Stdout and Stderr are
// the same writer.
type prefixWriter struct {
	prefix  string
	dst     io.Writer
	partial []byte
}

func (w *prefixWriter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			w.partial = append(w.partial, p...)
			break
		}
		line := append(append([]byte(w.prefix), w.partial...), p[:i+1]...)
		w.partial = w.partial[:0]
		if _, err := w.dst.Write(line); err != nil {
			return 0, err
		}
		p = p[i+1:]
	}
	return n, nil
}

// fleetGate skips (or, in CI and with GANGLION_REQUIRE_POSTGRES, fails) a
// fleet test when the environment has no Redis for it.
//
// A fleet's Redis channel is its server_name, and every test server is
// e2e.test; pub/sub ignores Redis's database number. Fleets of tests that
// run in parallel (or of other people's runs on a shared dev Redis) would
// hear each other's RDATA and POSITION lines, so each fleet gets a
// redis-server of its own, and GANGLION_TEST_REDIS only says whether this
// environment is meant to run Redis tests.
func fleetGate(t testing.TB) string {
	t.Helper()
	required := os.Getenv("CI") != "" || os.Getenv("GANGLION_REQUIRE_POSTGRES") != ""
	if os.Getenv("GANGLION_TEST_REDIS") == "" {
		if required {
			t.Fatal("GANGLION_TEST_REDIS is not set; CI / GANGLION_REQUIRE_POSTGRES requires the fleet tests")
		}
		t.Skip("GANGLION_TEST_REDIS is not set: no Redis for the fleet (scripts/test starts one)")
	}
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if required {
			t.Fatalf("redis-server is not on PATH: %v", err)
		}
		t.Skipf("redis-server is not on PATH: %v", err)
	}
	return bin
}

// startFleetServer starts a fleet and returns it as the server the suites
// drive: raw requests (do) go to worker1, clients alternate between the
// two generic workers.
func startFleetServer(t *testing.T, opts ...configOption) *server {
	t.Helper()
	f := startFleet(t, opts...)
	s := &server{
		engine: engineFleet,
		fleet:  f,
		url:    f.clientURL(instWorker1),
		opts:   opts,
		http: &http.Client{Timeout: 30 * time.Second,
			Transport: settleFirst{f: f, base: http.DefaultTransport.(*http.Transport).Clone()}},
	}
	return s
}

// settleFirst is the fleet clients' transport. Before a /sync, /events or
// /initialSync (global or a room's), it waits (bounded) until every
// process has seen every writer's current position, the test-side equivalent of sticky routing: the suites were
// written for one process, where a write is visible to the next request,
// and a sync on the other worker must not run in the few milliseconds
// before replication delivers the write (a sync with timeout=0 would then
// rightly answer "nothing yet").
type settleFirst struct {
	f    *fleet
	base *http.Transport
}

func (s settleFirst) RoundTrip(req *http.Request) (*http.Response, error) {
	// Without a front, the harness does the router's media routing: the
	// generic workers do not serve media (enable_media_repo is false).
	if c, _ := routes.Classify(req.Method, req.URL.Path); s.f.front == nil && c != nil && c.Duty == routes.DutyMedia {
		req = req.Clone(req.Context())
		req.URL.Host = strings.TrimPrefix(s.f.clientURL(instMedia), "http://")
		req.Host = req.URL.Host
	}
	if p := req.URL.Path; strings.HasSuffix(p, "/sync") || strings.HasSuffix(p, "/events") || strings.HasSuffix(p, "/initialSync") {
		// A fresh context: the request's may carry an httptrace hook
		// meant for the sync request alone.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		stop := context.AfterFunc(req.Context(), cancel)
		s.f.settle(ctx)
		stop()
		cancel()
	}
	return s.base.RoundTrip(req)
}

func (s settleFirst) CloseIdleConnections() { s.base.CloseIdleConnections() }

// settle polls every process's /metrics until, for every stream writer,
// each process's view of it has reached the position the writer reports
// for itself, or 10 s pass (then the request goes ahead and the test
// judges what it gets).
func (f *fleet) settle(ctx context.Context) {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if f.settled(ctx) {
			return
		}
		t := time.NewTimer(5 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// positionLine is a stream position series. Values are in the
// exposition's float syntax: large ones (typing's clock-based positions)
// come as 1.7e+15.
var positionLine = regexp.MustCompile(`^ganglion_stream_position\{instance="([^"]+)",stream="([^"]+)",writer="([^"]+)"\} (\S+)$`)

func (f *fleet) settled(ctx context.Context) bool {
	var saw []string
	defer func() { f.settleMu.Lock(); f.lastSettle = saw; f.settleMu.Unlock() }()
	own := map[[2]string]int64{}  // (stream, writer) → writer's own position
	seen := map[[3]string]int64{} // (instance, stream, writer) → view
	var up []string
	for _, p := range f.procs {
		body, err := f.get(ctx, fmt.Sprintf("http://127.0.0.1:%d/metrics", p.replPort))
		if err != nil {
			saw = append(saw, p.name+": "+err.Error())
			continue // a process that is down (fault tests) cannot lag
		}
		up = append(up, p.name)
		for _, line := range strings.Split(body, "\n") {
			m := positionLine.FindStringSubmatch(line)
			if m == nil {
				continue
			}
			pos := sampleInt(m[4])
			if m[2] != "caches" && m[2] != "presence" {
				saw = append(saw, line[len("ganglion_stream_position"):])
			}
			if m[1] == m[3] {
				own[[2]string{m[2], m[3]}] = pos
			}
			seen[[3]string{m[1], m[2], m[3]}] = pos
		}
	}
	// A process with no line for a writer has not heard from it: it lags.
	// (Every process writes the caches stream and lists only the writers
	// it heard from; those are pushed synchronously anyway.)
	for k, w := range own {
		for _, inst := range up {
			v, ok := seen[[3]string{inst, k[0], k[1]}]
			if inst != k[1] && (ok || k[0] != "caches") && v < w {
				return false
			}
		}
	}
	return true
}

// startFleet starts main, waits for it to be ready (it migrates the
// database), then starts the six workers at once and waits for all of
// them. Ports are picked free; if one was taken in the meantime, the whole
// fleet starts again on new ones.
func startFleet(t *testing.T, opts ...configOption) *fleet {
	t.Helper()
	redisBin := fleetGate(t)
	dir := t.TempDir()
	db := databaseSection(t, enginePostgres, dir)
	// Seven processes share the database server with the rest of the run.
	db["args"].(map[string]any)["cp_min"] = 1
	db["args"].(map[string]any)["cp_max"] = 4
	redis := startRedis(t, redisBin)
	bin := buildBinary(t)
	for attempt := 1; ; attempt++ {
		f := &fleet{bin: bin, dir: dir, redis: redis, db: db, probe: &http.Client{Timeout: 5 * time.Second}}
		for _, name := range fleetInstances() {
			f.procs = append(f.procs, &fleetProc{name: name, clientPort: fleetPort(t), replPort: fleetPort(t), logs: &syncBuffer{}})
		}
		f.writeConfigs(t, db, opts)
		t.Cleanup(func() {
			f.stopAll(t)
			if t.Failed() {
				f.settleMu.Lock()
				t.Logf("stream positions at the last settle check: %q", f.lastSettle)
				f.settleMu.Unlock()
				f.logTails(t)
			}
		})
		err := f.startAll()
		if err == nil {
			return f
		}
		if f.portTaken() && attempt < 3 {
			f.stopAllQuietly()
			t.Logf("fleet start-up (attempt %d): a port was taken, retrying on others: %v", attempt, err)
			continue
		}
		t.Fatalf("start fleet: %v", err) // the cleanup stops the rest and logs
	}
}

// handedOutPorts are the ports fleetPort has returned in this test run.
var handedOutPorts sync.Map

// fleetPort returns a free loopback port below the kernel's ephemeral
// range. A fleet restarts its processes on the same ports; a port from the
// ephemeral range (what port 0 gives) may meanwhile be the local end of
// any outgoing connection on the machine, and the restart would fail.
func fleetPort(t testing.TB) int {
	t.Helper()
	low := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil {
				low = n
			}
		}
	}
	const first = 10000
	if low-first < 1000 {
		return freePort(t)
	}
	for range 100 {
		port := first + mrand.IntN(low-first)
		// Free now is not enough: two fleets (or two instances of one)
		// could draw the same port before either binds it.
		if _, taken := handedOutPorts.LoadOrStore(port, true); taken {
			continue
		}
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue
		}
		if err := ln.Close(); err != nil {
			t.Fatalf("release port: %v", err)
		}
		return port
	}
	return freePort(t)
}

func (f *fleet) proc(name string) *fleetProc {
	for _, p := range f.procs {
		if p.name == name {
			return p
		}
	}
	panic("no fleet instance " + name)
}

func (f *fleet) clientURL(name string) string {
	return fmt.Sprintf("http://127.0.0.1:%d", f.proc(name).clientPort)
}

// nextClientURL is the client URL of the next generic worker in turn.
func (f *fleet) nextClientURL() string {
	ws := clientWorkers()
	return f.clientURL(ws[(f.next.Add(1)-1)%uint64(len(ws))])
}

func httpListener(port int, names ...string) map[string]any {
	return map[string]any{
		"port":           port,
		"bind_addresses": []string{"127.0.0.1"},
		"type":           "http",
		"tls":            false,
		"x_forwarded":    false,
		"resources":      []any{map[string]any{"names": names, "compress": false}},
	}
}

// fleetClientListener is a fleet process's client listener: like the
// listeners `ganglion up` generates behind a router, it believes
// X-Forwarded-For (from 127.0.0.1 only, where the router and nginx connect
// from, so test clients on 127.0.0.2 and up are direct clients it must
// not believe).
func fleetClientListener(port int) map[string]any {
	l := httpListener(port, "client", "federation")
	l["x_forwarded"] = true
	l["x_forwarded_trusted_proxies"] = []string{"127.0.0.1"}
	return l
}

// writeConfigs writes shared.yaml (the monolith harness's config with the
// test's options, plus the fleet's duties) and one file per worker.
func (f *fleet) writeConfigs(t testing.TB, db map[string]any, opts []configOption) {
	t.Helper()
	m := f.proc(instMain)
	doc := baseConfig(f.dir, db, m.clientPort)
	for _, o := range opts {
		o(doc)
	}
	f.addPusherWorkers(t, doc)
	doc["public_baseurl"] = f.clientURL(instWorker1) + "/"
	doc["listeners"] = []any{
		fleetClientListener(m.clientPort),
		httpListener(m.replPort, "replication", "metrics"),
	}
	doc["redis"] = map[string]any{"enabled": true, "host": "127.0.0.1", "port": f.redis.port}
	doc["worker_replication_secret"] = fleetSecret
	instanceMap := map[string]any{}
	for _, p := range f.procs {
		instanceMap[p.name] = map[string]any{"host": "127.0.0.1", "port": p.replPort}
	}
	doc["instance_map"] = instanceMap
	doc["stream_writers"] = map[string]any{
		"events":       []string{instPersister1, instPersister2},
		"typing":       instWriter,
		"to_device":    instWriter,
		"account_data": instWriter,
		"receipts":     instWriter,
		"presence":     instWriter,
		"push_rules":   instWriter,
		// Two writers: device list changes are sharded by user, so both
		// the local and the forwarded path are exercised.
		"device_lists": []string{instMain, instWriter},
	}
	// Media is the media worker's alone, as in Synapse's worker set-up.
	doc["enable_media_repo"] = false
	doc["media_instance_running_background_jobs"] = instMedia
	// The directory is updated by a worker, not main: the updater must
	// follow the events stream through replication.
	doc["update_user_directory_from_worker"] = instWriter
	f.shared = writeYAML(t, filepath.Join(f.dir, "shared.yaml"), doc)
	m.args = []string{"serve", "-c", f.shared}
	for _, p := range f.procs[1:] {
		if p.name == instMedia {
			path := writeYAML(t, filepath.Join(f.dir, p.name+".yaml"), map[string]any{
				"worker_app":  "synapse.app.media_repository",
				"worker_name": p.name,
				"worker_listeners": []any{
					httpListener(p.clientPort, "media"),
					httpListener(p.replPort, "replication", "metrics"),
				},
			})
			p.args = []string{"serve", "-c", f.shared, "-c", path}
			continue
		}
		app := "synapse.app.generic_worker"
		listeners := []any{httpListener(p.replPort, "replication", "metrics")}
		if p.clientPort == 0 {
			app = p.app
		} else {
			listeners = append([]any{fleetClientListener(p.clientPort)}, listeners...)
		}
		path := writeYAML(t, filepath.Join(f.dir, p.name+".yaml"), map[string]any{
			"worker_app":       app,
			"worker_name":      p.name,
			"worker_listeners": listeners,
		})
		p.args = []string{"serve", "-c", f.shared, "-c", path}
	}
}

// addPusherWorkers: each name in the test's pusher_instances (or
// federation_sender_instances) that is not one of the fleet's usual
// instances becomes a pusher (federation sender) worker process of its own,
// without a client listener.
func (f *fleet) addPusherWorkers(t testing.TB, doc map[string]any) {
	t.Helper()
	for key, app := range map[string]string{"pusher_instances": "synapse.app.pusher",
		"federation_sender_instances": "synapse.app.federation_sender"} {
		names, _ := doc[key].([]string)
		for _, name := range names {
			if !slices.ContainsFunc(f.procs, func(p *fleetProc) bool { return p.name == name }) {
				f.procs = append(f.procs, &fleetProc{name: name, app: app, replPort: fleetPort(t), logs: &syncBuffer{}})
			}
		}
	}
}

// writeYAML writes doc as JSON, which is YAML.
func writeYAML(t testing.TB, path string, doc map[string]any) string {
	t.Helper()
	data, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		t.Fatalf("encode %s: %v", path, err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatalf("write %s: %v", path, err)
	}
	return path
}

// startAll starts main, waits for it, then starts the workers in parallel
// and waits for them all.
func (f *fleet) startAll() error {
	ctx, cancel := context.WithTimeout(context.Background(), fleetReadyTimeout)
	defer cancel()
	if err := f.startProc(ctx, f.procs[0]); err != nil {
		return err
	}
	errs := make([]error, len(f.procs))
	var wg sync.WaitGroup
	for i, p := range f.procs[1:] {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i+1] = f.startProc(ctx, p)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// startProc starts p's process and waits until it is ready.
func (f *fleet) startProc(ctx context.Context, p *fleetProc) error {
	p.mu.Lock()
	if p.run != nil && !p.run.exited() {
		p.mu.Unlock()
		return fmt.Errorf("%s is already running", p.name)
	}
	p.starts++
	fmt.Fprintf(p.logs, "[%s] ===== test harness: start #%d =====\n", p.name, p.starts)
	c, err := startChild(f.bin, p.args, f.dir, &prefixWriter{prefix: "[" + p.name + "] ", dst: p.logs})
	if err != nil {
		p.mu.Unlock()
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	p.run = c
	p.mu.Unlock()
	return f.waitReady(ctx, p, c)
}

// waitReady polls until p answers /health on both listeners and its
// Redis link is up (ganglion_redis_connected on the metrics resource), so
// the fleet a test gets is fully wired.
func (f *fleet) waitReady(ctx context.Context, p *fleetProc, c *child) error {
	connected := fmt.Sprintf("ganglion_redis_connected{instance=%q} 1", p.name)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if f.healthy(ctx, p) {
			if body, err := f.get(ctx, fmt.Sprintf("http://127.0.0.1:%d/metrics", p.replPort)); err == nil && strings.Contains(body, connected) {
				return nil
			}
		}
		select {
		case <-c.done:
			return fmt.Errorf("%s exited before becoming ready: %v", p.name, c.err)
		case <-ctx.Done():
			return fmt.Errorf("%s not ready (health on both listeners and Redis connected): %w", p.name, ctx.Err())
		case <-tick.C:
		}
	}
}

// waitAllReady waits until every process is ready again (after a Redis
// restart: health and the Redis link).
func (f *fleet) waitAllReady(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), fleetReadyTimeout)
	defer cancel()
	for _, p := range f.procs {
		c := p.current()
		if c == nil {
			t.Fatalf("%s is not running", p.name)
		}
		if err := f.waitReady(ctx, p, c); err != nil {
			t.Fatal(err)
		}
	}
}

// healthy reports whether p answers 200 on /health of its listeners.
func (f *fleet) healthy(ctx context.Context, p *fleetProc) bool {
	for _, port := range []int{p.clientPort, p.replPort} {
		if port == 0 {
			continue // no such listener
		}
		if _, err := f.get(ctx, fmt.Sprintf("http://127.0.0.1:%d/health", port)); err != nil {
			return false
		}
	}
	return true
}

// get fetches url and returns the body of a 200 answer.
func (f *fleet) get(ctx context.Context, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	if err != nil {
		return "", err
	}
	resp, err := f.probe.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != 200 {
		return "", fmt.Errorf("GET %s: %d %s", url, resp.StatusCode, truncate(b))
	}
	return string(b), nil
}

// stopProc stops p with SIGTERM (killing it after fleetStopTimeout) and
// reports a process that did not exit, or exited with an error, as a test
// error: a clean shutdown is part of what the fleet promises.
func (f *fleet) stopProc(t testing.TB, p *fleetProc) {
	p.mu.Lock()
	c := p.run
	p.run = nil
	p.mu.Unlock()
	if c == nil {
		return
	}
	wasRunning := !c.exited()
	clean, err := c.terminate(fleetStopTimeout)
	switch {
	case !clean:
		t.Errorf("%s did not exit within %v of SIGTERM; killed", p.name, fleetStopTimeout)
	case wasRunning && err != nil:
		t.Errorf("%s exited with %v after SIGTERM, want status 0", p.name, err)
	case !wasRunning:
		t.Errorf("%s had exited on its own: %v", p.name, err)
	}
}

// killProc kills p with SIGKILL, as a crash would.
func (f *fleet) killProc(t testing.TB, name string) {
	t.Helper()
	p := f.proc(name)
	p.mu.Lock()
	c := p.run
	p.run = nil
	p.mu.Unlock()
	if c == nil {
		t.Fatalf("kill %s: not running", name)
	}
	fmt.Fprintf(p.logs, "[%s] ===== test harness: kill -9 =====\n", p.name)
	c.kill()
}

// restartProc starts a stopped or killed instance again on its ports and
// waits until it is ready.
func (f *fleet) restartProc(t testing.TB, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), fleetReadyTimeout)
	defer cancel()
	if err := f.startProc(ctx, f.proc(name)); err != nil {
		t.Fatalf("restart %s: %v", name, err)
	}
}

// stopAll stops every process at once. Safe to call more than once.
func (f *fleet) stopAll(t testing.TB) {
	var wg sync.WaitGroup
	for _, p := range f.procs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f.stopProc(t, p)
		}()
	}
	wg.Wait()
}

// stopAllQuietly stops every process without judging how they exit: for
// a start-up that is abandoned.
func (f *fleet) stopAllQuietly() {
	for _, p := range f.procs {
		p.mu.Lock()
		c := p.run
		p.run = nil
		p.mu.Unlock()
		if c != nil {
			c.kill()
		}
	}
}

// restart is srv.restart for a fleet: every process stops (SIGTERM) and
// starts again on the same ports, config and data. Redis stays up.
func (f *fleet) restart(t testing.TB) {
	t.Helper()
	f.stopAll(t)
	if err := f.startAll(); err != nil {
		t.Fatalf("restart fleet: %v", err)
	}
	if f.front != nil {
		f.front.afterRestart(t, f)
	}
}

// portTaken reports whether a process failed because its port was in use.
func (f *fleet) portTaken() bool {
	for _, p := range f.procs {
		if strings.Contains(p.logs.String(), "address already in use") {
			return true
		}
	}
	return false
}

// logTails logs the end of every process's output.
func (f *fleet) logTails(t testing.TB) {
	for _, p := range f.procs {
		t.Logf("----- %s log (tail) -----\n%s", p.name, tail(p.logs.String(), 12<<10))
	}
}

// wantAllHealthy checks every process answers /health on both listeners.
func (f *fleet) wantAllHealthy(t testing.TB, ctx context.Context) {
	t.Helper()
	for _, p := range f.procs {
		if !f.healthy(ctx, p) {
			t.Errorf("%s does not answer /health on both listeners", p.name)
		}
	}
}

// redisServer is a redis-server of one fleet, restartable on its port.
type redisServer struct {
	bin  string
	dir  string
	port int
	logs *syncBuffer
	mu   sync.Mutex
	run  *child
}

// startRedis starts a throw-away redis-server (no persistence) on a free
// port, stopped when the test ends.
func startRedis(t *testing.T, bin string) *redisServer {
	t.Helper()
	r := &redisServer{bin: bin, dir: t.TempDir(), logs: &syncBuffer{}}
	t.Cleanup(func() {
		r.stop()
		if t.Failed() {
			t.Logf("----- redis log (tail) -----\n%s", tail(r.logs.String(), 2<<10))
		}
	})
	for attempt := 1; ; attempt++ {
		r.port = fleetPort(t)
		err := r.start()
		if err == nil {
			return r
		}
		if attempt == 3 {
			t.Fatalf("start redis-server: %v\n%s", err, tail(r.logs.String(), 4<<10))
		}
	}
}

// start runs redis-server on r.port and waits until it answers PING.
func (r *redisServer) start() error {
	args := []string{"--port", strconv.Itoa(r.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--dir", r.dir, "--daemonize", "no", "--protected-mode", "no"}
	c, err := startChild(r.bin, args, r.dir, &prefixWriter{prefix: "[redis] ", dst: r.logs})
	if err != nil {
		return err
	}
	r.mu.Lock()
	r.run = c
	r.mu.Unlock()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if r.ping() == nil {
			return nil
		}
		if c.exited() {
			return fmt.Errorf("redis-server exited: %v", c.err)
		}
		if time.Now().After(deadline) {
			c.kill()
			return errors.New("redis-server did not answer PING within 10s")
		}
		select {
		case <-c.done:
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// ping sends one PING over a fresh connection.
func (r *redisServer) ping() error {
	conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", r.port), time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(time.Second))
	if _, err := conn.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return err
	}
	if line != "+PONG\r\n" {
		return fmt.Errorf("PING answered %q", line)
	}
	return nil
}

// stop stops redis-server (SIGTERM, then SIGKILL after 10s).
func (r *redisServer) stop() {
	r.mu.Lock()
	c := r.run
	r.run = nil
	r.mu.Unlock()
	if c != nil {
		_, _ = c.terminate(10 * time.Second)
	}
}
