package serverkeys_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"ganglion/internal/events"
	"ganglion/internal/federation/serverkeys"
	"ganglion/internal/mxhttp"
	"ganglion/internal/storage"
)

// clock is a settable test clock.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *clock { return &clock{now: time.UnixMilli(1_700_000_000_000)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func (c *clock) MS() int64 { return c.Now().UnixMilli() }

// router is the fake federation client: it maps server names to httptest
// servers and counts requests per server and path, bounding answers as the
// real client must.
type router struct {
	mu      sync.Mutex
	servers map[string]string
	calls   map[string]int
	// gate, when set, is waited on before each request is sent.
	gate chan struct{}
}

func newRouter() *router {
	return &router{servers: map[string]string{}, calls: map[string]int{}}
}

func (rt *router) add(t *testing.T, name string, h http.Handler) {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	rt.mu.Lock()
	rt.servers[name] = srv.URL
	rt.mu.Unlock()
}

func (rt *router) count(server, path string) int {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	return rt.calls[server+path]
}

func (rt *router) do(ctx context.Context, method, server, path string, body, out any) error {
	rt.mu.Lock()
	base, ok := rt.servers[server]
	rt.calls[server+path]++
	gate := rt.gate
	rt.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if !ok {
		return fmt.Errorf("no route to %s", server)
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, base+path, rd)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, serverkeys.MaxResponseBytes+1))
	if err != nil {
		return err
	}
	if len(data) > serverkeys.MaxResponseBytes {
		return fmt.Errorf("%s%s: answer too large", server, path)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s%s: status %d: %s", server, path, resp.StatusCode, data)
	}
	return json.Unmarshal(data, out)
}

func (rt *router) GetJSON(ctx context.Context, server, path string, out any) error {
	return rt.do(ctx, http.MethodGet, server, path, nil, out)
}

func (rt *router) PostJSON(ctx context.Context, server, path string, body, out any) error {
	return rt.do(ctx, http.MethodPost, server, path, body, out)
}

var (
	_ serverkeys.Getter = (*router)(nil)
	_ serverkeys.Poster = (*router)(nil)
)

func mustKey(t testing.TB) events.SigningKey {
	t.Helper()
	k, err := events.GenerateSigningKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func newLocal(t testing.TB, name string, key events.SigningKey, c *clock, old map[string]serverkeys.OldKey) *serverkeys.Local {
	t.Helper()
	l, err := serverkeys.NewLocal(serverkeys.LocalConfig{ServerName: name, Key: key, OldKeys: old,
		RefreshInterval: 24 * time.Hour, Now: c.Now})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// keyServer serves a Local's answer the way a remote homeserver would.
func keyServer(l *serverkeys.Local) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != serverkeys.PathServer {
			http.NotFound(w, r)
			return
		}
		body, err := l.Response()
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	})
}

// rawServer serves a fixed body as the key answer.
func rawServer(body []byte) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	})
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// newKeyring builds the keyring of server "ours.test" on db.
func newKeyring(t testing.TB, db *storage.DB, c *clock, opts serverkeys.Options) *serverkeys.Keyring {
	t.Helper()
	opts.Now = c.Now
	return serverkeys.NewKeyring(newLocal(t, "ours.test", mustKey(t), c, nil), serverkeys.NewStore(db), opts, quietLog())
}

// handler serves a keyring's routes as a listener would.
func handler(k *serverkeys.Keyring) http.Handler {
	mux := mxhttp.NewMux()
	k.Routes(mux, mxhttp.NewServer(quietLog()))
	return mux
}

type atomicCounter struct{ n atomic.Int64 }

func (c *atomicCounter) inc()       { c.n.Add(1) }
func (c *atomicCounter) get() int64 { return c.n.Load() }
