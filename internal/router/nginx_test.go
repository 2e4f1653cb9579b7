package router_test

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"ganglion/internal/router"
)

// nginxBinary finds nginx (Debian: apt-get install -y nginx). Without it
// the nginx tests skip, unless CI is set: there they must run.
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

func nginxInstalled() bool {
	if os.Getenv("GANGLION_TEST_NGINX") != "" {
		return true
	}
	for _, c := range []string{"nginx", "/usr/sbin/nginx"} {
		if _, err := exec.LookPath(c); err == nil {
			return true
		}
	}
	return false
}

func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startNginx runs nginx with the config generated for f on a free loopback
// port, in a temporary prefix, until the test ends.
func startNginx(t testing.TB, f *testFleet) string {
	t.Helper()
	bin := nginxBinary(t)
	dir := t.TempDir()
	f.rc.Listen.Port = freePort(t)
	plan, err := router.NewPlan(f.cfg, f.rc)
	if err != nil {
		t.Fatal(err)
	}
	var gen bytes.Buffer
	if err := router.WriteNginx(&gen, plan, f.rc); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "ganglion.conf"), gen.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	user := ""
	if os.Geteuid() == 0 {
		user = "user root;" // workers must reach the temp dirs in this private prefix
	}
	main := fmt.Sprintf(`%s
worker_processes 1;
events { worker_connections 512; }
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
	if err := os.WriteFile(conf, []byte(main), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "tmp"), 0o755); err != nil {
		t.Fatal(err)
	}
	global := "daemon off; pid " + filepath.Join(dir, "nginx.pid") + "; error_log stderr;"
	if out, err := exec.Command(bin, "-t", "-q", "-e", "stderr", "-p", dir, "-c", conf, "-g", global).CombinedOutput(); err != nil {
		t.Fatalf("nginx -t rejects the generated config: %v\n%s\n%s", err, out, numbered(gen.String()))
	}
	cmd := exec.Command(bin, "-e", "stderr", "-p", dir, "-c", conf, "-g", global)
	logs := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatalf("start nginx: %v", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("nginx log:\n%s", logs.String())
		}
	})
	base := fmt.Sprintf("http://127.0.0.1:%d", f.rc.Listen.Port)
	waitFor(t, "nginx to answer /health", 10*time.Second, func() bool {
		select {
		case <-exited:
			t.Fatalf("nginx exited:\n%s", logs.String())
		default:
		}
		resp, err := http.Get(base + "/health")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return base
}

func numbered(s string) string {
	lines := strings.Split(s, "\n")
	for i := range lines {
		lines[i] = fmt.Sprintf("%4d  %s", i+1, lines[i])
	}
	return strings.Join(lines, "\n")
}

func TestNginxRoutesEveryClass(t *testing.T) {
	f := newTestFleet(t, 8008) // the port is replaced by startNginx
	base := startNginx(t, f)
	checkRouting(t, base)
}

func TestNginxStickiness(t *testing.T) {
	f := newTestFleet(t, 8008) // the port is replaced by startNginx
	base := startNginx(t, f)
	checkStickiness(t, base)
}

func TestNginxBadInput(t *testing.T) {
	f := newTestFleet(t, 8008) // the port is replaced by startNginx
	base := startNginx(t, f)
	for _, p := range []string{"/", "/index.php", "/_synapse/replication/send_events/x", "/metrics"} {
		send(t, base, reqLine{method: "GET", path: p}).wantMatrixError(t, http.StatusNotFound, "M_UNRECOGNIZED")
	}
	send(t, base, reqLine{method: "POST", path: "/_matrix/client/v3/sync", body: "{}"}).wantMatrixError(t, http.StatusMethodNotAllowed, "M_UNRECOGNIZED")
	big := strings.Repeat("x", 64<<10+1)
	send(t, base, reqLine{method: "POST", path: "/_matrix/client/v3/createRoom", body: big}).wantMatrixError(t, http.StatusRequestEntityTooLarge, "M_TOO_LARGE")
	if r := send(t, base, reqLine{method: "POST", path: "/_matrix/media/v3/upload", body: big}); r.status != http.StatusOK {
		t.Fatalf("media upload under the media limit: %d %s", r.status, r.body)
	}
	e := send(t, base, reqLine{method: "GET", path: "/_matrix/client/versions"}).reply(t)
	if e.XFF != "127.0.0.1" || e.XFP != "http" {
		t.Errorf("forwarded headers: XFF %q XFP %q", e.XFF, e.XFP)
	}
	for _, n := range []string{"fed1", "main"} {
		f.backends[n].kill()
	}
	send(t, base, reqLine{method: "GET", path: "/_matrix/federation/v1/state/!r:x"}).wantMatrixError(t, http.StatusBadGateway, "M_UNKNOWN")
}

// With x_forwarded: true the proxy is itself behind a proxy: it keeps the
// incoming X-Forwarded-For chain (adding its peer) and scheme.
func TestForwardedTrusted(t *testing.T) {
	check := func(t *testing.T, base string) {
		req, _ := http.NewRequest("GET", base+"/_matrix/client/versions", nil)
		req.Header.Set("X-Forwarded-For", "203.0.113.7")
		req.Header.Set("X-Forwarded-Proto", "https")
		resp, err := testClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var buf bytes.Buffer
		_, _ = buf.ReadFrom(resp.Body)
		e := result{status: resp.StatusCode, body: buf.Bytes()}.reply(t)
		if e.XFF != "203.0.113.7, 127.0.0.1" || e.XFP != "https" {
			t.Errorf("XFF %q XFP %q", e.XFF, e.XFP)
		}
	}
	t.Run("router", func(t *testing.T) {
		f := newTestFleet(t, 8008)
		f.rc.Listen.XForwarded = true
		_, base := startRouter(t, f)
		check(t, base)
	})
	t.Run("nginx", func(t *testing.T) {
		f := newTestFleet(t, 8008)
		f.rc.Listen.XForwarded = true
		check(t, startNginx(t, f))
	})
}
