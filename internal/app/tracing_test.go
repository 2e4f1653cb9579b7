package app_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"ganglion/internal/app"
	"ganglion/internal/config"
	"ganglion/internal/router"
	"ganglion/internal/storage/storagetest"
	"ganglion/internal/testutil"
	"ganglion/internal/tracing"
)

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// startInProcess runs one instance of the fleet in this test binary,
// exporting its spans to exp.
func startInProcess(t *testing.T, files []string, env func(string) string, name string, exp *tracetest.InMemoryExporter,
	logs io.Writer) *app.Process {
	t.Helper()
	cfg, err := config.Load(files, env)
	if err != nil {
		t.Fatalf("config of %s: %v", name, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})).With("instance", name)
	p, err := app.New(ctx, cfg, log, app.WithTracer(tracing.NewWithExporter(name, exp)))
	if err != nil {
		cancel()
		t.Fatalf("start %s: %v", name, err)
	}
	if err := p.Listen(); err != nil {
		cancel()
		_ = p.Run(ctx)
		t.Fatalf("listen %s: %v", name, err)
	}
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Errorf("%s did not stop", name)
		}
	})
	return p
}

func writeYAML(t *testing.T, dir, name string, doc map[string]any) string {
	t.Helper()
	data, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestTraceSpansRouterWorkerPersister sends an event through the router to
// a generic worker whose room's persister is the main process, all three
// in this test binary on real PostgreSQL and Redis, and checks that one
// trace holds the router's span, the worker's request, its HTTP
// replication call, the persister's request and its database transaction,
// each span naming the instance it ran on.
func TestTraceSpansRouterWorkerPersister(t *testing.T) {
	redisURL := os.Getenv("GANGLION_TEST_REDIS")
	if redisURL == "" {
		if os.Getenv("CI") != "" {
			t.Fatal("GANGLION_TEST_REDIS is not set")
		}
		t.Skip("GANGLION_TEST_REDIS not set; run scripts/test")
	}
	dbURL := storagetest.NewPostgresDatabase(t)
	env := func(k string) string {
		switch k {
		case config.EnvDatabaseURL:
			return dbURL
		case "GANGLION_REDIS_URL":
			return redisURL
		}
		return ""
	}
	dir := t.TempDir()
	mainRepl, workerRepl, mainClient, workerClient := freePort(t), freePort(t), freePort(t), freePort(t)
	server := fmt.Sprintf("trace%d.test", time.Now().UnixNano())
	listener := func(port int, res string) map[string]any {
		return map[string]any{"port": port, "bind_addresses": []string{"127.0.0.1"}, "type": "http", "x_forwarded": res == "client",
			"resources": []any{map[string]any{"names": []string{res}}}}
	}
	shared := writeYAML(t, dir, "shared.yaml", map[string]any{
		"server_name":         server,
		"signing_key_path":    filepath.Join(dir, "signing.key"),
		"report_stats":        false,
		"enable_registration": true,
		"enable_registration_without_verification": true,
		"redis":                     map[string]any{"enabled": true},
		"worker_replication_secret": "s3cret",
		"instance_map": map[string]any{
			"main":    map[string]any{"host": "127.0.0.1", "port": mainRepl},
			"worker1": map[string]any{"host": "127.0.0.1", "port": workerRepl},
		},
		"stream_writers":  map[string]any{"events": []string{"main"}},
		"rc_message":      map[string]any{"per_second": 0},
		"rc_registration": map[string]any{"per_second": 0},
	})
	mainFile := writeYAML(t, dir, "main.yaml", map[string]any{
		"listeners": []any{listener(mainClient, "client"), listener(mainRepl, "replication")},
	})
	workerFile := writeYAML(t, dir, "worker1.yaml", map[string]any{
		"worker_app": "generic_worker", "worker_name": "worker1",
		"worker_listeners": []any{listener(workerClient, "client"), listener(workerRepl, "replication")},
	})
	exp := tracetest.NewInMemoryExporter()
	var logs syncBuffer
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("logs:\n%s", logs.String())
		}
	})
	startInProcess(t, []string{shared, mainFile}, env, "main", exp, &logs)
	startInProcess(t, []string{shared, workerFile}, env, "worker1", exp, &logs)

	cfg, err := config.Load([]string{shared}, env)
	if err != nil {
		t.Fatal(err)
	}
	rc, err := router.NewConfig(cfg, router.Config{
		Name:   "router",
		Listen: config.Listener{Port: 8008, BindAddresses: []string{"127.0.0.1"}},
		Instances: map[string]router.InstanceURLs{
			"main":    {ClientURL: fmt.Sprintf("http://127.0.0.1:%d", mainClient)},
			"worker1": {ClientURL: fmt.Sprintf("http://127.0.0.1:%d", workerClient)},
		},
		Pools: map[string]config.StringList{"events": {"worker1"}, "client": {"worker1"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	rt, err := router.New(cfg, rc, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	rt.SetTracer(tracing.NewWithExporter("router", exp))
	front := httptest.NewServer(rt.Handler())
	defer front.Close()

	do := func(method, path, token string, body any) (int, map[string]any) {
		t.Helper()
		b, _ := json.Marshal(body)
		req, _ := http.NewRequest(method, front.URL+path, bytes.NewReader(b))
		req.Header.Set("Content-Type", "application/json")
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		var out map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&out)
		return resp.StatusCode, out
	}
	// Wait for the worker's client listener and replication link.
	var code int
	var reg map[string]any
	testutil.Eventually(t, 30*time.Second, "registration through the router", func() bool {
		code, reg = do("POST", "/_matrix/client/v3/register", "", map[string]any{"username": "alice", "password": "pw-alice-long-enough"})
		if code != http.StatusUnauthorized {
			return false
		}
		session, _ := reg["session"].(string)
		code, reg = do("POST", "/_matrix/client/v3/register", "", map[string]any{"username": "alice", "password": "pw-alice-long-enough",
			"auth": map[string]any{"type": "m.login.dummy", "session": session}})
		return code == http.StatusOK
	})
	token, _ := reg["access_token"].(string)
	code, room := do("POST", "/_matrix/client/v3/createRoom", token, map[string]any{})
	roomID, _ := room["room_id"].(string)
	if code != 200 || roomID == "" {
		t.Fatalf("createRoom: %d %v", code, room)
	}

	exp.Reset()
	code, sent := do("PUT", "/_matrix/client/v3/rooms/"+roomID+"/send/m.room.message/t1", token, map[string]any{"msgtype": "m.text", "body": "traced"})
	if code != 200 {
		t.Fatalf("send: %d %v", code, sent)
	}

	instanceOf := func(s tracetest.SpanStub) string {
		for _, kv := range s.Resource.Attributes() {
			if kv.Key == "service.instance.id" {
				return kv.Value.AsString()
			}
		}
		return ""
	}
	var spans tracetest.SpanStubs
	var root tracetest.SpanStub
	// Spans end as their work ends: the router's last, once the response is
	// through.
	testutil.Eventually(t, 10*time.Second, "the router's span of the send", func() bool {
		spans = exp.GetSpans()
		for _, s := range spans {
			if s.Name == "route PUT event_send" {
				root = s
				return true
			}
		}
		return false
	})
	if instanceOf(root) != "router" || root.SpanKind != trace.SpanKindServer || root.Parent.IsValid() {
		t.Fatalf("router span: instance %q kind %v parent %v", instanceOf(root), root.SpanKind, root.Parent)
	}
	tid := root.SpanContext.TraceID()
	byID := map[trace.SpanID]tracetest.SpanStub{}
	var inTrace []string
	for _, s := range spans {
		if s.SpanContext.TraceID() == tid {
			byID[s.SpanContext.SpanID()] = s
			inTrace = append(inTrace, instanceOf(s)+": "+s.Name)
		}
	}
	find := func(what string, match func(s tracetest.SpanStub) bool) tracetest.SpanStub {
		t.Helper()
		for _, s := range byID {
			if match(s) {
				return s
			}
		}
		t.Fatalf("no %s in the trace; it holds %v", what, inTrace)
		return tracetest.SpanStub{}
	}
	worker := find("worker request span", func(s tracetest.SpanStub) bool {
		return instanceOf(s) == "worker1" && s.Name == "PUT event_send" && s.SpanKind == trace.SpanKindServer
	})
	call := find("replication call span", func(s tracetest.SpanStub) bool {
		return instanceOf(s) == "worker1" && s.Name == "replication send_events" && s.SpanKind == trace.SpanKindClient
	})
	persisted := find("persister request span", func(s tracetest.SpanStub) bool {
		return instanceOf(s) == "main" && s.SpanKind == trace.SpanKindServer && strings.HasSuffix(s.Name, " replication")
	})
	tx := find("persister transaction span", func(s tracetest.SpanStub) bool {
		return instanceOf(s) == "main" && strings.HasPrefix(s.Name, "db rooms.")
	})
	// The chain of parents: router → worker → its call → persister → tx.
	for _, link := range []struct {
		child, parent tracetest.SpanStub
		what          string
	}{
		{worker, root, "the worker's request under the router's span"},
		{call, worker, "the replication call under the worker's request"},
		{persisted, call, "the persister's request under the call (traceparent over HTTP replication)"},
	} {
		if link.child.Parent.SpanID() != link.parent.SpanContext.SpanID() {
			t.Errorf("%s: parent %v, want %v", link.what, link.child.Parent.SpanID(), link.parent.SpanContext.SpanID())
		}
	}
	// The transaction runs in the persister's batch, under the request
	// that led it.
	for p := tx; ; {
		parent, ok := byID[p.Parent.SpanID()]
		if !ok {
			t.Errorf("the transaction span %q does not descend from the persister's request", tx.Name)
			break
		}
		if parent.SpanContext.SpanID() == persisted.SpanContext.SpanID() {
			break
		}
		p = parent
	}
	// The request's log lines name the trace.
	if !strings.Contains(logs.String(), "trace_id="+tid.String()) {
		t.Errorf("no log line of the send names trace %s", tid)
	}
}

// syncBuffer collects the processes' logs.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
