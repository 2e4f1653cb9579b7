package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"ganglion/internal/storage/storagetest"
)

// TestUpRouterKeepsClientAddresses runs the configs `ganglion up`
// generates for a fleet behind its router: a client hammering the login
// with bad passwords is rate limited by rc_login.address, and a client on
// another address still logs in. (With the workers seeing only the
// router's address, the second login was refused too.)
func TestUpRouterKeepsClientAddresses(t *testing.T) {
	redisURL := testRedisURL(t)
	dbURL := storagetest.NewPostgresDatabase(t)
	bin := buildGanglion(t)

	dir := t.TempDir()
	var rnd [4]byte
	_, _ = rand.Read(rnd[:])
	fast := `{per_second: 1000, burst_count: 1000}`
	shared := fmt.Sprintf(`server_name: up-%s.test
database: {name: psycopg2, args: {host: placeholder.invalid, database: overridden_by_env}}
redis: {enabled: true}
worker_replication_secret: up-test-secret
signing_key_path: signing.key
bcrypt_rounds: 4
enable_registration: true
enable_registration_without_verification: true
rc_registration: %s
rc_login: {address: {per_second: 0.001, burst_count: 2}, account: %s, failed_attempts: %s}
`, hex.EncodeToString(rnd[:]), fast, fast, fast)
	mainClient, mainRepl, workerClient, workerRepl, routerPort := freePort(t), freePort(t), freePort(t), freePort(t), freePort(t)
	deployment := fmt.Sprintf(`config: [homeserver.yaml]
instances:
  - name: main
    listeners: [{port: %d, resources: [client]}, {port: %d, resources: [replication, metrics]}]
  - name: worker1
    app: generic_worker
    listeners: [{port: %d, resources: [client]}, {port: %d, resources: [replication, metrics]}]
  - name: router
    app: router
    listeners: [{port: %d, resources: [client]}]
restart: {min_backoff: 100ms, max_backoff: 1s}
startup_timeout: 90s
`, mainClient, mainRepl, workerClient, workerRepl, routerPort)
	for name, data := range map[string]string{"homeserver.yaml": shared, "deployment.yaml": deployment} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var out syncBuffer
	up := exec.Command(bin, "up", "-c", filepath.Join(dir, "deployment.yaml"))
	up.Env = append(os.Environ(), "GANGLION_DATABASE_URL="+dbURL, "GANGLION_REDIS_URL="+redisURL)
	up.Stdout, up.Stderr = &out, &out
	if err := up.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- up.Wait() }()
	t.Cleanup(func() {
		_ = up.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			_ = up.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("ganglion up output:\n%s", out.String())
		}
	})
	eventually(t, 120*time.Second, "main, worker1 and the router healthy", func() bool {
		return healthy(mainRepl) && healthy(workerClient) && healthy(routerPort)
	})

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	base := fmt.Sprintf("http://127.0.0.1:%d", routerPort)
	post := func(from, path string, body any) (int, map[string]any) {
		t.Helper()
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: 5 * time.Second}
		c := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DialContext: d.DialContext}}
		b, _ := json.Marshal(body)
		req, err := http.NewRequestWithContext(ctx, "POST", base+path, bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("POST %s from %s: %v", path, from, err)
		}
		defer resp.Body.Close()
		data, _ := io.ReadAll(resp.Body)
		var m map[string]any
		_ = json.Unmarshal(data, &m)
		return resp.StatusCode, m
	}
	for _, user := range []string{"alice", "bob"} {
		// The dummy flow: the first answer is the UIA challenge with a session.
		status, m := post("127.0.0.1", "/_matrix/client/v3/register", map[string]any{"username": user, "password": "pw-" + user})
		session, _ := m["session"].(string)
		if status != http.StatusUnauthorized || session == "" {
			t.Fatalf("register %s: %d %v, want the 401 challenge", user, status, m)
		}
		status, m = post("127.0.0.1", "/_matrix/client/v3/register", map[string]any{"username": user, "password": "pw-" + user,
			"auth": map[string]any{"type": "m.login.dummy", "session": session}})
		if status != http.StatusOK {
			t.Fatalf("register %s: %d %v", user, status, m)
		}
	}
	login := func(user, pw string) map[string]any {
		return map[string]any{"type": "m.login.password", "password": pw,
			"identifier": map[string]any{"type": "m.id.user", "user": user}}
	}
	limited := false
	for i := 0; i < 8 && !limited; i++ {
		status, m := post("127.0.0.2", "/_matrix/client/v3/login", login("alice", "wrong"))
		switch {
		case status == http.StatusTooManyRequests && m["errcode"] == "M_LIMIT_EXCEEDED":
			limited = true
		case status != http.StatusForbidden:
			t.Fatalf("bad login %d: %d %v", i, status, m)
		}
	}
	if !limited {
		t.Fatalf("8 bad logins from one client were never rate limited")
	}
	if status, m := post("127.0.0.3", "/_matrix/client/v3/login", login("bob", "pw-bob")); status != http.StatusOK {
		t.Fatalf("bob's login from another address: %d %v, want 200", status, m)
	}
}
