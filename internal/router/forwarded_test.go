package router_test

import (
	"bytes"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"ganglion/internal/router"
)

// A client cannot choose the address the workers see: the router sends
// its peer as X-Forwarded-For, dropping a chain the client wrote, unless
// listen.x_forwarded is on and the peer is one of its trusted proxies.
func TestForwardedChainFromUntrustedPeerDropped(t *testing.T) {
	get := func(t *testing.T, base string) echoReply {
		t.Helper()
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
		return result{status: resp.StatusCode, body: buf.Bytes()}.reply(t)
	}
	t.Run("x_forwarded off", func(t *testing.T) {
		f := newTestFleet(t, 8008)
		_, base := startRouter(t, f)
		if e := get(t, base); e.XFF != "127.0.0.1" || e.XFP != "http" {
			t.Errorf("XFF %q XFP %q, want the peer 127.0.0.1 and http", e.XFF, e.XFP)
		}
	})
	t.Run("x_forwarded on, peer not trusted", func(t *testing.T) {
		f := newTestFleet(t, 8008)
		f.rc.Listen.XForwarded = true
		f.rc.Listen.XForwardedTrustedProxies = []string{"10.0.0.0/8"}
		_, base := startRouter(t, f)
		if e := get(t, base); e.XFF != "127.0.0.1" || e.XFP != "http" {
			t.Errorf("XFF %q XFP %q, want the peer 127.0.0.1 and http", e.XFF, e.XFP)
		}
	})
}

// The plan warns about instances whose client listener (from their own
// files) would see every client behind the proxy as one address.
func TestPlanNotesUnforwardedListeners(t *testing.T) {
	dir := t.TempDir()
	write := func(name, data string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	shared := write("shared.yaml", `server_name: example.org
database: {name: psycopg2, args: {host: 127.0.0.1, database: g, user: g}}
redis: {enabled: true}
listeners: [{port: 8080, type: http, bind_addresses: [127.0.0.1], resources: [{names: [client]}]}]
instance_map: {main: {host: 127.0.0.1, port: 9093}}
router:
  listen: {port: 8008}
  worker_configs: [w1.yaml]
  pools: {client: [worker1]}
`)
	write("w1.yaml", `worker_app: generic_worker
worker_name: worker1
worker_listeners: [{port: 8081, type: http, x_forwarded: true, bind_addresses: [127.0.0.1], resources: [{names: [client]}]}]
`)
	cfg, rc, err := router.Load([]string{shared}, nil)
	if err != nil {
		t.Fatal(err)
	}
	plan, err := router.NewPlan(cfg, rc)
	if err != nil {
		t.Fatal(err)
	}
	var about []string
	for _, n := range plan.Notes {
		if strings.Contains(n, "x_forwarded") {
			about = append(about, n)
		}
	}
	if len(about) != 1 || !strings.Contains(about[0], "client listener of main ") {
		t.Fatalf("x_forwarded notes %q, want one about main only", about)
	}
}
