package e2e_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"ganglion/internal/config"
)

// TestBinary builds the real ganglion binary once and, on each engine,
// serves with it, creates a user with `ganglion register`, talks to it with
// mautrix, stops it with SIGTERM (exit 0) and restarts it on the same data:
// tokens, rooms and messages survive, and new events sort after old ones.
func TestBinary(t *testing.T) {
	t.Parallel()
	bin := buildBinary(t)
	t.Run("generate-config", func(t *testing.T) {
		ctx := testContext(t)
		path := filepath.Join(t.TempDir(), "gen", "homeserver.yaml")
		out, err := exec.CommandContext(ctx, bin, "generate-config", "--server-name", "gen.example", "--config-path", path).CombinedOutput()
		if err != nil {
			t.Fatalf("ganglion generate-config: %v\n%s", err, out)
		}
		cfg, err := config.Load([]string{path}, nil)
		if err != nil {
			t.Fatalf("the generated config does not load: %v", err)
		}
		if cfg.ServerName != "gen.example" {
			t.Fatalf("generated server_name %q", cfg.ServerName)
		}
		if _, err := os.Stat(cfg.SigningKeyPath); err != nil {
			t.Fatalf("generate-config wrote no signing key: %v", err)
		}
		if out, err := exec.CommandContext(ctx, bin, "generate-config", "--server-name", "gen.example", "--config-path", path).CombinedOutput(); err == nil {
			t.Fatalf("generate-config overwrote an existing config:\n%s", out)
		}
	})
	for _, engine := range []string{engineSQLite, enginePostgres} {
		t.Run(engine, func(t *testing.T) {
			ctx := testContext(t)
			dir := t.TempDir()
			db := databaseSection(t, engine, dir)

			d := startDaemon(t, ctx, bin, dir, db)
			out, err := exec.CommandContext(ctx, bin, "register", "-c", d.cfgPath,
				"--user", "xavier", "--password", "pw-xavier").CombinedOutput()
			if err != nil {
				t.Fatalf("ganglion register: %v\n%s", err, out)
			}
			if !strings.Contains(string(out), "@xavier:"+serverName) {
				t.Fatalf("ganglion register printed %q, want the new user id", out)
			}
			c := d.srv.mustLogin(t, ctx, "xavier", "pw-xavier")
			room := createRoom(t, ctx, c, &mautrix.ReqCreateRoom{Preset: "private_chat", Name: "Durable"})
			durable := send(t, ctx, c, room, "written before the restart", "before")
			d.stop(t)

			d = startDaemon(t, ctx, bin, dir, db)
			c = d.srv.client(t, c.UserID, c.AccessToken) // the new port; the old token
			wantTokenValid(t, ctx, c)
			back := paginate(t, ctx, c, room, mautrix.DirectionBackward, 10)
			if got := ids(back, "m.room.message"); !slices.Equal(got, []id.EventID{durable}) {
				t.Fatalf("after restart the room's messages are %v, want [%s]", got, durable)
			}
			// A client retrying across the restart must not duplicate its
			// message: transaction ids are persisted (Synapse keeps them in
			// the database too).
			if again := send(t, ctx, c, room, "written before the restart", "before"); again != durable {
				t.Fatalf("re-sending transaction %q after the restart created %s; want the original %s", "before", again, durable)
			}
			fresh := send(t, ctx, c, room, "written after the restart", "after")
			back = paginate(t, ctx, c, room, mautrix.DirectionBackward, 10)
			if got := ids(back, "m.room.message"); !slices.Equal(got, []id.EventID{fresh, durable}) {
				t.Fatalf("after restart and a new message: %v, want [%s %s] (new events after old ones)", got, fresh, durable)
			}
			fwd := paginate(t, ctx, c, room, mautrix.DirectionForward, 10)
			if !slices.Equal(ids(fwd, ""), reversed(ids(back, ""))) {
				t.Fatalf("forward and backward timelines differ after restart:\n%v\n%v", ids(fwd, ""), ids(back, ""))
			}
			d.stop(t)
		})
	}
}

// builtBinary is the ganglion binary built once per test run, shared by
// TestBinary and every fleet; TestMain removes its directory.
var builtBinary struct {
	once sync.Once
	dir  string
	path string
	err  error
}

// TestMain removes the binary built for the run.
func TestMain(m *testing.M) {
	code := m.Run()
	if builtBinary.dir != "" {
		_ = os.RemoveAll(builtBinary.dir)
	}
	os.Exit(code)
}

// buildBinary builds ./cmd/ganglion once per test run and returns its
// path.
//
// It runs go build without the shared build lock: the go command running
// this test already holds it (scripts/test with GANGLION_GO_LOCK, or
// `flock LOCK go test`), and flock on the same file would wait forever.
func buildBinary(t *testing.T) string {
	t.Helper()
	b := &builtBinary
	b.once.Do(func() {
		goBin, err := exec.LookPath("go")
		if err != nil {
			b.err = fmt.Errorf("go is not on PATH: %w", err)
			return
		}
		root, err := findModuleRoot()
		if err != nil {
			b.err = err
			return
		}
		const prefix = "ganglion-e2e-bin-"
		removeStaleBinaryDirs(prefix)
		if b.dir, err = os.MkdirTemp("", fmt.Sprintf("%s%d-", prefix, os.Getpid())); err != nil {
			b.err = err
			return
		}
		out := filepath.Join(b.dir, "ganglion")
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, goBin, "build", "-o", out, "./cmd/ganglion")
		cmd.Dir = root
		if log, err := cmd.CombinedOutput(); err != nil {
			b.err = fmt.Errorf("go build ./cmd/ganglion: %w\n%s", err, log)
			return
		}
		b.path = out
	})
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.path
}

// findModuleRoot is the directory of go.mod above the package directory.
func findModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("getwd: %w", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the test directory")
		}
		dir = parent
	}
}

// daemon is a `ganglion serve` child process.
type daemon struct {
	cmd     *exec.Cmd
	done    chan struct{} // closed when the process has exited
	waitErr error         // valid once done is closed
	logs    *syncBuffer
	cfgPath string
	srv     *server
}

// startDaemon writes a config on a free port and runs `ganglion serve -c`
// until /health answers, retrying on another port if the chosen one was
// taken in the meantime. The process is killed at cleanup if still running.
func startDaemon(t *testing.T, ctx context.Context, bin, dir string, db map[string]any) *daemon {
	t.Helper()
	for attempt := 1; ; attempt++ {
		port := freePort(t)
		cfgPath := writeConfig(t, dir, baseConfig(dir, db, port))
		d := &daemon{done: make(chan struct{}), logs: &syncBuffer{}, cfgPath: cfgPath}
		d.cmd = exec.Command(bin, "serve", "-c", cfgPath)
		d.cmd.Env = childEnv()
		d.cmd.Stdout, d.cmd.Stderr = d.logs, d.logs
		if err := d.cmd.Start(); err != nil {
			t.Fatalf("start ganglion serve: %v", err)
		}
		go func() {
			d.waitErr = d.cmd.Wait()
			close(d.done)
		}()
		t.Cleanup(func() {
			select {
			case <-d.done:
			default:
				_ = d.cmd.Process.Kill()
				<-d.done
			}
			if t.Failed() {
				t.Logf("ganglion serve output:\n%s", tail(d.logs.String(), 16<<10))
			}
		})
		d.srv = &server{url: fmt.Sprintf("http://127.0.0.1:%d", port), engine: "binary", http: &http.Client{Timeout: 10 * time.Second}}
		err := d.waitHealthy(ctx)
		if err == nil {
			return d
		}
		if strings.Contains(d.logs.String(), "address already in use") && attempt < 5 {
			continue
		}
		t.Fatalf("ganglion serve did not become healthy: %v\n%s", err, tail(d.logs.String(), 16<<10))
	}
}

// childEnv is the test's environment without the overrides that would
// point the child at another database or Redis than its config says.
func childEnv() []string {
	return slices.DeleteFunc(os.Environ(), func(kv string) bool {
		return strings.HasPrefix(kv, config.EnvDatabaseURL+"=") || strings.HasPrefix(kv, config.EnvRedisURL+"=")
	})
}

// waitHealthy polls /health until it answers 200, the process exits, or
// 30 seconds pass.
func (d *daemon) waitHealthy(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	tick := time.NewTicker(25 * time.Millisecond)
	defer tick.Stop()
	for {
		req, err := http.NewRequestWithContext(ctx, "GET", d.srv.url+"/health", nil)
		if err != nil {
			return err
		}
		if resp, err := d.srv.http.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
		}
		select {
		case <-d.done:
			return fmt.Errorf("exited before becoming healthy: %v", d.waitErr)
		case <-ctx.Done():
			return errors.New("no healthy /health within 30s")
		case <-tick.C:
		}
	}
}

// stop sends SIGTERM and expects exit status 0 within 20 seconds.
func (d *daemon) stop(t *testing.T) {
	t.Helper()
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM: %v", err)
	}
	select {
	case <-d.done:
	case <-time.After(20 * time.Second):
		t.Fatalf("ganglion serve did not exit within 20s of SIGTERM")
	}
	if d.waitErr != nil {
		t.Fatalf("ganglion serve exited with %v after SIGTERM, want status 0", d.waitErr)
	}
}
