package app_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"ganglion/internal/config"
	"ganglion/internal/federation/xmatrix"
	"ganglion/internal/storage/storagetest"
	"ganglion/internal/testutil"
	"ganglion/internal/testutil/testca"
)

// outbound_federation_restricted_to: [main], with a generic worker whose
// own IP range blacklist forbids loopback. The worker forwards a
// third-party invite (3pid/onbind for a room it is not in) to a remote
// server on loopback: the request can only get there through main's
// proxy endpoint, and arrives signed by the server.
func TestOutboundFederationRestrictedToMain(t *testing.T) {
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
	ca := testca.New(t)

	// The remote server.
	var mu sync.Mutex
	var seen []string
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	remote := ln.Addr().String()
	rs := &httptest.Server{Listener: ln, Config: &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, _ := xmatrix.ParseHeader(r.Header.Get("Authorization"))
		mu.Lock()
		seen = append(seen, r.Method+" "+r.URL.RequestURI()+" from "+p.Origin+" to "+p.Destination)
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{}`))
	})}}
	rs.TLS = ca.ServerTLS(t, "127.0.0.1")
	rs.StartTLS()
	defer rs.Close()

	mainRepl, workerRepl, workerFed := freePort(t), freePort(t), freePort(t)
	server := fmt.Sprintf("proxy%d.test", time.Now().UnixNano())
	listener := func(port int, res string) map[string]any {
		return map[string]any{"port": port, "bind_addresses": []string{"127.0.0.1"}, "type": "http",
			"resources": []any{map[string]any{"names": []string{res}}}}
	}
	shared := writeYAML(t, dir, "shared.yaml", map[string]any{
		"server_name":               server,
		"signing_key_path":          filepath.Join(dir, "signing.key"),
		"report_stats":              false,
		"redis":                     map[string]any{"enabled": true},
		"worker_replication_secret": "s3cret",
		"instance_map": map[string]any{
			"main":    map[string]any{"host": "127.0.0.1", "port": mainRepl},
			"worker1": map[string]any{"host": "127.0.0.1", "port": workerRepl},
		},
		"stream_writers":                    map[string]any{"events": []string{"main"}},
		"federation_custom_ca_list":         []string{ca.WriteCA(t, dir)},
		"ip_range_whitelist":                []string{"127.0.0.1"},
		"outbound_federation_restricted_to": []string{"main"},
	})
	mainFile := writeYAML(t, dir, "main.yaml", map[string]any{"listeners": []any{listener(mainRepl, "replication")}})
	workerFile := writeYAML(t, dir, "worker1.yaml", map[string]any{
		"worker_app": "generic_worker", "worker_name": "worker1",
		"worker_listeners":   []any{listener(workerFed, "federation"), listener(workerRepl, "replication")},
		"ip_range_blacklist": []string{"127.0.0.0/8"},
		"ip_range_whitelist": []string{},
	})
	var logs syncBuffer
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("logs:\n%s", logs.String())
		}
	})
	exp := tracetest.NewInMemoryExporter()
	startInProcess(t, []string{shared, mainFile}, env, "main", exp, &logs)
	startInProcess(t, []string{shared, workerFile}, env, "worker1", exp, &logs)

	dave := "@dave:" + server
	room := "!far:" + remote
	body, _ := json.Marshal(map[string]any{"address": "dave@example.org", "medium": "email", "mxid": dave,
		"invites": []any{map[string]any{"address": "dave@example.org", "medium": "email", "mxid": dave, "room_id": room,
			"sender": "@bob:" + remote, "signed": map[string]any{"mxid": dave, "token": "tok"}}}})
	want := "PUT /_matrix/federation/v1/exchange_third_party_invite/" + url.PathEscape(room) + " from " + server + " to " + remote
	testutil.EventuallyState(t, 60*time.Second, func() (bool, string) {
		req, _ := http.NewRequest("PUT", fmt.Sprintf("http://127.0.0.1:%d/_matrix/federation/v1/3pid/onbind", workerFed), bytes.NewReader(body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return false, err.Error()
		}
		resp.Body.Close()
		mu.Lock()
		defer mu.Unlock()
		return len(seen) > 0 && seen[len(seen)-1] == want, fmt.Sprintf("onbind %d; remote saw %q", resp.StatusCode, seen)
	})
}
