package e2e_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"ganglion/internal/testutil"
)

// forEachEngine's deployments beyond the plain fleet: a fleet exactly as
// engineFleet, reached through one front — the built-in router (a real
// `ganglion route` process) or nginx with the config `ganglion generate
// nginx` writes for the same router section.
const (
	engineFleetRouter = "fleet-router"
	engineFleetNginx  = "fleet-nginx"
)

// frontKind says which front, if any, an engine puts before its fleet.
func frontKind(engine string) (kind string, ok bool) {
	switch engine {
	case engineFleetRouter:
		return "router", true
	case engineFleetNginx:
		return "nginx", true
	}
	return "", false
}

// front is a reverse proxy process in front of a fleet.
type front struct {
	kind string // "router" or "nginx"
	url  string // http://127.0.0.1:PORT, every client request goes here
	logs *syncBuffer
	run  *child
}

// routerSection is the router: section the fronts are made from. Every
// instance is listed with its client listener; writer1 has one, so the
// stream-writer classes (typing, to-device, receipts, account data,
// presence) go to it and the event-sending class to the events pool.
func (f *fleet) routerSection(port int) map[string]any {
	instances := map[string]any{}
	for _, p := range f.procs {
		if p.clientPort != 0 {
			instances[p.name] = map[string]any{"client_url": f.clientURL(p.name)}
		}
	}
	workers := clientWorkers()
	pools := map[string]any{
		"sync":   workers,
		"client": workers,
		"events": workers,
		"media":  []string{instMedia},
	}
	for name, members := range f.routerPools {
		pools[name] = members
	}
	return map[string]any{"router": map[string]any{
		"listen":    map[string]any{"port": port, "bind_address": "127.0.0.1", "x_forwarded": false},
		"instances": instances,
		"pools":     pools,
		// Fast active checks: after a fleet restart the harness waits for
		// the router to see every backend up again.
		"health_check_interval": "100ms",
	}}
}

// startFront starts the front of kind before f on a free port, retrying
// on another port if it was taken meanwhile; it is stopped when the test
// ends.
func startFront(t *testing.T, f *fleet, kind string) *front {
	t.Helper()
	var nginxBin string
	if kind == "nginx" {
		nginxBin = nginxBinary(t)
	}
	for attempt := 1; ; attempt++ {
		port := fleetPort(t)
		dir := filepath.Join(f.dir, fmt.Sprintf("front-%s-%d", kind, attempt))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatalf("front dir: %v", err)
		}
		routerYAML := writeYAML(t, filepath.Join(dir, "router.yaml"), f.routerSection(port))
		fr := &front{kind: kind, url: fmt.Sprintf("http://127.0.0.1:%d", port), logs: &syncBuffer{}}
		var err error
		switch kind {
		case "router":
			fr.run, err = startChild(f.bin, []string{"route", "-c", f.shared, "-c", routerYAML}, dir,
				&prefixWriter{prefix: "[router] ", dst: fr.logs})
		case "nginx":
			fr.run, err = startNginx(t, f, nginxBin, dir, routerYAML, fr.logs)
		}
		if err != nil {
			t.Fatalf("start %s: %v", kind, err)
		}
		t.Cleanup(func() {
			fr.wantTraffic(t, f)
			if clean, err := fr.run.terminate(10 * time.Second); !clean {
				t.Errorf("%s did not exit within 10s of SIGTERM; killed (%v)", kind, err)
			}
			if t.Failed() {
				t.Logf("----- %s log (tail) -----\n%s", kind, tail(fr.logs.String(), 12<<10))
			}
		})
		err = fr.waitReady(f)
		if err == nil {
			return fr
		}
		if strings.Contains(fr.logs.String(), "address already in use") && attempt < 3 {
			t.Logf("%s start-up (attempt %d): port %d was taken, retrying: %v", kind, attempt, port, err)
			continue
		}
		t.Fatalf("start %s: %v\n%s", kind, err, tail(fr.logs.String(), 8<<10))
	}
}

// nginxBinary finds nginx as internal/router's tests do: without it
// fleet-nginx skips, unless CI is set.
func nginxBinary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("GANGLION_TEST_NGINX"); p != "" {
		return p
	}
	for _, c := range []string{"nginx", "/usr/sbin/nginx"} {
		if p, err := exec.LookPath(c); err == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("nginx is not installed and CI is set (Debian: apt-get install -y nginx)")
	}
	t.Skip("nginx is not installed (Debian: apt-get install -y nginx)")
	return ""
}

// startNginx writes the config `ganglion generate nginx` makes for the
// fleet's files, wraps it in a main config with a private prefix, checks
// it with nginx -t and starts nginx in the foreground.
func startNginx(t testing.TB, f *fleet, bin, dir, routerYAML string, logs *syncBuffer) (*child, error) {
	t.Helper()
	gen := filepath.Join(dir, "ganglion.conf")
	if out, err := exec.Command(f.bin, "generate", "nginx", "-c", f.shared, "-c", routerYAML, "--out", gen).CombinedOutput(); err != nil {
		t.Fatalf("ganglion generate nginx: %v\n%s", err, out)
	}
	user := ""
	if os.Geteuid() == 0 {
		user = "user root;" // workers must reach the temp dirs in this private prefix
	}
	mainConf := fmt.Sprintf(`%s
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path %[2]s/tmp/body;
    proxy_temp_path %[2]s/tmp/proxy;
    fastcgi_temp_path %[2]s/tmp/fastcgi;
    uwsgi_temp_path %[2]s/tmp/uwsgi;
    scgi_temp_path %[2]s/tmp/scgi;
    include %[2]s/ganglion.conf;
}
`, user, dir)
	conf := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(conf, []byte(mainConf), 0o644); err != nil {
		t.Fatalf("write nginx.conf: %v", err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "tmp"), 0o755); err != nil {
		t.Fatalf("nginx temp dir: %v", err)
	}
	// master_process off: one process, which dies with the test process
	// (setDeathSignal); a master's workers would outlive a killed run.
	global := "daemon off; master_process off; pid " + filepath.Join(dir, "nginx.pid") + "; error_log stderr;"
	if out, err := exec.Command(bin, "-t", "-q", "-e", "stderr", "-p", dir, "-c", conf, "-g", global).CombinedOutput(); err != nil {
		t.Fatalf("nginx -t rejects the generated config: %v\n%s", err, out)
	}
	return startChild(bin, []string{"-e", "stderr", "-p", dir, "-c", conf, "-g", global}, dir,
		&prefixWriter{prefix: "[nginx] ", dst: logs})
}

// waitReady polls until the front answers its own /health and, for the
// router, considers every backend up (after a fleet restart its active
// checks may still hold some down).
func (fr *front) waitReady(f *fleet) error {
	ctx, cancel := context.WithTimeout(context.Background(), fleetReadyTimeout)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if _, err := f.get(ctx, fr.url+"/health"); err == nil && fr.backendsUp(ctx, f) {
			return nil
		}
		select {
		case <-fr.run.done:
			return fmt.Errorf("%s exited before becoming ready: %v", fr.kind, fr.run.err)
		case <-ctx.Done():
			return fmt.Errorf("%s not ready: %w", fr.kind, ctx.Err())
		case <-tick.C:
		}
	}
}

// backendsUp reports whether the router's metrics show every backend up.
// nginx has passive health only, and nothing to ask.
func (fr *front) backendsUp(ctx context.Context, f *fleet) bool {
	if fr.kind != "router" {
		return true
	}
	body, err := f.get(ctx, fr.url+"/_ganglion/router/metrics")
	if err != nil {
		return false
	}
	seen := false
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, "ganglion_router_backend_up{") {
			seen = true
			if !strings.HasSuffix(line, " 1") {
				return false
			}
		}
	}
	return seen
}

// startFrontServer starts a fleet and a front before it; every client
// and raw request goes to the front's one URL. The settleFirst transport
// stays: the suites were written for one process (see settleFirst).
//
// The fleet's processes keep their own rate-limit buckets and UIA state
// as on engineFleet; the front decides which process a request reaches.
func startFrontServer(t *testing.T, engine, kind string, opts ...configOption) *server {
	t.Helper()
	f := startFleet(t, opts...)
	f.front = startFront(t, f, kind)
	return &server{
		engine: engine,
		fleet:  f,
		url:    f.front.url,
		opts:   opts,
		http: &http.Client{Timeout: 30 * time.Second,
			Transport: settleFirst{f: f, base: http.DefaultTransport.(*http.Transport).Clone()}},
	}
}

// afterRestart waits, after a fleet restart, until the front routes to
// the restarted processes again.
func (fr *front) afterRestart(t testing.TB, f *fleet) {
	t.Helper()
	if err := fr.waitReady(f); err != nil {
		t.Fatalf("after the fleet restart: %v", err)
	}
}

// wantTraffic checks, when the test used the router, that requests did go
// through it to more than one backend: a harness that bypassed the front
// would otherwise pass unnoticed.
func (fr *front) wantTraffic(t testing.TB, f *fleet) {
	t.Helper()
	if fr.kind != "router" || fr.run.exited() || t.Failed() {
		return
	}
	counts, err := fr.requestsPerBackend(f, func(string) bool { return true })
	if err != nil {
		t.Errorf("router metrics: %v", err)
		return
	}
	backends := map[string]bool{}
	for b := range counts {
		backends[b] = true
	}
	if len(backends) < 2 {
		t.Errorf("the router served requests to %d backends (%v), want the test's traffic spread over the fleet", len(backends), backends)
	}
	t.Logf("router served requests to backends %v", backends)
}

// TestRouterFailoverOnFleet: behind the router, a user's syncs stay on one
// worker; when that worker is killed, the user's next syncs land on the
// other one with at most one failed attempt, carry on from the same token
// and see what was sent meanwhile.
func TestRouterFailoverOnFleet(t *testing.T) {
	t.Parallel()
	srv := startFrontServer(t, engineFleetRouter, "router")
	f := srv.fleet
	ctx := testContext(t)
	alice := srv.register(t, ctx, "alice")
	bob := srv.register(t, ctx, "bob")
	room := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	join(t, ctx, bob, room.String())
	as, _ := newSyncer(t, ctx, alice, "")

	// Alice's worker is the one whose sync count grows by her syncs. The
	// router counts a request after answering it, so wait for the counts.
	before := f.front.syncsSettled(t, f, 1) // the initial sync
	const n = 4
	for range n {
		as.next(t, ctx, 0)
	}
	after := f.front.syncsSettled(t, f, 1+n)
	home, other := "", ""
	for _, w := range clientWorkers() {
		switch after[w] - before[w] {
		case n:
			home = w
		case 0:
			other = w
		}
	}
	if home == "" || other == "" {
		t.Fatalf("alice's %d syncs were not all on one worker: before %v, after %v", n, before, after)
	}

	f.killProc(t, home)
	// Bob's send may meet a pooled connection to the dead worker
	// mid-request; the router replays such a PUT on the other worker. The
	// contract allows the client one failure and a retry with the same
	// txn id (which the spec makes idempotent), so the test does too.
	var ev id.EventID
	for attempt := 1; ; attempt++ {
		resp, err := bob.SendMessageEvent(ctx, room, event.EventMessage,
			map[string]any{"msgtype": "m.text", "body": "while " + home + " is down"}, mautrix.ReqSendEvent{TransactionID: "failover-1"})
		if err == nil {
			ev = resp.EventID
			break
		}
		if attempt == 2 {
			t.Fatalf("bob's send failed twice after %s died: %v", home, err)
		}
	}
	failures := 0
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := syncRaw(ctx, alice, syncParams{since: as.since, timeout: 5000}, nil)
		if err != nil {
			failures++
			if failures > 1 {
				t.Fatalf("alice's syncs failed %d times after %s died: %v", failures, home, err)
			}
			continue
		}
		as.since = resp.NextBatch
		if findEvent(timelineOf(resp, room), ev) != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("alice never saw bob's message after %s died", home)
		}
	}
	testutil.Eventually(t, 10*time.Second, "alice's syncs counted on "+other, func() bool {
		return f.front.syncsPerBackend(t, f)[other] > after[other]
	})
	// And they stay there: the next syncs go to the survivor too.
	moved := f.front.syncsPerBackend(t, f)
	as.next(t, ctx, 0)
	as.next(t, ctx, 0)
	testutil.Eventually(t, 10*time.Second, "alice's next syncs counted on "+other, func() bool {
		return f.front.syncsPerBackend(t, f)[other] >= moved[other]+2
	})
	if got := f.front.syncsPerBackend(t, f); got[home] != moved[home] {
		t.Fatalf("a sync was counted on the dead %s: %v → %v", home, moved, got)
	}
}

// syncsSettled waits until the router has counted total answered syncs
// and returns the counts per backend.
func (fr *front) syncsSettled(t testing.TB, f *fleet, total int) map[string]int {
	t.Helper()
	var got map[string]int
	testutil.Eventually(t, 10*time.Second, fmt.Sprintf("the router counting %d syncs", total), func() bool {
		got = fr.syncsPerBackend(t, f)
		sum := 0
		for _, n := range got {
			sum += n
		}
		return sum == total
	})
	return got
}

// syncsPerBackend reads the router's count of answered /sync requests per
// backend.
func (fr *front) syncsPerBackend(t testing.TB, f *fleet) map[string]int {
	t.Helper()
	out, err := fr.requestsPerBackend(f, func(labels string) bool {
		return strings.Contains(labels, `class="sync"`) && strings.Contains(labels, `code="200"`)
	})
	if err != nil {
		t.Fatalf("router metrics: %v", err)
	}
	return out
}

var routerRequestsLine = regexp.MustCompile(`^ganglion_router_requests_total\{([^}]*)\} (\S+)$`)

// requestsPerBackend sums the router's request counters per backend over
// the series whose labels keep accepts.
func (fr *front) requestsPerBackend(f *fleet, keep func(labels string) bool) (map[string]int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	body, err := f.get(ctx, fr.url+"/_ganglion/router/metrics")
	if err != nil {
		return nil, err
	}
	out := map[string]int{}
	for _, line := range strings.Split(body, "\n") {
		m := routerRequestsLine.FindStringSubmatch(line)
		if m == nil || !keep(m[1]) {
			continue
		}
		i := strings.Index(m[1], `backend="`)
		if i < 0 {
			continue
		}
		rest := m[1][i+len(`backend="`):]
		n := int(sampleInt(m[2]))
		out[rest[:strings.IndexByte(rest, '"')]] += n
	}
	return out, nil
}
