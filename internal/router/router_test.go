package router_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"ganglion/internal/config"
	"ganglion/internal/router"
)

// A killed sync backend's users move to the other backend and keep
// syncing: the long-poll that was in flight fails once (502), the next
// sync succeeds; users of the surviving backend never move; when the
// backend comes back its users return to it.
func TestRouterFailover(t *testing.T) {
	f := newTestFleet(t, 8008)
	f.rc.HealthCheckInterval = time.Hour // passive detection only, until re-enabled below
	_, base := startRouter(t, f)
	users := usersOn(t, base, "?since=s1", []string{"sync1", "sync2"})
	victim, survivor := users["sync1"], users["sync2"]

	// A long-poll of the victim, in flight when sync1 dies: it fails once
	// (502) or, when the transport retries it on a fresh connection, moves
	// to sync2 without the client noticing.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	inflight := make(chan result, 1)
	go func() {
		r, err := trySend(ctx, base, reqLine{method: "GET", path: "/_matrix/client/v3/sync?since=s1&mode=block", token: victim})
		if err != nil {
			r = result{status: -1, body: []byte(err.Error())}
		}
		inflight <- r
	}()
	select {
	case <-f.backends["sync1"].waits:
	case <-time.After(5 * time.Second):
		t.Fatal("long-poll never reached sync1")
	}
	f.backends["sync1"].kill()
	select {
	case r := <-inflight:
		r.wantMatrixError(t, http.StatusBadGateway, "M_UNKNOWN")
	case <-f.backends["sync2"].waits:
		cancel()
		<-inflight
	case <-time.After(5 * time.Second):
		t.Fatal("the in-flight long-poll neither failed nor moved")
	}

	// The client's retry: sync1 still looks healthy to the router, refuses
	// the connection, and the request goes to sync2 instead.
	for i := range 5 {
		r := send(t, base, reqLine{method: "GET", path: "/_matrix/client/v3/sync?since=s2", token: victim})
		if r.status != http.StatusOK || r.backend != "sync2" {
			t.Fatalf("sync %d after the kill: %d from %q: %s", i, r.status, r.backend, r.body)
		}
		if r := send(t, base, reqLine{method: "GET", path: "/_matrix/client/v3/sync?since=s2", token: survivor}); r.backend != "sync2" {
			t.Fatalf("the survivor's sync moved to %q", r.backend)
		}
	}
	// A POST with a body is retried too: the refused dial never sent it.
	if r := send(t, base, reqLine{method: "POST", path: "/_matrix/client/v3/keys/query", token: victim, body: `{"a":1}`}); r.status != http.StatusOK {
		t.Fatalf("keys/query: %d %s", r.status, r.body)
	}
}

// TestRouterReplaysIdempotentRequests: a backend that dies with a request
// on its connection (reads it, answers nothing) makes the router send a
// replayable request (an event send, deduplicated by its txn id) to the
// next backend, body and all; a POST or another PUT is not sent twice and
// the client gets the 502.
func TestRouterReplaysIdempotentRequests(t *testing.T) {
	f := newTestFleet(t, 8008)
	f.rc.HealthCheckInterval = time.Hour
	_, base := startRouter(t, f)
	put := reqLine{method: "PUT", path: "/_matrix/client/v3/rooms/!r:test/send/m.room.message/txn1", token: "t",
		body: `{"msgtype":"m.text","body":"hello"}`}
	first := send(t, base, put)
	if first.status != http.StatusOK {
		t.Fatalf("PUT: %d %s", first.status, first.body)
	}
	home := f.backends[first.backend]
	seenBefore := home.seen.Load()
	home.hangups.Store(1)
	r := send(t, base, put)
	if r.status != http.StatusOK || r.backend == first.backend {
		t.Fatalf("PUT after %s hung up: %d from %q: %s", first.backend, r.status, r.backend, r.body)
	}
	if got := r.reply(t).BodyLen; got != int64(len(put.body)) {
		t.Fatalf("replayed body has %d bytes, want %d", got, len(put.body))
	}
	if home.seen.Load() != seenBefore+1 {
		t.Fatalf("%s saw %d requests, want the one it hung up on", first.backend, home.seen.Load()-seenBefore)
	}

	// Not replayed: a POST, and a PUT that is not deduplicated by a txn
	// id (creating an alias twice fails the second time).
	for _, l := range []reqLine{
		{method: "POST", path: "/_matrix/client/v3/rooms/!r:test/receipt/m.read/$e", token: "t", body: `{}`},
		{method: "PUT", path: "/_matrix/client/v3/directory/room/%23a:test", token: "t", body: `{"room_id":"!r:test"}`},
	} {
		// Every backend hangs up once: a replay would reach a second one.
		seen := 0
		for _, b := range f.backends {
			b.hangups.Store(1)
			seen += int(b.seen.Load())
		}
		r = send(t, base, l)
		r.wantMatrixError(t, http.StatusBadGateway, "M_UNKNOWN")
		after := 0
		for _, b := range f.backends {
			after += int(b.seen.Load())
			b.hangups.Store(0)
		}
		if after != seen+1 {
			t.Fatalf("%s reached %d backends, want 1 (no replay)", l, after-seen)
		}
	}
}

// Active health checks bring a restarted backend back, and its users with
// it (rendezvous hashing).
func TestRouterHealthChecks(t *testing.T) {
	f := newTestFleet(t, 8008)
	rt, base := startRouter(t, f)
	users := usersOn(t, base, "?since=s1", []string{"sync1", "sync2"})
	victim := users["sync1"]
	sync1 := f.backends["sync1"]
	addr := sync1.addr
	sync1.kill()
	up := func(name string) func() bool {
		return func() bool {
			for _, b := range rt.Plan().Backends {
				if b.Name == name {
					return b.Up()
				}
			}
			return false
		}
	}
	waitFor(t, "sync1 marked down by the active check", 5*time.Second, func() bool { return !up("sync1")() })
	if r := send(t, base, reqLine{method: "GET", path: "/_matrix/client/v3/sync?since=s1", token: victim}); r.backend != "sync2" {
		t.Fatalf("sync while sync1 is down went to %q", r.backend)
	}
	sync1.start(t, addr)
	waitFor(t, "sync1 marked up again", 5*time.Second, up("sync1"))
	if r := send(t, base, reqLine{method: "GET", path: "/_matrix/client/v3/sync?since=s1", token: victim}); r.backend != "sync1" {
		t.Fatalf("the victim did not return to sync1: %q", r.backend)
	}
	// Metrics saw it all.
	m := send(t, base, reqLine{method: "GET", path: router.MetricsPath})
	for _, want := range []string{
		`ganglion_router_requests_total{backend="sync2",class="sync",code="200",instance="router"}`,
		`ganglion_router_request_duration_seconds_bucket{backend="sync1",class="sync",instance="router",le="+Inf"}`,
		`ganglion_router_backend_up{backend="sync1",instance="router",url="http://` + addr + `"} 1`,
	} {
		if !strings.Contains(string(m.body), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

func TestRouterStreamWriterFallsBackToPool(t *testing.T) {
	f := newTestFleet(t, 8008)
	f.rc.HealthCheckInterval = time.Hour // the first request finds out, passively
	_, base := startRouter(t, f)
	f.backends["writer1"].kill()
	body := `{"typing":true,"timeout":30000}`
	line := reqLine{method: "PUT", path: "/_matrix/client/v3/rooms/!r:x/typing/@a:x", body: body}
	for i := range 3 {
		r := send(t, base, line)
		if r.status != http.StatusOK || (r.backend != "client1" && r.backend != "client2") {
			t.Fatalf("typing %d with its writer down: %d from %q: %s", i, r.status, r.backend, r.body)
		}
		if got := r.reply(t).BodyLen; got != int64(len(body)) {
			t.Fatalf("the retried body arrived with %d bytes, want %d", got, len(body))
		}
	}
}

func TestRouterBadInput(t *testing.T) {
	f := newTestFleet(t, 8008)
	_, base := startRouter(t, f)

	t.Run("unknown path", func(t *testing.T) {
		for _, p := range []string{"/", "/index.php", "/_synapse/replication/send_events/x", "/metrics", "/_matrix"} {
			send(t, base, reqLine{method: "GET", path: p}).wantMatrixError(t, http.StatusNotFound, "M_UNRECOGNIZED")
		}
	})
	t.Run("invalid method", func(t *testing.T) {
		r := send(t, base, reqLine{method: "POST", path: "/_matrix/client/v3/sync", body: "{}"})
		r.wantMatrixError(t, http.StatusMethodNotAllowed, "M_UNRECOGNIZED")
		if got := r.header.Get("Allow"); got != "GET, HEAD, OPTIONS" {
			t.Errorf("Allow %q", got)
		}
		send(t, base, reqLine{method: "GET", path: "/_matrix/federation/v1/send/t"}).wantMatrixError(t, http.StatusMethodNotAllowed, "M_UNRECOGNIZED")
		if r := send(t, base, reqLine{method: "OPTIONS", path: "/_matrix/client/v3/sync"}); r.status != http.StatusOK {
			t.Errorf("CORS preflight refused: %d", r.status)
		}
	})
	t.Run("oversized body", func(t *testing.T) {
		big := strings.Repeat("x", 64<<10+1)
		send(t, base, reqLine{method: "POST", path: "/_matrix/client/v3/createRoom", body: big}).wantMatrixError(t, http.StatusRequestEntityTooLarge, "M_TOO_LARGE")
		// Exactly at the limit is fine.
		if r := send(t, base, reqLine{method: "POST", path: "/_matrix/client/v3/createRoom", body: big[1:]}); r.status != http.StatusOK || r.reply(t).BodyLen != 64<<10 {
			t.Fatalf("body at the limit: %d %s", r.status, r.body)
		}
		// Media has its own, larger limit.
		if r := send(t, base, reqLine{method: "POST", path: "/_matrix/media/v3/upload", body: big}); r.status != http.StatusOK {
			t.Fatalf("media upload under the media limit: %d %s", r.status, r.body)
		}
		send(t, base, reqLine{method: "POST", path: "/_matrix/media/v3/upload", body: strings.Repeat("x", 1<<20+1)}).wantMatrixError(t, http.StatusRequestEntityTooLarge, "M_TOO_LARGE")
		// Without Content-Length the body is cut off while streaming.
		req, _ := http.NewRequest("POST", base+"/_matrix/client/v3/createRoom", io.MultiReader(strings.NewReader(big), strings.NewReader(big)))
		req.ContentLength = -1
		resp, err := testClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		result{status: resp.StatusCode, body: data, header: resp.Header}.wantMatrixError(t, http.StatusRequestEntityTooLarge, "M_TOO_LARGE")
	})
	t.Run("no backend", func(t *testing.T) {
		for _, n := range []string{"fed1", "main"} {
			f.backends[n].kill()
		}
		// First the dials fail (502 after one retry), then the backends
		// are known down and the router answers at once.
		for range 3 {
			send(t, base, reqLine{method: "GET", path: "/_matrix/federation/v1/state/!r:x"}).wantMatrixError(t, http.StatusBadGateway, "M_UNKNOWN")
		}
	})
}

func TestRouterForwardsHeadersAndStreams(t *testing.T) {
	f := newTestFleet(t, 8008)
	_, base := startRouter(t, f)
	e := send(t, base, reqLine{method: "GET", path: "/_matrix/client/versions"}).reply(t)
	if e.XFF != "127.0.0.1" || e.XFP != "http" || !strings.HasPrefix(e.Host, "127.0.0.1:") {
		t.Errorf("forwarded headers: XFF %q XFP %q Host %q", e.XFF, e.XFP, e.Host)
	}

	// The request body streams: the backend sees its first part before
	// the client has finished sending it.
	pr, pw := io.Pipe()
	req, _ := http.NewRequest("POST", base+"/_matrix/media/v3/upload?mode=stream-request", pr)
	errc := make(chan error, 1)
	go func() {
		resp, err := testClient.Do(req)
		if err == nil {
			_, err = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		errc <- err
	}()
	if _, err := pw.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	select {
	case s := <-f.backends["media1"].gotReq:
		if s != "hello" {
			t.Fatalf("backend read %q", s)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the body's first part never reached the backend: buffered?")
	}
	pw.Close()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}

	// The response streams: its first part arrives while the backend is
	// still writing.
	resp, err := testClient.Get(base + "/_matrix/media/v3/download/x/y?mode=stream-response")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	first := make([]byte, len("first;"))
	if _, err := io.ReadFull(resp.Body, first); err != nil || string(first) != "first;" {
		t.Fatalf("first part: %q %v", first, err)
	}
	close(f.backends["media1"].release)
	if rest, _ := io.ReadAll(resp.Body); string(rest) != "second" {
		t.Fatalf("rest %q", rest)
	}
}

func TestConfigValidation(t *testing.T) {
	cfg := config.Default()
	_, err := router.NewConfig(cfg, router.Config{
		Listen:    config.Listener{Port: 0},
		Instances: map[string]router.InstanceURLs{"w1": {ClientURL: "ftp://x"}},
		Pools: map[string]config.StringList{
			"snyc": {"w1"},
			"sso":  {"w1", "w2"},
			"sync": {"w1", "w1"},
		},
		MaxRequestSize: "lots",
	})
	if err == nil {
		t.Fatal("accepted a bad router section")
	}
	for _, want := range []string{
		"router.listen.port", "router.instances.w1.client_url", "router.instances.main.client_url",
		"router.pools.snyc: unknown pool", "router.pools.sso: one instance only", `router.pools.sso[1]: unknown instance "w2"`,
		`router.pools.sync[1]: instance "w1" listed twice`, "router.max_request_size",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
}

// Load reads the shared config, derives main's URL from its listeners and
// the workers' from their files, and merges router sections.
func TestLoadDerivesInstances(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := dir + "/" + name
		if err := writeFile(p, body); err != nil {
			t.Fatal(err)
		}
		return p
	}
	shared := write("shared.yaml", `
server_name: test.example
database: {name: psycopg2, args: {host: 127.0.0.1, database: g, user: g}}
redis: {enabled: true}
instance_map:
  main: {host: 127.0.0.1, port: 19093}
  w2: {host: 10.0.0.2, port: 19094}
signing_key_path: `+dir+`/key
listeners:
  - {port: 18008, bind_addresses: ['0.0.0.0'], type: http, resources: [{names: [client]}]}
  - {port: 18448, bind_addresses: [127.0.0.2], type: http, resources: [{names: [federation]}]}
stream_writers: {typing: w2}
router:
  listen: {port: 8080}
  pools: {sync: [w1]}
`)
	write("w1.yaml", "worker_app: generic_worker\nworker_name: w1\nworker_listeners:\n  - {port: 18081, bind_address: 127.0.0.1, type: http, resources: [{names: [client, federation]}]}\n")
	rfile := write("router.yaml", `
router:
  worker_configs: [w1.yaml]
  instances: {w2: {client_url: "http://10.0.0.2:8081"}}
  pools: {client: [w1, w2], sso: master}
  max_upload_size: 2M
`)
	cfg, rc, err := router.Load([]string{shared, rfile}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := rc.Instances["main"]; got.ClientURL != "http://127.0.0.1:18008" || got.FederationURL != "http://127.0.0.2:18448" {
		t.Errorf("main: %+v", got)
	}
	if got := rc.Instances["w1"].ClientURL; got != "http://127.0.0.1:18081" {
		t.Errorf("w1: %s", got)
	}
	if rc.Listen.Port != 8080 || len(rc.Pools["sync"]) != 1 || len(rc.Pools["client"]) != 2 || rc.Pools["sso"][0] != "main" {
		t.Errorf("merged section: %+v", rc)
	}
	if rc.Limits.Media != 2<<20 || rc.Limits.JSON != 1<<20 {
		t.Errorf("limits %+v", rc.Limits)
	}
	plan, err := router.NewPlan(cfg, rc)
	if err != nil {
		t.Fatal(err)
	}
	typing := plan.Route("typing")
	if typing.Tiers[0].Pool != "writer:typing" || typing.Tiers[0].Backends[0].Name != "w2" {
		t.Errorf("typing goes to %s first", typing.Tiers[0].Pool)
	}
	fed := plan.Route("federation_read")
	if last := fed.Tiers[len(fed.Tiers)-1].Backends[0]; last.Name != "main/federation" || last.URL.Host != "127.0.0.2:18448" {
		t.Errorf("federation falls back to %s %s", last.Name, last.URL)
	}

	// worker_app: router names the router after its worker_name.
	named := write("edge.yaml", "worker_app: synapse.app.router\nworker_name: edge1\n")
	if _, rc, err := router.Load([]string{shared, rfile, named}, nil); err != nil || rc.Name != "edge1" {
		t.Errorf("router worker: name %v, err %v", rc, err)
	}

	// An unknown key in the router section is an error, not a silent default.
	bad := write("bad.yaml", "router:\n  pool: {sync: [w1]}\n")
	if _, _, err := router.Load([]string{shared, bad}, nil); err == nil || !strings.Contains(err.Error(), "pool") {
		t.Errorf("misspelt key accepted: %v", err)
	}
}

func TestMetricsListener(t *testing.T) {
	f := newTestFleet(t, 8008)
	f.rc.MetricsListen = &config.Listener{Port: 9100}
	rt, err := router.New(f.cfg, f.rc, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(rt.Handler())
	defer srv.Close()
	// With a metrics listener, metrics are not on the public listener.
	send(t, srv.URL, reqLine{method: "GET", path: router.MetricsPath}).wantMatrixError(t, http.StatusNotFound, "M_UNRECOGNIZED")
	m := httptest.NewServer(rt.MetricsHandler())
	defer m.Close()
	if r := send(t, m.URL, reqLine{method: "GET", path: "/metrics"}); !strings.Contains(string(r.body), "ganglion_router_backend_up") {
		t.Errorf("metrics: %s", r.body)
	}
}
