package main

// The smoke test runs every scenario at a tiny size through run, the
// command's own entry point, against an in-process monolith on SQLite. It
// checks the results are complete and error-free, never how fast they are:
// speed belongs in bench/RESULTS.md, not in tests.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/pprof"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"ganglion/internal/app"
	"ganglion/internal/config"
)

const smokeSecret = "bench-smoke-shared-secret"

// tinySizes keeps every scenario to a few seconds. At most 3 requests are
// in flight at once (2 fanout members and the sender; -concurrency 2) so a
// server whose database pool is smaller than the benchmark's concurrency
// cannot stall the smoke test: finding that is the benchmark's job.
var tinySizes = []string{
	"-send-users", "4", "-send-rooms", "2", "-send-messages", "3",
	"-fanout-members", "2", "-fanout-messages", "3", "-fanout-wait", "20s",
	"-sync-rooms", "2", "-sync-events", "3", "-sync-repeats", "2",
	"-join-users", "5", "-join-batch", "2",
	"-messages-events", "25", "-messages-limit", "10",
	"-register-users", "3", "-logins", "3",
	"-keys-users", "4", "-keys-devices", "2", "-keys-repeats", "3", "-media-mib", "1", "-media-repeats", "2",
	"-search-messages", "60", "-search-rooms", "2", "-search-senders", "2", "-search-queries", "8",
	"-userdir-users", "6", "-userdir-rooms", "2", "-userdir-queries", "8", "-seed-concurrency", "2",
	"-concurrency", "2", "-progress", "0", "-timeout", "20s", "-scenario-timeout", "90s",
}

func TestSmoke(t *testing.T) {
	srv := startMonolith(t)
	// A stand-in for the server's metrics listener with net/http/pprof
	// mounted, so the -pprof path is exercised (it profiles this test
	// process, which includes the in-process server).
	pmux := http.NewServeMux()
	pmux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	pmux.Handle("GET /debug/pprof/heap", pprof.Handler("heap"))
	metrics := httptest.NewServer(pmux)
	t.Cleanup(metrics.Close)

	t.Run("all", func(t *testing.T) {
		dir := t.TempDir()
		args := append([]string{
			"-url", srv, "-scenario", "all", "-label", "smoke",
			"-pid", strconv.Itoa(os.Getpid()),
			"-pprof", metrics.URL, "-pprof-seconds", "1", "-pprof-dir", dir,
		}, tinySizes...)
		results := runBench(t, args)
		for _, name := range allScenarios {
			r := results[name]
			if r == nil {
				t.Errorf("no result for %s", name)
				continue
			}
			checkCommon(t, r)
			if r.PeakRSSMiB <= 0 || r.RSSScope == "" {
				t.Errorf("%s: peak_rss_mib %v, rss_scope %q; want both set with -pid", name, r.PeakRSSMiB, r.RSSScope)
			}
			if len(r.Profiles) != 2 {
				t.Errorf("%s: profiles %v, want a CPU and a heap profile", name, r.Profiles)
			}
			for _, p := range r.Profiles {
				if fi, err := os.Stat(p); err != nil || fi.Size() == 0 || filepath.Dir(p) != dir {
					t.Errorf("%s: profile %s: %v", name, p, err)
				}
			}
		}
		if r := results[scSend]; r != nil && r.Ops != 4*3 {
			t.Errorf("send: ops %d, want %d", r.Ops, 4*3)
		}
		if r := results[scFanout]; r != nil {
			wantNum(t, r, "expected_deliveries", 2*3)
			wantNum(t, r, "missed", 0)
			wantNum(t, r, "duplicates", 0)
			wantNum(t, r, "unsent_messages", 0)
			if r.Ops != 2*3 {
				t.Errorf("fanout: ops %d, want %d deliveries", r.Ops, 2*3)
			}
			if _, ok := r.Extra["send_latency_ms"].(map[string]any); !ok {
				t.Errorf("fanout: no send_latency_ms in %v", r.Extra)
			}
		}
		if r := results[scInitialSync]; r != nil {
			wantNum(t, r, "rooms_in_sync", 2)
			if b, _ := num(r.Extra, "median_bytes"); b <= 0 {
				t.Errorf("initial_sync: median_bytes %v", r.Extra["median_bytes"])
			}
		}
		if r := results[scJoin]; r != nil {
			if b, _ := r.Extra["batches"].([]any); len(b) != 3 {
				t.Errorf("join: %d batches, want 3 (5 joins in batches of 2)", len(b))
			}
			if _, ok := num(r.Extra, "last_first_ratio"); !ok {
				t.Errorf("join: no last_first_ratio in %v", r.Extra)
			}
		}
		if r := results[scMessages]; r != nil {
			if exact, _ := r.Extra["exact"].(bool); !exact {
				t.Errorf("messages: not exact: %v", r.Extra)
			}
			wantNum(t, r, "missing", 0)
			wantNum(t, r, "duplicates", 0)
		}
		for _, sc := range []string{scKeysQuery, scKeysClaim} {
			if r := results[sc]; r != nil && (r.Ops != 3 || r.Errors != 0 || r.LatencyMS == nil) {
				t.Errorf("%s: ops %d, errors %d %v, latency %v; want 3 requests without errors", sc, r.Ops, r.Errors, r.ErrorSamples, r.LatencyMS)
			}
		}
		if r := results[scKeysClaim]; r != nil {
			if n, _ := num(r.Params, "devices"); n != 4 {
				t.Errorf("keys_claim: devices %v, want 4 (2 users of 2 devices)", r.Params["devices"])
			}
		}
		if r := results[scMedia]; r != nil {
			if r.Ops != 4 || r.Errors != 0 {
				t.Errorf("media: ops %d, errors %d %v; want 2 uploads and 2 downloads", r.Ops, r.Errors, r.ErrorSamples)
			}
			for _, k := range []string{"upload_mib_per_s", "download_mib_per_s"} {
				if v, _ := num(r.Extra, k); v <= 0 {
					t.Errorf("media: %s %v", k, r.Extra[k])
				}
			}
			if _, ok := num(r.Extra, "rss_growth_mib"); !ok {
				t.Errorf("media: no rss_growth_mib with -pid in %v", r.Extra)
			}
		}
		if r := results[scRegister]; r != nil {
			wantNum(t, r, "logins", 3)
			if l, _ := num(r.Extra, "logins_per_s"); l <= 0 {
				t.Errorf("register: logins_per_s %v", r.Extra["logins_per_s"])
			}
		}
	})

	// push_send runs only when named, at its own (here tiny) size.
	t.Run("push_send", func(t *testing.T) {
		args := append([]string{"-url", srv, "-scenario", scPushSend, "-push-members", "4", "-push-messages", "3"}, tinySizes...)
		r := runBench(t, args)[scPushSend]
		if r == nil {
			t.Fatal("no result for push_send")
		}
		checkCommon(t, r)
		if r.Ops != 3 || r.LatencyMS == nil {
			t.Errorf("push_send: %d sends measured (want 3), latency %v", r.Ops, r.LatencyMS)
		}
	})

	// search and userdir run only when named, here at tiny sizes: every
	// search must find something (the scenarios count an empty answer as an
	// error), and each kind of query gets its own percentiles.
	t.Run("search,userdir", func(t *testing.T) {
		args := append([]string{"-url", srv, "-scenario", scSearch + "," + scUserdir}, tinySizes...)
		results := runBench(t, args)
		if r := results[scSearch]; r == nil {
			t.Error("no result for search")
		} else {
			checkCommon(t, r)
			if r.Ops != 8 {
				t.Errorf("search: %d searches measured, want 8", r.Ops)
			}
			for _, k := range []string{"one_word_rank_ms", "one_word_recent_ms", "two_words_rank_ms", "two_words_recent_ms"} {
				if _, ok := r.Extra[k].(map[string]any); !ok {
					t.Errorf("search: no %s in %v", k, r.Extra)
				}
			}
			if v, _ := num(r.Extra, "seed_messages_per_s"); v <= 0 {
				t.Errorf("search: seed_messages_per_s %v", r.Extra["seed_messages_per_s"])
			}
		}
		if r := results[scUserdir]; r == nil {
			t.Error("no result for userdir")
		} else {
			checkCommon(t, r)
			if r.Ops != 8 {
				t.Errorf("userdir: %d searches measured, want 8", r.Ops)
			}
			for _, k := range []string{"prefix1_ms", "prefix3_ms", "first_name_ms", "full_name_ms"} {
				if _, ok := r.Extra[k].(map[string]any); !ok {
					t.Errorf("userdir: no %s in %v", k, r.Extra)
				}
			}
			if _, ok := num(r.Extra, "directory_catch_up_s"); !ok {
				t.Errorf("userdir: no directory_catch_up_s in %v", r.Extra)
			}
		}
	})

	// Shared-secret registration, and clients spread over a URL list (the
	// same server twice, standing in for a fleet's workers).
	t.Run("shared-secret", func(t *testing.T) {
		args := append([]string{
			"-url", srv + "," + srv + "/", "-scenario", "register,send",
			"-shared-secret", smokeSecret,
		}, tinySizes...)
		results := runBench(t, args)
		for _, name := range []string{scRegister, scSend} {
			if r := results[name]; r == nil {
				t.Errorf("no result for %s", name)
			} else {
				checkCommon(t, r)
				if name == scRegister && r.Params["mode"] != regSharedSecret {
					t.Errorf("register: mode %v, want %s", r.Params["mode"], regSharedSecret)
				}
			}
		}
	})

	t.Run("report", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "results.jsonl")
		var stdout bytes.Buffer
		if err := run(t.Context(), append([]string{"-url", srv, "-scenario", "send,messages", "-label", "postgres", "-table"}, tinySizes...),
			&stdout, &bytes.Buffer{}); err != nil {
			t.Fatalf("run: %v", err)
		}
		if err := os.WriteFile(path, stdout.Bytes(), 0o600); err != nil {
			t.Fatal(err)
		}
		var md bytes.Buffer
		if err := run(t.Context(), []string{"-report", path, "-pgbench-tps", "6000"}, &md, &bytes.Buffer{}); err != nil {
			t.Fatalf("report: %v", err)
		}
		for _, want := range []string{"### postgres", "| send |", "| messages |", "### Targets", "messages exact", "0.3 × pgbench"} {
			if !strings.Contains(md.String(), want) {
				t.Errorf("report lacks %q:\n%s", want, md.String())
			}
		}
	})
}

func TestFlagErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-url", "localhost:8008"}, "-url"},
		{[]string{"-scenario", "send,bogus"}, "unknown scenario"},
		{[]string{"-register", "shared-secret"}, "-shared-secret is required"},
		{[]string{"-send-users", "2", "-send-rooms", "3"}, "-send-rooms"},
		{[]string{"-search-senders", "2", "-search-rooms", "3"}, "-search-rooms"},
		{[]string{"-userdir-users", "0"}, "-userdir-users"},
		{[]string{"-prefix", "Upper"}, "-prefix"},
		{[]string{"-pid", "x"}, "-pid"},
		{[]string{"-timeout", "0s"}, "-timeout"},
	} {
		err := run(t.Context(), tc.args, &bytes.Buffer{}, &bytes.Buffer{})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("run %v: error %v, want one mentioning %q", tc.args, err, tc.want)
		}
	}
}

func TestPercentiles(t *testing.T) {
	var d []time.Duration
	for i := 100; i >= 1; i-- {
		d = append(d, time.Duration(i)*time.Millisecond)
	}
	p := percentiles(d)
	want := Percentiles{N: 100, Min: 1, Mean: 50.5, P50: 50, P95: 95, P99: 99, Max: 100}
	if *p != want {
		t.Errorf("percentiles of 1..100 ms = %+v, want %+v", *p, want)
	}
	if p := percentiles([]time.Duration{7 * time.Millisecond}); p.P50 != 7 || p.P99 != 7 {
		t.Errorf("percentiles of one sample = %+v", *p)
	}
	if percentiles(nil) != nil {
		t.Errorf("percentiles of no samples is not nil")
	}
}

// runBench runs the command and decodes its JSON lines by scenario.
func runBench(t *testing.T, args []string) map[string]*Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	err := run(ctx, args, &stdout, &stderr)
	if err != nil {
		t.Errorf("run: %v", err)
	}
	out := map[string]*Result{}
	for _, line := range strings.Split(strings.TrimSpace(stdout.String()), "\n") {
		var r Result
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("stdout line is not a result: %v: %q", err, line)
		}
		if out[r.Scenario] != nil {
			t.Errorf("two results for %s", r.Scenario)
		}
		out[r.Scenario] = &r
	}
	if t.Failed() {
		t.Logf("stderr:\n%s", stderr.String())
	}
	return out
}

// checkCommon checks what every result has.
func checkCommon(t *testing.T, r *Result) {
	t.Helper()
	if r.Errors != 0 || r.Fatal != "" {
		t.Errorf("%s: %d errors %v, fatal %q", r.Scenario, r.Errors, r.ErrorSamples, r.Fatal)
	}
	if r.Ops <= 0 || r.Rate <= 0 || r.Unit == "" || r.DurationS <= 0 {
		t.Errorf("%s: ops %d, rate %v %q, duration %v", r.Scenario, r.Ops, r.Rate, r.Unit, r.DurationS)
	}
	if l := r.LatencyMS; l == nil || l.N <= 0 || l.P50 <= 0 || l.P50 > l.P95 || l.P95 > l.P99 || l.P99 > l.Max {
		t.Errorf("%s: latency %+v", r.Scenario, r.LatencyMS)
	}
	if len(r.Params) == 0 || len(r.URLs) == 0 || r.Prefix == "" || r.Started.IsZero() {
		t.Errorf("%s: params %v, urls %v, prefix %q, started %v", r.Scenario, r.Params, r.URLs, r.Prefix, r.Started)
	}
}

func wantNum(t *testing.T, r *Result, key string, want float64) {
	t.Helper()
	if got, ok := num(r.Extra, key); !ok || got != want {
		t.Errorf("%s: %s = %v, want %v", r.Scenario, key, r.Extra[key], want)
	}
}

// startMonolith runs a Ganglion monolith in-process on SQLite, as
// internal/e2e's harness does, and returns its base URL. It stops (and
// its Run is awaited) when the test ends. edits change the config
// document before it is written.
func startMonolith(t *testing.T, edits ...func(cfg map[string]any)) string {
	t.Helper()
	dir := t.TempDir()
	logs := &lockedBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	fast := map[string]any{"per_second": 10000, "burst_count": 10000}
	for attempt := 1; ; attempt++ {
		port := freePort(t)
		cfgDoc := map[string]any{
			"server_name":    "bench.test",
			"public_baseurl": fmt.Sprintf("http://127.0.0.1:%d/", port),
			"listeners": []any{map[string]any{
				"port": port, "bind_addresses": []string{"127.0.0.1"}, "type": "http", "tls": false,
				"resources": []any{map[string]any{"names": []string{"client"}, "compress": false}},
			}},
			"database":            map[string]any{"name": "sqlite3", "args": map[string]any{"database": filepath.Join(dir, "homeserver.db")}},
			"signing_key_path":    filepath.Join(dir, "signing.key"),
			"media_store_path":    filepath.Join(dir, "media_store"),
			"enable_registration": true,
			"enable_registration_without_verification": true,
			"registration_shared_secret":               smokeSecret,
			"bcrypt_rounds":                            4,
			"report_stats":                             false,
			"rc_message":                               fast,
			"rc_registration":                          fast,
			"rc_login":                                 map[string]any{"address": fast, "account": fast, "failed_attempts": fast},
			"rc_joins":                                 map[string]any{"local": fast, "remote": fast},
			"rc_joins_per_room":                        fast,
			"rc_invites":                               map[string]any{"per_room": fast, "per_user": fast, "per_issuer": fast},
			"rc_room_creation":                         fast,
			"rc_presence":                              map[string]any{"per_user": fast},
			"rc_user_directory":                        fast,
		}
		for _, edit := range edits {
			edit(cfgDoc)
		}
		// JSON is YAML, and encoding/json cannot write a document that
		// means something else.
		data, err := json.Marshal(cfgDoc)
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, "homeserver.yaml")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		cfg, err := config.Load([]string{path}, nil)
		if err != nil {
			t.Fatalf("load config: %v", err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		p, err := app.New(ctx, cfg, log)
		if err != nil {
			cancel()
			t.Fatalf("start server: %v\n%s", err, logs)
		}
		if err := p.Listen(); err != nil {
			cancel()
			_ = p.Run(ctx) // releases what New opened
			if errors.Is(err, syscall.EADDRINUSE) && attempt < 5 {
				continue
			}
			t.Fatalf("listen: %v", err)
		}
		done := make(chan error, 1)
		go func() { done <- p.Run(ctx) }()
		t.Cleanup(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("server Run: %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Errorf("server did not stop within 30s")
			}
			if t.Failed() {
				t.Logf("server log:\n%s", logs)
			}
		})
		return "http://" + p.Addrs()[0].String()
	}
}

func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("find a free port: %v", err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	return port
}

type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
