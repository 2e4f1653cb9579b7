package main

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"ganglion/internal/testutil/testca"
)

// startFederatingMonolith starts a monolith named by its own TLS
// federation listener ("127.0.0.1:PORT", so no DNS is needed), trusting
// only the test CA and allowing loopback, as bench/run-matrix.sh's
// federation target configures its pair.
func startFederatingMonolith(t *testing.T, ca *testca.CA, caPath string) (url, name string) {
	t.Helper()
	dir := t.TempDir()
	cert, key := ca.WriteServerCert(t, dir, "127.0.0.1")
	port := freePort(t)
	name = fmt.Sprintf("127.0.0.1:%d", port)
	url = startMonolith(t, func(cfg map[string]any) {
		cfg["server_name"] = name
		cfg["listeners"] = append(cfg["listeners"].([]any), map[string]any{
			"port": port, "bind_addresses": []string{"127.0.0.1"}, "type": "http", "tls": true,
			"resources": []any{map[string]any{"names": []string{"federation", "keys"}}},
		})
		cfg["tls_certificate_path"] = cert
		cfg["tls_private_key_path"] = key
		cfg["federation_custom_ca_list"] = []string{caPath}
		cfg["ip_range_whitelist"] = []string{"127.0.0.1"}
		cfg["trusted_key_servers"] = []any{}
		cfg["federation"] = map[string]any{"destination_min_retry_interval": "100ms", "destination_max_retry_interval": "1s"}
	})
	return url, name
}

// TestFederationScenario runs -scenario federation between two monoliths
// federating over TLS: every message sent on the first reaches the
// client syncing on the second exactly once, and each is a sample.
func TestFederationScenario(t *testing.T) {
	ca := testca.New(t)
	caPath := ca.WriteCA(t, t.TempDir())
	a, _ := startFederatingMonolith(t, ca, caPath)
	b, nameB := startFederatingMonolith(t, ca, caPath)
	results := runBench(t, []string{"-url", a, "-remote-url", b, "-scenario", "federation", "-label", "smoke",
		"-federation-messages", "20", "-federation-rate", "50", "-fanout-wait", "30s",
		"-progress", "0", "-timeout", "20s", "-scenario-timeout", "2m"})
	r := results[scFederation]
	if r == nil {
		t.Fatal("no result for federation")
	}
	checkCommon(t, r)
	if r.Ops != 20 {
		t.Errorf("federation: ops %d, want 20 deliveries", r.Ops)
	}
	wantNum(t, r, "missed", 0)
	wantNum(t, r, "duplicates", 0)
	if s, _ := r.Extra["servers"].(string); !strings.HasSuffix(s, nameB) {
		t.Errorf("federation: servers %q, want … → %s", s, nameB)
	}
}

// TestFederationScenarioRefusals: the scenario says what it needs rather
// than measuring nothing: a second server's URL, and one that is not the
// first server again.
func TestFederationScenarioRefusals(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-remote-url", "localhost:8008"}, "-remote-url"},
		{[]string{"-federation-rate", "0"}, "-federation-rate"},
		{[]string{"-federation-messages", "0"}, "-federation-messages"},
	} {
		err := run(t.Context(), tc.args, &bytes.Buffer{}, &bytes.Buffer{})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("run %v: error %v, want one mentioning %q", tc.args, err, tc.want)
		}
	}
	srv := startMonolith(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-url", srv, "-scenario", "federation"}, "-remote-url is required"},
		{[]string{"-url", srv, "-remote-url", srv, "-scenario", "federation"}, "are one server"},
	} {
		var stdout bytes.Buffer
		if err := run(t.Context(), append(tc.args, "-progress", "0"), &stdout, &bytes.Buffer{}); err == nil {
			t.Errorf("run %v: no error", tc.args)
		}
		if !strings.Contains(stdout.String(), tc.want) {
			t.Errorf("run %v: result %s, want a fatal error mentioning %q", tc.args, stdout.String(), tc.want)
		}
	}
}
